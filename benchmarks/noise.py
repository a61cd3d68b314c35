"""Tune on a quiet machine and beside a busy process; re-measure both choices on a quiet machine.

    python benchmarks/noise.py [--model resnet18] [--trials 10] [--rounds 5]

Tunes the model twice, each in its own store: once on a quiet machine, once with a pure-Python
spin loop pinned to the first core for the whole tuning (started outside this process's tree,
as another user's program would be). Then the backend default and both stored configs are
compiled in fresh processes and timed in interleaved rounds on the quiet machine. Prints, per
study, the config it chose, what it said about it, and that config's speedup over the default
as re-measured. The busy study passes if its choice is within 3% of the quiet study's choice,
or if it stored the default and said why.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from autotune.confirmation import BACKEND_DEFAULT
from autotune.evidence import paired_verdict, stored_evidence
from autotune.models import ModelSpec
from autotune.tuner import Tuner, TuneRequest
from autotune.workbench import Candidate
from backend import BackendConfig
from backend.store import ConfigStore

SPIN = "import time\nend = time.monotonic() + 7200\nwhile time.monotonic() < end: pass\n"


def spin_outside_our_tree(cpu: int) -> int:
    out = subprocess.run(["sh", "-c", f"taskset -c {cpu} {sys.executable} -c '{SPIN}' "
                                      ">/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def tune(args, folder: str, busy: bool) -> tuple[BackendConfig, str, float]:
    request = TuneRequest(model=ModelSpec(args.model), trials=args.trials, timeout_s=args.timeout,
                          storage=f"sqlite:///{folder}/store.db", seed=0,
                          max_wait_s=args.max_wait)
    spinner = spin_outside_our_tree(sorted(os.sched_getaffinity(0))[0]) if busy else None
    start = time.monotonic()
    try:
        result = Tuner(request).run()
    finally:
        if spinner:
            os.kill(spinner, 9)
    records = ConfigStore(request.storage_url).list()
    label = "busy" if busy else "quiet"
    print(f"[{label}] {time.monotonic() - start:.0f} s, {result.trials_complete} complete, "
          f"{result.trials_failed} failed; {result.message}", file=sys.stderr, flush=True)
    if not records:
        return request.default_config(), f"nothing stored: {result.message}", float("nan")
    record = records[0]
    return BackendConfig(record.config), stored_evidence(record.latency), record.speedup


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=15 * 60)
    parser.add_argument("--max-wait", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    chosen = {}
    for busy in (False, True):
        with tempfile.TemporaryDirectory() as folder:
            chosen["busy" if busy else "quiet"] = tune(args, folder, busy)

    # the re-measurement, on a quiet machine, of both choices against the default
    request = TuneRequest(model=ModelSpec(args.model), confirm_rounds=args.rounds,
                          max_wait_s=args.max_wait)
    candidates = {BACKEND_DEFAULT: Candidate(BACKEND_DEFAULT, request.default_config())}
    for label, (config, _, _) in chosen.items():
        candidates[label] = Candidate(label, config)
    measured = request.bench().measure_interleaved(candidates)
    default = measured[BACKEND_DEFAULT]

    print(f"{args.model}, batch 1, {request.threads} threads, {args.trials} trials per study; "
          f"re-measured in {args.rounds} interleaved rounds on a quiet machine "
          f"(`python benchmarks/noise.py {' '.join(argv or sys.argv[1:])}`, {time.strftime('%Y-%m-%d')})\n")
    print("| study | chosen config | what the study stored about it | speedup it stored | "
          "re-measured speedup over default | verdict |")
    print("|---|---|---|---|---|---|")
    speedups = {}
    for label, (config, said, stored_speedup) in chosen.items():
        cand = measured[label]
        if not (cand.stats and default.stats):
            print(f"| {label} | {config.non_default()} | {said} | {stored_speedup:.2f}x | failed | - |")
            continue
        ratios = [d / c for c, d in zip(cand.round_medians, default.round_medians) if c and d]
        speedups[label] = statistics.median(ratios) if ratios else float("nan")
        verdict = paired_verdict(*cand.paired_with(default))
        print(f"| {label} | {config.non_default()} | {said} | {stored_speedup:.2f}x | "
              f"{speedups[label]:.3f}x | {verdict.describe()} |")
    if "quiet" in speedups and "busy" in speedups:
        gap = speedups["busy"] / speedups["quiet"]
        kept_default = chosen["busy"][0] == request.default_config()
        ok = gap >= 0.97 or (kept_default and "inconclusive" in chosen["busy"][1])
        print(f"\nbusy choice re-measured at {gap:.3f}x the quiet choice's speed: "
              f"{'within 3%' if gap >= 0.97 else 'more than 3% slower'}"
              f"{' (it stored the default and said why)' if kept_default else ''}: "
              f"{'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
