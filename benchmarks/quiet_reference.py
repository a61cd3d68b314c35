"""How often the quiet check's reference workload calls a quiet machine slow, and whether it
still sees a busy neighbour.

    python benchmarks/quiet_reference.py [--looks 60]

Times the reference on each core ``--looks`` times, a quarter second apart, on the machine as
it is (run it with nothing else busy), then ``--looks`` times again with a spin loop pinned to
the first core. For the quiet
series it prints how many looks each way of setting "usual" would have called slow
(``quiet.SLOWER`` or more): the median of the quiet looks so far, after the first few
(autotune/quiet.py), and the 10th percentile of the last 50 looks (its earlier rule). For the spin loop's, the ratio of each
look to the quiet median: every one of them should be at or above ``quiet.SLOWER``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from autotune import quiet

SPIN = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass\n"


def series(cpus: list[int], looks: int) -> dict[int, list[float]]:
    times: dict[int, list[float]] = {}
    for _ in range(looks):
        for cpu, took in quiet._reference_times(cpus).items():
            times.setdefault(cpu, []).append(took)
        time.sleep(0.25)
    return times


def wait_until_spinning(pid: int) -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    while True:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / ticks >= 0.1:  # utime + stime: past its start
            return
        time.sleep(0.02)


def slow_looks_by_tenth_percentile(times: list[float]) -> int:
    history, slow = [], 0
    for took in times:
        history = (history + [took])[-quiet.REFERENCE_HISTORY:]
        slow += took / sorted(history)[len(history) // 10] >= quiet.SLOWER
    return slow


def slow_looks_by_quiet_median(times: list[float]) -> int:
    quiet._reference_ms.clear()
    return sum(quiet._judge({0: took}) >= quiet.SLOWER for took in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--looks", type=int, default=60)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))

    alone = series(cpus, args.looks)
    print(f"quiet, {args.looks} looks per core; looks called slow (>= {quiet.SLOWER}x usual):")
    for cpu, times in alone.items():
        print(f"  core {cpu}: {min(times):.1f}-{max(times):.1f} ms, median {statistics.median(times):.1f}; "
              f"against the quiet median {slow_looks_by_quiet_median(times)}, "
              f"against the 10th percentile {slow_looks_by_tenth_percentile(times)}")

    spinner = subprocess.Popen(["taskset", "-c", str(cpus[0]), sys.executable, "-S", "-c", SPIN],
                               start_new_session=True)
    try:
        wait_until_spinning(spinner.pid)
        shared = series(cpus[:1], args.looks)[cpus[0]]
    finally:
        spinner.kill()
        spinner.wait()
    ratios = sorted(took / statistics.median(alone[cpus[0]]) for took in shared)
    print(f"beside a spin loop on core {cpus[0]}: {ratios[0]:.2f}x-{ratios[-1]:.2f}x the quiet median, "
          f"median {statistics.median(ratios):.2f}x; {sum(r >= quiet.SLOWER for r in ratios)} of "
          f"{len(ratios)} looks called slow")


if __name__ == "__main__":
    main()
