"""Tune and compare a suite of models; write a markdown table with every ratio from one run each.

    python benchmarks/suite.py [--models resnet50:1,resnet50:16,mobilenet_v3_large:1,efficientnet_b0:1,vit_b_16:1,resnet18:1]
                               [--dtype float32] [--trials 25] [--timeout 15m] [-o benchmarks/results.md]
                               [--images N]   (with --dtype float32,int8: N synthetic images)

For each model: `autotune run` (default budget unless given), then `autotune compare` (static
recipes, backend defaults, the tuned config through the store lookup, interleaved in fresh
processes). The six default models take over an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import tempfile

import torch

from autotune.cli import _parse_dtypes
from autotune.compare import compare, named_for
from autotune.models import ModelSpec, build
from autotune.study_file import parse_duration
from autotune.confirmation import BEST_STATIC
from autotune.space import (INDUCTOR_DEFAULT, ONNXRUNTIME_DEFAULT, OPENVINO_LATENCY,
                            TORCHSCRIPT_DEFAULT, WITHOUT_ONEDNN_GRAPH)
from autotune.tuner import Tuner, TuneRequest
from autotune.worker import EAGER, INT8_PEERS, IPEX_LOOKUP, PEERS, TORCH_COMPILE_DEFAULT
from backend import BackendConfig
from backend.fingerprint import hardware_info
from backend.store import accuracy_text

# BEST_STATIC: the fastest of every static recipe compare measured (space.STATIC_RECIPES)
STATIC_COLUMNS = [TORCHSCRIPT_DEFAULT, WITHOUT_ONEDNN_GRAPH, INDUCTOR_DEFAULT, OPENVINO_LATENCY,
                  ONNXRUNTIME_DEFAULT, BEST_STATIC]


def columns(dtype: str, dtypes: tuple[str, ...] = ()) -> list[str]:
    int8 = [named_for(OPENVINO_LATENCY, "int8"), named_for(INDUCTOR_DEFAULT, "int8"), *INT8_PEERS] \
        if "int8" in dtypes else []
    # ONNX Runtime computes in float32 only: its recipe keeps its float32 name in any study
    static = [c if c == ONNXRUNTIME_DEFAULT else named_for(c, dtype) for c in STATIC_COLUMNS]
    return [EAGER, TORCH_COMPILE_DEFAULT, *PEERS, *static, *int8, IPEX_LOOKUP]


def synthetic_images(spec: ModelSpec, count: int, folder: str) -> str:
    """``count`` smooth random images of the model's input shape, in batches: no image dataset
    can be downloaded here, and white noise would calibrate int8 to noise. A file for --data."""
    _, inputs = build(spec)
    generator = torch.Generator().manual_seed(1)
    shape = inputs[0].shape
    count -= count % shape[0]
    coarse = torch.randn(count, shape[1], max(2, shape[2] // 16), max(2, shape[3] // 16),
                         generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=tuple(shape[2:]), mode="bicubic")
    images += 0.1 * torch.randn(images.shape, generator=generator)
    path = os.path.join(folder, f"{spec.name}-{spec.batch_size}-images.pt")
    torch.save(list(images.split(shape[0])), path)
    return path


def write_table(rows, args, argv) -> None:
    info = hardware_info()
    shown = columns(args.dtype[0], args.dtype)
    static_name = named_for(BEST_STATIC, args.dtype[0])
    header = ["model", "batch", *[f"{c} (ms)" for c in shown], "tuned vs backend default",
              "tuned vs best static",
              "tuned vs fastest other", "tuned vs eager", "tuned GFLOP/s (% FMA peak)", "trials",
              "tuned config", "tuned accuracy (held-out)", "run noise"]
    lines = [f"Measured {datetime.date.today()} on {info['cpu']}, {info['cores']} cores, torch "
             f"{torch.__version__}, dtypes {','.join(args.dtype)}, by `python benchmarks/suite.py "
             f"{' '.join(argv or sys.argv[1:])}`. Medians of {args.rounds} interleaved rounds in fresh "
             "processes; ratios within one run"
             + (", torch.compile's guards skipped (set_stance skip_guard_eval_unsafe)"
                if args.skip_guards else "") + ".", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, batch, m, trials, rate, fma, knobs, accuracy, noise in rows:
        cells = [f"{m[c]:.2f}" if m.get(c) else "failed" if c in m else "-" for c in shown]
        tuned, static, eager = m[IPEX_LOOKUP], m[static_name], m[EAGER]
        default = m[named_for(TORCHSCRIPT_DEFAULT, args.dtype[0])]
        vs_default = f"{default / tuned:.2f}x" if tuned and default else "-"
        vs_static = f"{static / tuned:.2f}x" if tuned and static else "-"
        vs_eager = f"{eager / tuned:.2f}x" if tuned and eager else "-"
        others = [m.get(c) for c in shown if c != IPEX_LOOKUP and m.get(c)]
        vs_fastest = f"{min(others) / tuned:.2f}x" if tuned and others else "-"
        peak = f"{rate:.0f} ({100 * rate / fma:.0f}%)" if rate and fma else "-"
        lines.append(f"| {name} | {batch} | " + " | ".join(cells) + f" | {vs_default} | {vs_static} | {vs_fastest} | {vs_eager} | {peak} | {trials} | {knobs} | {accuracy or '-'} | {noise} |")
    text = "\n".join(lines) + "\n"
    with open(args.output, "w") as f:
        f.write(text)
    print(text, flush=True)


def tuned_knobs(result, dtype: str) -> str:
    """What the lookup applied; naming the default makes a noise-floor row visible."""
    graphs = result.candidates[IPEX_LOOKUP].graphs
    if not graphs or "config" not in graphs[0]:
        return "-"
    applied = BackendConfig(graphs[0]["config"])
    default = result.candidates.get(named_for(TORCHSCRIPT_DEFAULT, applied.dtype),
                                    result.candidates[named_for(TORCHSCRIPT_DEFAULT, dtype)]).config
    threads = applied.threads or default.threads  # 0: the process's threads, as compare sets them
    if applied.replace(threads=threads).config_id == default.config_id:
        text = "the TorchScript path default"
    else:
        knobs = {k: v for k, v in applied.non_default().items()
                 if not (k == "threads" and v in (0, default.threads))}
        text = ", ".join(f"{k}={v}" for k, v in knobs.items())
    source = graphs[0].get("source", "")
    return text if source.startswith("store") else f"{text} (not from the store: {source})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50:1,resnet50:16,mobilenet_v3_large:1,"
                                            "efficientnet_b0:1,vit_b_16:1,resnet18:1")
    parser.add_argument("--dtype", type=_parse_dtypes, default=("float32",))
    parser.add_argument("--trials", type=int, default=25)
    parser.add_argument("--timeout", default="15m")
    parser.add_argument("--storage")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=0,
                        help="synthetic images for --data (int8 needs them): half calibrate, "
                             "half judge accuracy")
    parser.add_argument("--skip-guards", action="store_true",
                        help="compare times every torch.compile call with its guards skipped, "
                             "as `autotune compare --skip-guards`; the tuning is unchanged")
    parser.add_argument("-o", "--output", default="benchmarks/results.md")
    args = parser.parse_args(argv)
    rows = []
    scratch = tempfile.mkdtemp(prefix="suite-images-")
    for item in args.models.split(","):
        name, _, batch = item.partition(":")
        spec = ModelSpec(name, batch_size=int(batch or 1))
        data = synthetic_images(spec, args.images, scratch) if args.images else None
        request = TuneRequest(model=spec, dtypes=args.dtype, trials=args.trials,
                              timeout_s=parse_duration(args.timeout), storage=args.storage,
                              data=data)
        print(f"== tuning {name} batch {spec.batch_size}", file=sys.stderr, flush=True)
        tuned = Tuner(request).run()
        request.confirm_rounds = args.rounds
        request.confirm_measure = dataclasses.replace(request.confirm_measure,
                                                      skip_guards=args.skip_guards)
        result = compare(request)
        best_static = result.best_static(args.dtype[0])
        named = {named_for(BEST_STATIC, args.dtype[0]): best_static}
        measured = {c: result.candidates.get(named.get(c, c)) for c in columns(args.dtype[0], args.dtype)}
        for column, candidate in measured.items():  # the table says "failed"; this says why
            if candidate is None and column in named:
                print(f"   {column} failed: every static recipe failed", file=sys.stderr, flush=True)
            elif candidate and not candidate.stats:
                print(f"   {column} failed: {candidate.failure or 'no round on a quiet machine'}",
                      file=sys.stderr, flush=True)
        medians = {c: cand.stats.median_ms if cand and cand.stats else None
                   for c, cand in measured.items() if cand or c in named}  # absent: "-"
        fma = result.fma_peak(IPEX_LOOKUP)
        tuned_rate = result.gflops(IPEX_LOOKUP)
        rows.append((name, spec.batch_size, medians, tuned.trials_total, tuned_rate, fma,
                     tuned_knobs(result, args.dtype[0]),
                     accuracy_text(result.candidates[IPEX_LOOKUP].accuracy), result.noise_note()))
        write_table(rows, args, argv)  # after each model: a long run cut short keeps what it measured

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
