"""How the OpenMP wait policy changes trial times, on a quiet machine and beside a busy process.

    python benchmarks/omp_wait.py [--model resnet18] [--rounds 3] [--seconds 2]

torch's wheels use GNU OpenMP (libgomp), which reads OMP_WAIT_POLICY and GOMP_SPINCOUNT: after a
parallel region its threads spin this long before they sleep. Beside another busy process a
spinning thread holds a core the other needs, and the region's stragglers wait for it. Each
measurement runs in a fresh process (the policy is read at start-up) with the backend's default
config; "busy" runs one pure-Python spin loop pinned to the first core for the whole measurement.
Rounds interleave every policy and both conditions, so drift hits them alike. Prints medians over
rounds of each process's median and IQR, and each policy's ratio to libgomp's default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

POLICIES = {
    "libgomp default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
}

MEASURE = r"""
import json, statistics, sys, time
import torch
import backend  # registers the ipex backend
from autotune.models import ModelSpec, build
torch.set_num_threads(int(sys.argv[2]))
model, inputs = build(ModelSpec(sys.argv[1]))
with torch.no_grad():
    fn = torch.compile(model, backend="ipex", options={"autotune": False})
    for _ in range(5):
        fn(*inputs)
    samples, end = [], time.perf_counter() + float(sys.argv[3])
    while time.perf_counter() < end or len(samples) < 10:
        start = time.perf_counter()
        fn(*inputs)
        samples.append((time.perf_counter() - start) * 1e3)
q = statistics.quantiles(samples, n=4)
print(json.dumps({"median_ms": statistics.median(samples), "iqr": (q[2] - q[0]) / statistics.median(samples)}))
"""

SPIN = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"


def measure(model: str, threads: int, seconds: float, env: dict, busy: bool) -> dict:
    spinner = None
    if busy:
        first = sorted(os.sched_getaffinity(0))[0]
        spinner = subprocess.Popen(["taskset", "-c", str(first), sys.executable, "-c", SPIN])
    try:
        out = subprocess.run([sys.executable, "-c", MEASURE, model, str(threads), str(seconds)],
                             env={**os.environ, **env}, capture_output=True, text=True, check=True)
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    threads = len(os.sched_getaffinity(0))
    results: dict[tuple[str, bool], list[dict]] = {}
    cells = [(name, busy) for busy in (False, True) for name in POLICIES]
    for round_ in range(args.rounds):
        shift = round_ % len(cells)
        for name, busy in cells[shift:] + cells[:shift]:
            results.setdefault((name, busy), []).append(
                measure(args.model, threads, args.seconds, POLICIES[name], busy))
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{args.model}, batch 1, {threads} threads, backend default config; medians over "
          f"{args.rounds} interleaved rounds of per-process medians "
          f"(`python benchmarks/omp_wait.py {' '.join(argv or sys.argv[1:])}`, {time.strftime('%Y-%m-%d')})\n")
    print("| policy | quiet (ms) | quiet IQR | busy core (ms) | busy IQR | quiet vs default | busy vs default |")
    print("|---|---|---|---|---|---|---|")
    base = {busy: statistics.median(r["median_ms"] for r in results[("libgomp default", busy)])
            for busy in (False, True)}
    for name in POLICIES:
        row = []
        for busy in (False, True):
            runs = results[(name, busy)]
            row.append(statistics.median(r["median_ms"] for r in runs))
            row.append(statistics.median(r["iqr"] for r in runs))
        print(f"| {name} | {row[0]:.2f} | {100 * row[1]:.0f}% | {row[2]:.2f} | {100 * row[3]:.0f}% "
              f"| {row[0] / base[False]:.2f}x | {row[2] / base[True]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
