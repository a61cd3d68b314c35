"""What forking trial workers from a preloaded zygote saves, and that it measures the same.

    python benchmarks/worker_start.py [--model resnet18] [--pairs 5] [--rounds 6]

Each pair starts one worker with a plain exec (``AUTOTUNE_WORKER_START=exec``) and one forked
from the zygote (which is warm after the first pair), in alternating order, for the same config.
Printed: the median time from start to "compiled and checked" for each, and the model's latency
measured in both workers in interleaved rounds while both are alive, as a ratio per pair. A
forked worker must run the model as fast as an exec'd one: the ratio's median should be 1.00
within the pairs' spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from autotune.models import ModelSpec  # noqa: E402
from autotune.worker import EAGER, WorkerProcess, WorkerSpec  # noqa: E402
from backend.config import BackendConfig  # noqa: E402

MEASURE = {"warmup_count": 3, "warmup_seconds": 0.3, "min_runs": 10, "min_seconds": 0.5}


def start(mode: str, spec: WorkerSpec) -> tuple[WorkerProcess, float]:
    os.environ["AUTOTUNE_WORKER_START"] = mode
    began = time.perf_counter()
    worker = WorkerProcess(spec)
    worker.wait_ready(600)
    return worker, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved measurements per pair")
    args = parser.parse_args()

    model = ModelSpec(args.model).to_dict()
    reference = os.path.join(tempfile.mkdtemp(prefix="worker-start-"), "reference.pt")
    config = BackendConfig({"threads": args.threads}).to_dict()
    start("exec", WorkerSpec(model=model, candidate=EAGER, reference_path=reference,
                             threads=args.threads))[0].close()
    spec = WorkerSpec(model=model, candidate=config, reference_path=reference)

    start_s = {"exec": [], "fork": []}
    ratios = []
    for pair in range(args.pairs):
        modes = ["exec", "fork"] if pair % 2 == 0 else ["fork", "exec"]
        workers = {}
        for mode in modes:
            workers[mode], seconds = start(mode, spec)
            start_s[mode].append(seconds)
        medians = {"exec": [], "fork": []}
        for round_ in range(args.rounds):
            for mode in (modes if round_ % 2 == 0 else modes[::-1]):
                medians[mode].append(workers[mode].measure(600, **MEASURE)["stats"]["median_ms"])
        for worker in workers.values():
            worker.close()
        ratio = statistics.median(medians["fork"]) / statistics.median(medians["exec"])
        ratios.append(ratio)
        print(f"pair {pair}: start exec {start_s['exec'][-1]:.1f} s, fork {start_s['fork'][-1]:.1f} s; "
              f"latency fork/exec {ratio:.3f} (exec {statistics.median(medians['exec']):.2f} ms)",
              flush=True)
    # the first forked start also started the zygote: the later ones are what each worker costs
    steady = start_s["fork"][1:] or start_s["fork"]
    print(f"\n{args.model}, {args.threads} threads, {args.pairs} pairs x {args.rounds} rounds")
    print(f"start to ready, median: exec {statistics.median(start_s['exec']):.1f} s, "
          f"fork {statistics.median(steady):.1f} s (first fork, with the zygote: {start_s['fork'][0]:.1f} s)")
    print(f"latency fork/exec, median of pairs: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
