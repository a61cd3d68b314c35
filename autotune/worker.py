"""One candidate in a fresh process: build, compile, check against the reference, then measure on request.

The parent (``WorkerProcess``) starts ``python -m autotune.worker``, sends JSON commands on the
worker's stdin and reads JSON replies from a dedicated pipe (torch and compilers print to
stdout/stderr, which go to a log file). While it waits it enforces the time and memory limits and
turns a crash, a hang or an exception into a ``TrialFailure`` with the reason.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import zygote
from .bench import Stats
from .trial_attrs import FailureKind

# Candidate kinds besides a backend config.
EAGER = "eager"
EAGER_BF16 = "eager bfloat16 autocast"
TORCH_COMPILE_DEFAULT = "torch.compile default"
IPEX_LOOKUP = "ipex backend with store lookup"  # what a user's plain torch.compile gets
# The engines as a user would run them without us: peers, not configs of ours.
OPENVINO_BACKEND = "OpenVINO's torch.compile backend"
ONNXRUNTIME_EXPORTED = "ONNX Runtime on torch.onnx.export"
PEERS = (OPENVINO_BACKEND, ONNXRUNTIME_EXPORTED)
# ONNX Runtime's own static int8 of the same export, calibrated on the user's data (needs --data)
ONNXRUNTIME_INT8_EXPORTED = "ONNX Runtime int8 (quantize_static) on torch.onnx.export"
INT8_PEERS = (ONNXRUNTIME_INT8_EXPORTED,)


# Relative error allowed against the eager float32 output, per dtype (README; --tolerance).
# int8 is judged by the accuracy gate on the user's data alone: on the random example input,
# only outputs that are not classifications are held to its bound.
TOLERANCES = {"float32": 1e-3, "bfloat16": 5e-2, "int8": 1e-1}
MIN_AGREEMENT = 0.99  # top-1 agreement with float32 on held-out data (--min-agreement)


class TrialFailure(Exception):
    """A candidate that could not be measured, and why."""

    def __init__(self, kind: FailureKind | str, reason: str):
        super().__init__(reason)
        self.kind = FailureKind(kind)
        self.reason = reason


@dataclass
class WorkerSpec:
    model: dict                       # autotune.models.ModelSpec.to_dict()
    candidate: dict | str             # knob values, or EAGER / TORCH_COMPILE_DEFAULT
    reference_path: str               # eager float32 output; written by the first worker if absent
    tolerance: float = TOLERANCES["float32"]  # max |out - ref| / max |ref|
    threads: int = 0                  # intra-op threads for baselines (configs carry their own)
    env: dict = field(default_factory=dict)
    data: str | None = None           # the user's inputs (autotune.data): int8 and the gate
    min_agreement: float = MIN_AGREEMENT
    metric: str | None = None         # the user's own gate figure (--metric module:callable)


# --------------------------------------------------------------------------------------- child side

def _rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_main() -> int:
    reply_fd = int(os.environ["AUTOTUNE_REPLY_FD"])
    reply = os.fdopen(reply_fd, "w", buffering=1)

    def send(**message):
        reply.write(json.dumps(message) + "\n")

    try:
        spec = WorkerSpec(**json.loads(sys.stdin.readline()))
        state = _prepare(spec)
    except Exception as exc:  # anything the model or compiler raises is the trial's failure
        # only our own failures carry a kind: a model's exception may have a `kind` of its own
        send(status="error", kind=exc.kind if isinstance(exc, TrialFailure) else FailureKind.EXCEPTION,
             reason=f"{type(exc).__name__}: {exc}"[:2000])
        return 1
    send(status="ready", **state["report"])
    warmed = False
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "measure":
            try:
                send(status="measured", **_measure(state["call"], command, warmed))
            except Exception as exc:  # the compiled model failing while being timed
                send(status="error", kind=FailureKind.EXCEPTION, reason=f"{type(exc).__name__}: {exc}"[:2000])
                return 1
            warmed = True
    return 0


def _set_threads(spec: WorkerSpec) -> Any:
    """Set the process's threads as the candidate says, before any parallel work; its config."""
    import torch

    from backend.config import BackendConfig

    config = None
    threads = spec.threads
    if isinstance(spec.candidate, dict):
        config = BackendConfig(spec.candidate)
        threads = config.threads
        if config.interop_threads:
            torch.set_num_interop_threads(config.interop_threads)
    if threads:
        torch.set_num_threads(threads)
    return config


def _compiled(spec: WorkerSpec, model: Any, config: Any, split: Any) -> Callable:
    import torch

    if spec.candidate in (EAGER, EAGER_BF16):
        return model
    if spec.candidate == TORCH_COMPILE_DEFAULT:
        return torch.compile(model)
    if spec.candidate == IPEX_LOOKUP:
        return torch.compile(model, backend="ipex")
    if spec.candidate == OPENVINO_BACKEND:
        import openvino.torch  # noqa: F401  registers backend="openvino"
        # float32 like the other columns: on CPUs with bfloat16 units OpenVINO's default is bf16
        return torch.compile(model, backend="openvino",
                             options={"config": {"INFERENCE_PRECISION_HINT": "f32"}})
    if spec.candidate == ONNXRUNTIME_EXPORTED:
        return _onnxruntime_session(spec, model)
    if spec.candidate == ONNXRUNTIME_INT8_EXPORTED:
        if split is None:
            raise TrialFailure(FailureKind.CONFIG, "ONNX Runtime's int8 needs --data to calibrate")
        return _onnxruntime_session(spec, model, calibration=split.calibration)
    return torch.compile(model, backend="ipex", options={**config.to_dict(), "autotune": False})


def _onnxruntime_session(spec: WorkerSpec, model: Any, calibration: list | None = None) -> Callable:
    """The whole model exported by torch.onnx.export and run by ONNX Runtime as its docs show:
    every graph optimization, the worker's thread count. With ``calibration`` batches, first
    quantized as its docs show for CNNs on x86: pre-processed, then static QDQ int8 (unsigned
    activations, signed per-channel weights) calibrated on them."""
    import contextlib
    import io
    import tempfile

    import onnxruntime
    import torch

    from .models import ModelSpec, build

    _, inputs = build(ModelSpec.from_dict(spec.model))
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        path = os.path.join(scratch, "model.onnx")
        torch.onnx.export(model, tuple(inputs), path, dynamo=True, external_data=False)
        if calibration is not None:
            path = _quantized_by_onnxruntime(path, calibration)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*args):
        arrays = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        return torch.from_numpy(arrays[0])
    return run


def _quantized_by_onnxruntime(path: str, calibration: list) -> str:
    from onnxruntime import InferenceSession
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [i.name for i in InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()]

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{n: t.numpy() for n, t in zip(names, batch)} for batch in calibration])

        def get_next(self):
            return next(self.feeds, None)

    prepared, quantized = path + ".pre.onnx", path + ".int8.onnx"
    quant_pre_process(path, prepared)
    quantize_static(prepared, quantized, Batches(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return quantized


def _relative_error(spec: WorkerSpec, output: Any) -> float:
    """Max error against the eager float32 reference, relative to its largest magnitude; the
    eager candidate writes that reference when there is none yet."""
    import torch

    output = output if isinstance(output, torch.Tensor) else output[0]
    if not os.path.exists(spec.reference_path):
        if spec.candidate != EAGER:
            raise RuntimeError("the reference must come from the eager candidate")
        tmp = spec.reference_path + f".{os.getpid()}.tmp"
        torch.save(output.float(), tmp)
        os.replace(tmp, spec.reference_path)
    reference = torch.load(spec.reference_path, weights_only=True)
    if output.shape != reference.shape:
        raise TrialFailure(FailureKind.ACCURACY, f"output shape {tuple(output.shape)} differs from the "
                           f"eager reference {tuple(reference.shape)}")
    scale = reference.abs().max().item() or 1.0
    return (output.float() - reference).abs().max().item() / scale


def _prepare(spec: WorkerSpec) -> dict:
    import contextlib

    import torch

    from backend import compiler, quantization

    from . import data
    from .models import ModelSpec, build

    config = _set_threads(spec)
    model, inputs = build(ModelSpec.from_dict(spec.model))
    split = data.load(spec.data, inputs) if spec.data else None
    fn = _compiled(spec, model, config, split)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.candidate == EAGER_BF16)
    calibration = quantization.calibrating(split.calibration, quantization.argument_names(model)) \
        if split else contextlib.nullcontext()
    with torch.no_grad(), autocast, compiler.recording() as graphs, calibration:
        start = time.perf_counter()
        output = fn(*inputs)
        compile_s = time.perf_counter() - start
        error = _relative_error(spec, output)
    # what ran: a config's dtype, or what the lookup applied
    ran = {g.get("dtype", "float32") for g in graphs} | ({config.dtype} if config else set())
    if spec.candidate in INT8_PEERS:
        ran = {"int8"}
    reduced = bool(ran - {"float32"})
    # int8 on random inputs is held to nothing but the gate on the user's data
    if not error <= spec.tolerance and "int8" not in ran:  # also NaN
        raise TrialFailure(FailureKind.ACCURACY, f"relative error {error:.3g} exceeds the tolerance "
                           f"{spec.tolerance:g}")
    _refuse_engine_fallbacks(config, graphs)
    accuracy = _accuracy_gate(spec, model, fn, split) if reduced and split else None

    def call():
        with torch.no_grad(), autocast:
            fn(*inputs)

    report = {"compile_s": compile_s, "error": error, "graphs": graphs,
              "threads": torch.get_num_threads(), "cpus": sorted(os.sched_getaffinity(0)),
              "torch_version": torch.__version__}
    if config is not None:
        report["config_id"] = config.config_id
    if accuracy is not None:
        report["accuracy"] = accuracy
    return {"call": call, "report": report}


def _accuracy_gate(spec: WorkerSpec, model: Any, fn: Callable, split: Any) -> dict:
    """A reduced-precision candidate's outputs on the held-out batches against the float32
    model's: the user's --metric, else top-1 agreement for classifications, else the relative
    error. Fails the trial below the bound; otherwise its figures, for the trial and the store."""
    import torch

    references, outputs = [], []
    with torch.no_grad():
        for batch in split.held_out:
            references.append(_first_tensor(model(*batch)))
            outputs.append(_first_tensor(fn(*batch)).float())
    floating = references[0].is_floating_point()  # labels or flags may rightly all be the same
    reference, output = torch.cat(references).float(), torch.cat(outputs)
    inputs = sum(int(batch[0].shape[0]) for batch in split.held_out)
    relative_error = ((output - reference).abs().max() / (reference.abs().max() or 1.0)).item()
    if not spec.metric and floating and reference.shape[0] > 1 and bool((reference == reference[:1]).all()):
        what = "zeros" if not reference.any() else "the same output"
        first_inputs = torch.cat([batch[0] for batch in split.held_out])
        inputs_differ = not bool((first_inputs == first_inputs[:1]).all())
        raise TrialFailure(FailureKind.ACCURACY, f"accuracy gate: float32 answers {what} for all "
                           f"{reference.shape[0]} held-out inputs"
                           + (" (the inputs differ: the weights ignore them, as a head of zeros does)"
                              if inputs_differ else " (the held-out inputs are all the same)")
                           + ", so no figure can tell what this config changes; tune with trained "
                           "weights (--checkpoint, or your callable's) or give your own --metric")
    if spec.metric:
        figures = _user_metric(spec, output, reference, split.held_out)
        figures.update(inputs=inputs, relative_error=round(relative_error, 6))
        passed = figures["value"] >= spec.min_agreement
        shown = f"{figures['value']:.4g} < {spec.min_agreement:g}"
        option = "--min-agreement"
        context = (f"; your metric gave float32 {figures['float32_score']:.4g} and this config "
                   f"{figures['score']:.4g}")
    elif reference.dim() == 2 and reference.shape[1] > 1:
        value = (reference.argmax(1) == output.argmax(1)).float().mean().item()
        # a model that answers one class for every input agrees with anything (or nothing): say
        # how many, and keep the relative error beside it as a second figure
        classes = len(reference.argmax(1).unique())
        figures = {"metric": "top-1 agreement with float32", "value": round(value, 6),
                   "bound": spec.min_agreement, "inputs": inputs, "classes": classes,
                   "relative_error": round(relative_error, 6)}
        passed = value >= spec.min_agreement
        shown = f"{100 * value:.2f}% < {100 * spec.min_agreement:.2f}%"
        option = "--min-agreement"
        context = (f"; float32 answered {classes} class{'es' if classes > 1 else ''}, relative "
                   f"error {relative_error:.3g}")
        if classes < 2:  # agreement cannot tell here: the relative error must hold as well
            figures["relative_error_bound"] = spec.tolerance
            if passed and not relative_error <= spec.tolerance:  # also NaN
                raise TrialFailure(FailureKind.ACCURACY, f"accuracy gate: {figures['metric']} on "
                                   f"{inputs} held-out inputs is {100 * value:.2f}%, but float32 "
                                   f"answered 1 class, so agreement cannot tell: relative error "
                                   f"{relative_error:.3g} > {spec.tolerance:g}, the bound (--tolerance)")
    else:
        figures = {"metric": "relative error against float32", "value": relative_error,
                   "bound": spec.tolerance, "inputs": inputs}
        passed, shown = relative_error <= spec.tolerance, f"{relative_error:.3g} > {spec.tolerance:g}"
        option, context = "--tolerance", ""
    if not passed:  # NaN fails both comparisons
        raise TrialFailure(FailureKind.ACCURACY, f"accuracy gate: {figures['metric']} on {inputs} "
                           f"held-out inputs is {shown}, the bound ({option}){context}")
    return figures


def _user_metric(spec: WorkerSpec, output: Any, reference: Any, held_out: list) -> dict:
    """The user's score of the candidate's outputs as a fraction of float32's score."""
    import torch

    from .data import load_metric

    metric = load_metric(spec.metric)
    inputs = tuple(torch.cat(parts) for parts in zip(*held_out))
    scores = []
    for outputs in (reference, output):
        try:
            score = metric(outputs, inputs)
            scores.append(float(score.item() if isinstance(score, torch.Tensor) else score))
        except Exception as exc:  # the user's code, or a score that is not a number
            raise TrialFailure(FailureKind.EXCEPTION, f"--metric {spec.metric} raised "
                               f"{type(exc).__name__}: {exc}") from exc
    float32_score, score = scores
    if not (math.isfinite(float32_score) and float32_score > 0):
        # the bound is a fraction of float32's score: a score at or below zero has no fraction
        raise TrialFailure(FailureKind.EXCEPTION, f"--metric {spec.metric} scored float32 "
                           f"{float32_score!r}; the gate keeps a fraction (--min-agreement) of "
                           "float32's score, so it must be a finite number above zero, higher "
                           "is better")
    if not math.isfinite(score):  # NaN or inf would pass or break the gate's comparison
        raise TrialFailure(FailureKind.ACCURACY, f"--metric {spec.metric} scored this config "
                           f"{score!r} (float32: {float32_score!r}): not a number the gate can keep")
    return {"metric": f"your metric {spec.metric}, as a fraction of float32's",
            "higher_is_better": True, "value": round(score / float32_score, 6),
            "bound": spec.min_agreement, "score": score, "float32_score": float32_score}


def _first_tensor(output: Any) -> Any:
    return output if not isinstance(output, (list, tuple)) else output[0]


def _refuse_engine_fallbacks(config: Any, graphs: list[dict]) -> None:
    """An engine config whose graphs ran on another path measures that path: not a number for
    the engine (a TorchScript fallback is stored as what it ran; see confirmation.py)."""
    from backend.knobs import ENGINE_TITLES

    if config is not None and config.dtype == "int8":
        lost = [g for g in graphs if g["config"].get("dtype") != "int8"]
        if lost:
            why = "; ".join(lost[0].get("fallbacks", ())) or "see the compile warning"
            raise TrialFailure(FailureKind.CONFIG, f"int8 did not apply to {len(lost)} of "
                               f"{len(graphs)} graphs: {why}")
    if config is None or config.path not in ENGINE_TITLES:
        return
    elsewhere = [g for g in graphs if g["config"]["path"] != config.path]
    if elsewhere:
        why = "; ".join(elsewhere[0].get("fallbacks", ())) or "see the compile warning"
        raise TrialFailure(FailureKind.CONFIG, f"{ENGINE_TITLES[config.path]} could not take "
                           f"{len(elsewhere)} of {len(graphs)} graphs (they ran on the "
                           f"{elsewhere[0]['config']['path']} path): {why}")


PRUNE_RUNS = 5  # timed runs a trial gets before it may be pruned


def should_prune(first_runs_ms: list[float], prune_above_ms: float | None) -> bool:
    """The pruning rule: the median of the first ``PRUNE_RUNS`` timed runs is above
    ``prune_above_ms`` (the tuner sends the best median so far times ``prune_ratio``).
    Never on fewer runs, and never without a bar (the first trial)."""
    if not prune_above_ms or len(first_runs_ms) < PRUNE_RUNS:
        return False
    return Stats.of(first_runs_ms[:PRUNE_RUNS]).median_ms > prune_above_ms


def _measure(call: Callable[[], Any], command: dict, warmed: bool) -> dict:
    import contextlib

    import torch

    from .bench import MeasureSettings, sample, warm_up

    settings = MeasureSettings.of(command)
    if not warmed:
        warm_up(call, count=settings.warmup_count, seconds=settings.warmup_seconds)
    # after the warm-up: the compiled entries exist, and the stance only skips checking them.
    # set_stance applies on construction, so it is built in the with statement itself.
    with (torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
          if settings.skip_guards else contextlib.nullcontext()):
        prune_above = command.get("prune_above_ms")
        samples: list[float] = []
        if prune_above:
            samples = sample(call, min_runs=PRUNE_RUNS, min_seconds=0.0, max_runs=PRUNE_RUNS)
            if should_prune(samples, prune_above):
                return {"pruned": True, "stats": Stats.of(samples).to_dict(), "peak_rss_mb": _rss_mb()}
        samples += sample(call, min_runs=settings.min_runs, min_seconds=settings.min_seconds)
    return {"pruned": False, "stats": Stats.of(samples).to_dict(), "samples": samples,
            "peak_rss_mb": _rss_mb()}


# -------------------------------------------------------------------------------------- parent side

def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _rss_of(pid: int) -> float:
    """Resident memory of a process and its children, in MB (0 when it is gone)."""
    total = 0.0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _child_setup(cpus: list[int] | None) -> None:
    """Runs in the child before exec: die with the tuner, and stay on the assigned cores."""
    zygote.die_with_parent()
    if cpus:
        os.sched_setaffinity(0, cpus)


class WorkerProcess:
    """A candidate's fresh process, with a hard time limit per request and a memory limit."""

    POLL_S = 0.05

    def __init__(self, spec: WorkerSpec, *, memory_limit_mb: float = 8192,
                 heartbeat: Callable[[], None] | None = None, cpus: list[int] | None = None):
        self.memory_limit_mb = memory_limit_mb
        self.heartbeat = heartbeat
        self.peak_rss_mb = 0.0
        # nameless, so a tuner killed with SIGKILL leaves no file behind
        self.log = tempfile.TemporaryFile(prefix="autotune-worker-", suffix=".log")
        read_fd, write_fd = os.pipe()
        env = {**os.environ, **{k: str(v) for k, v in spec.env.items()},
               "AUTOTUNE_REPLY_FD": str(write_fd)}
        threads = spec.candidate.get("threads", 0) if isinstance(spec.candidate, dict) else spec.threads
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self._reply_fd = read_fd
        self._buffer = ""
        try:
            self.process = zygote.start_worker("autotune.worker:_child_main", env, cpus,
                                               self.log.fileno(), write_fd) or subprocess.Popen(
                [sys.executable, "-m", "autotune.worker"], stdin=subprocess.PIPE, stdout=self.log,
                stderr=subprocess.STDOUT, env=env, pass_fds=(write_fd,), text=True,
                start_new_session=True,  # Ctrl-C in the terminal reaches the tuner, which ends us
                preexec_fn=lambda: _child_setup(cpus))
        except OSError as exc:  # e.g. out of processes or memory: a failed trial, nothing leaked
            for fd in (read_fd, write_fd):
                os.close(fd)
            self.log.close()
            raise TrialFailure(FailureKind.CRASH, f"could not start a worker process: {exc}") from None
        os.close(write_fd)
        self._send(spec.__dict__)  # a worker that died at once shows up on receive

    def wait_ready(self, timeout_s: float) -> dict:
        return self._receive(timeout_s)

    def measure(self, timeout_s: float, **command) -> dict:
        self._send({"cmd": "measure", **command})
        return self._receive(timeout_s)

    def _send(self, message: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):  # ValueError: its stdin is closed, it has ended
            pass  # the receive that follows reports how it died

    def _receive(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        last_beat = 0.0
        while True:
            if "\n" in self._buffer:
                line, self._buffer = self._buffer.split("\n", 1)
                message = json.loads(line)
                if message.get("status") == "error":
                    self.kill()
                    raise TrialFailure(message.get("kind", FailureKind.EXCEPTION), message["reason"])
                return message
            rss = _rss_of(self.process.pid)
            self.peak_rss_mb = max(self.peak_rss_mb, rss)
            if rss > self.memory_limit_mb:
                if self.process.poll() is not None:  # died on its own first: say how
                    death = self._death()
                    death.reason += (f" (at {rss:.0f} MB resident, over the "
                                     f"{self.memory_limit_mb:.0f} MB limit)")
                    raise death
                self.kill()
                raise TrialFailure(FailureKind.MEMORY, f"out of memory: {rss:.0f} MB resident, over the "
                                   f"{self.memory_limit_mb:.0f} MB limit")
            if time.monotonic() > deadline:
                self.kill()
                raise TrialFailure(FailureKind.TIMEOUT, f"timeout: no answer within {timeout_s:.0f} s")
            if self.heartbeat and time.monotonic() - last_beat > 5:
                self.heartbeat()
                last_beat = time.monotonic()
            ready, _, _ = select.select([self._reply_fd], [], [], self.POLL_S)
            if ready:
                chunk = os.read(self._reply_fd, 1 << 16).decode()
                if chunk:
                    self._buffer += chunk
                    continue
                self.process.wait()
                raise self._death()

    def _death(self) -> TrialFailure:
        if getattr(self.process, "zygote_died", False):
            # not the config's doing: a lost trial, which a rerun replaces
            return TrialFailure(FailureKind.INTERRUPTED, "the zygote that started this worker died")
        code = self.process.returncode
        if code is not None and code < 0:
            return TrialFailure(FailureKind.CRASH, f"crashed: {_signal_name(code)}; log tail: {self.log_tail(300)}")
        return TrialFailure(FailureKind.CRASH, f"exited with code {code} without an answer; log tail: "
                            f"{self.log_tail(300)}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            fd = self.log.fileno()
            size = os.fstat(fd).st_size
            tail = os.pread(fd, 4 * chars, max(0, size - 4 * chars))  # UTF-8: at most 4 bytes a char
        except (OSError, ValueError):
            return ""
        return tail.decode(errors="replace")[-chars:].strip()

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self._send({"cmd": "quit"})
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        os.close(self._reply_fd)
        self.log.close()

    def __enter__(self) -> "WorkerProcess":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is not None:
            self.kill()
        self.close()


if __name__ == "__main__":
    sys.exit(_child_main())
