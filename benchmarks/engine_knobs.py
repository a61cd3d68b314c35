"""Which OpenVINO and ONNX Runtime knobs move latency: each value against its engine's default.

    python benchmarks/engine_knobs.py [--models resnet50,mobilenet_v3_large] [--rounds 5]

Per model, one interleaved comparison: the backend default, each engine's default, and each
engine's default with one knob changed, every candidate compiled in its own fresh process and
timed in rotating rounds. Prints each candidate's median, its IQR and its ratio to its engine's
default (above 1: the change is faster), with the run's noise. A knob whose values stay within
the noise on every model is not worth a search dimension.
"""

from __future__ import annotations

import argparse
import sys

from autotune.confirmation import median_noise
from autotune.models import ModelSpec
from autotune.tuner import TuneRequest
from autotune.workbench import Candidate
from backend import BackendConfig
from backend.knobs import KNOBS, ONNXRUNTIME, OPENVINO

ENGINES = (OPENVINO, ONNXRUNTIME)


def candidates(threads: int) -> dict[str, tuple[str, Candidate]]:
    """name -> (the engine default it is compared with, candidate)."""
    found = {"backend default": ("backend default",
                                 Candidate("backend default", BackendConfig({"threads": threads})))}
    for engine in ENGINES:
        base = f"{engine} default"
        found[base] = (base, Candidate(base, BackendConfig({"path": engine, "threads": threads})))
        for knob in KNOBS.values():
            if engine not in knob.paths or knob.name in ("path", "dtype", "threads"):
                continue
            values = (True, False) if knob.type is bool else knob.choices
            for value in values:
                if value != knob.default:
                    name = f"{engine} {knob.name}={knob.dump(value)}"
                    config = BackendConfig({"path": engine, "threads": threads, knob.name: value})
                    found[name] = (base, Candidate(name, config))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v3_large")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storage", default="sqlite:////tmp/engine_knobs.db")
    args = parser.parse_args(argv)
    print(f"`python benchmarks/engine_knobs.py {' '.join(argv or sys.argv[1:])}`: batch 1, "
          f"float32, medians of {args.rounds} interleaved rounds in fresh processes\n")
    for model in args.models.split(","):
        request = TuneRequest(model=ModelSpec(model), storage=args.storage,
                              confirm_rounds=args.rounds)
        bench = request.bench()
        bench.preflight()
        bench.ensure_reference()
        wanted = candidates(request.threads)
        measured = bench.measure_interleaved({name: c for name, (_, c) in wanted.items()})
        print(f"| {model} | median ms | IQR | vs its engine's default |\n|---|---|---|---|")
        for name, (base, _) in wanted.items():
            stats, base_stats = measured[name].stats, measured[base].stats
            if stats is None:
                print(f"| {name} | failed: {(measured[name].failure or '')[:80]} | | |")
                continue
            ratio = f"{base_stats.median_ms / stats.median_ms:.3f}x" if base_stats else "-"
            print(f"| {name} | {stats.median_ms:.2f} | {100 * stats.spread:.0f}% | {ratio} |")
        print(f"\nrun noise: median IQR {100 * median_noise(measured):.1f}%\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
