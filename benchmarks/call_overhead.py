"""What torch.compile's own layer adds to every call, per compile path, against the callable the
path returned.

    python benchmarks/call_overhead.py [--model mobilenet_v3_large] [--paths torchscript,inductor,openvino,onnxruntime] [--rounds 15]
                                       [--skip-guards] [--free-tensors]

One fresh process per path. It compiles the model with the ipex backend on that path, keeps the
callable the path returned and the arguments dynamo hands it, then times, interleaved in rounds:
the whole `torch.compile` call, and that callable on those arguments. The difference is dynamo's
layer around our graph (guards, gathering the parameters it passes as inputs). Control
processes do the same with a backend whose callable runs no engine: ``control`` returns a
constant (the layer with nothing inside it); ``control-evict`` first reads a 64 MB buffer, past
the L3, as an engine streaming its weights does; ``control-spin`` first spins for 1.5 ms and
touches no memory; ``control-threads`` first runs torch matmuls on torch's OpenMP threads. A
layer that grows with evict or threads but not with spin comes from what the work leaves
behind (cold caches, woken threads), not from how long it takes. A last row is the peer without that layer: ONNX Runtime's session on a
`torch.onnx.export` of the whole model, as compare runs it. Prints medians of per-round medians and the layer's share of the call.
``--skip-guards`` times under ``torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)``,
torch's own switch for a server whose inputs never change kind: what the guards' share is.
``--free-tensors`` captures with ``torch._dynamo.config.install_free_tensors = True``: the
parameters become constants of the graph instead of inputs dynamo gathers on every call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from autotune.bench import Stats

CONTROL = "control"
EVICTING_CONTROL = "control-evict"
SPINNING_CONTROL = "control-spin"
THREADED_CONTROL = "control-threads"
CONTROLS = (CONTROL, EVICTING_CONTROL, SPINNING_CONTROL, THREADED_CONTROL)
PEER = "ort-on-export"  # ONNX Runtime on torch.onnx.export of the whole model: no torch.compile


def _child(model_name: str, path: str, rounds: int, skip_guards: bool, free_tensors: bool) -> dict:
    import torch

    torch._dynamo.config.install_free_tensors = free_tensors

    from autotune.models import ModelSpec, build
    from backend import compiler

    model, inputs = build(ModelSpec(model_name))
    if path == PEER:
        return _median_of_rounds(_exported_session(model, inputs), rounds)
    captured: dict = {}

    def backend(gm, example_inputs):
        if path in CONTROLS:
            output = gm(*example_inputs)
            work = _control_work(path)

            def compiled(*args):
                work()
                return output
        else:
            compiled = compiler.ipex_backend(gm, example_inputs,
                                             options={"path": path, "autotune": False})
        captured["callable"] = compiled

        def keeping_the_arguments(*args):
            captured.setdefault("args", args)
            return compiled(*args)
        return keeping_the_arguments

    whole = torch.compile(model, backend=backend)
    with torch.no_grad():
        whole(*inputs)
        if skip_guards:
            torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
        inner, args = captured["callable"], captured["args"]
        return _median_of_rounds(lambda: whole(*inputs), rounds, lambda: inner(*args))


def _control_work(kind: str):
    import numpy

    if kind == EVICTING_CONTROL:
        buffer = numpy.ones(16 << 20, dtype=numpy.float32)  # 64 MB: past the L3 of most CPUs
        return lambda: float(buffer.sum())
    if kind == THREADED_CONTROL:  # little data, but wakes a thread pool, as an engine does
        import torch

        a, b = torch.randn(384, 384), torch.randn(384, 384)
        return lambda: [torch.mm(a, b) for _ in range(12)]
    if kind == SPINNING_CONTROL:
        def spin(seconds=0.0015):  # about as long as mobilenet's engine call
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        return spin
    return lambda: None


def _exported_session(model, inputs):
    import contextlib
    import io

    import onnxruntime
    import torch

    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, tuple(inputs), path, dynamo=True, external_data=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return lambda: session.run(None, feeds)


def _median_of_rounds(whole, rounds: int, inner=None):
    """Medians of per-round medians; with ``inner``: of both, interleaved in each round."""
    calls = {"torch.compile call": whole, "path's callable": inner} if inner else {"": whole}
    for call in calls.values():
        for _ in range(30):
            call()
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times = []
            for _ in range(20):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times) * 1e3)
    result = {name: Stats.of(values).median_ms for name, values in medians.items()}
    # the noise of the first call's per-round medians: a layer within it is not a number
    result["spread"] = Stats.of(next(iter(medians.values()))).spread
    return result if inner else {"path's callable": result[""], "spread": result["spread"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_large")
    parser.add_argument("--paths", default="torchscript,inductor,openvino,onnxruntime")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--skip-guards", action="store_true")
    parser.add_argument("--free-tensors", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.model, args.child, args.rounds, args.skip_guards,
                                 args.free_tensors)))
        return 0
    env = {**os.environ, "IPEX_AUTOTUNE_CACHE": tempfile.mkdtemp(prefix="call-overhead-")}
    print(f"{args.model}, batch 1, {args.rounds} rounds; ms, medians of per-round medians"
          + (", guards skipped (skip_guard_eval_unsafe)" if args.skip_guards else "")
          + (", parameters captured as constants (install_free_tensors)" if args.free_tensors else ""))
    print(f"{'path':16s} {'torch.compile call':>19s} {'its callable':>13s} {'layer':>7s} {'share':>6s} "
          f"{'IQR':>5s}  (IQR: of the per-round medians, as a share; a layer within it is noise)")
    for path in [*CONTROLS, *args.paths.split(","), PEER]:
        run = subprocess.run([sys.executable, __file__, "--model", args.model, "--rounds",
                              str(args.rounds), "--child", path,
                              *(["--skip-guards"] if args.skip_guards else []),
                              *(["--free-tensors"] if args.free_tensors else [])], env=env, capture_output=True,
                             text=True)
        if run.returncode:
            last_line = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
            print(f"{path:16s} failed: {last_line}")
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        if path == PEER:
            alone = result["path's callable"]
            print(f"{path:16s} {'-':>19s} {alone:13.3f} {'':7s} {'':6s} {result['spread']:5.0%}")
            continue
        whole, inner = result["torch.compile call"], result["path's callable"]
        print(f"{path:16s} {whole:19.3f} {inner:13.3f} {whole - inner:7.3f} "
              f"{(whole - inner) / whole:6.0%} {result['spread']:5.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
