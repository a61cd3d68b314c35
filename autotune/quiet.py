"""Is the machine quiet enough to time on? What else runs on the cores a measurement uses.

Read from /proc: the CPU time each of our cores spent busy, minus what this process and its
descendants (the zygote, the workers) used, is what other processes took; the kernel's steal
time is what a hypervisor took. A process outside our tree that used CPU on our cores is named.
On a shared machine OpenMP threads that lose their core spin against each other and a run
takes 10-30x longer, so a measurement taken while another process is busy there is no number.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

BUSY_CORES = 0.25    # other processes using a quarter of a core on average: not quiet
SLOWER = 1.5  # the reference 1.5x its usual time: not quiet (a core shared with a busy process: 2x)
BUSY_STEAL = 0.05    # a hypervisor taking 5% of our cores' time: not quiet
OWN_BUSY = 0.5       # our child processes busier than this (a compile beside the look): no judge
PROBE_S = 0.25       # how long one look at the machine lasts (25 ticks of a 100 Hz clock per core)
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Snapshot:
    at: float
    busy: dict[int, int]                      # cpu -> busy ticks (user..softirq, without idle)
    total: dict[int, int]
    steal: dict[int, int]
    # pid -> (name, ppid, cpu ticks with its reaped children's, last cpu, its own cpu ticks)
    processes: dict[int, tuple[str, int, int, int, int]]


@dataclass(frozen=True)
class Interference:
    """What other processes did on our cores during one window."""
    other_cores: float            # cores' worth of CPU time other processes took, on average
    steal: float                  # fraction of our cores' time the hypervisor took
    others: tuple[str, ...] = ()  # "pid 123 (python3)" for each busy process outside our tree
    slowdown: float = 1.0         # the reference workload's time over its usual in this process
    own_cores: float = 0.0        # cores' worth our own processes used (the reference included)
    children_cores: float = 0.0   # the part of it our child processes used (workers, the zygote)

    @property
    def busy(self) -> bool:
        return self.other_cores >= BUSY_CORES or self.steal >= BUSY_STEAL or self.slowdown >= SLOWER

    def describe(self, cpus: Iterable[int]) -> str:
        where = f"cores {_ranges(cpus)}"
        parts = []
        if self.other_cores >= BUSY_CORES and self.others:
            plural = "es" if len(self.others) != 1 else ""
            parts.append(f"{len(self.others)} other busy process{plural} on {where} "
                         f"({self.other_cores:.1f} cores' worth): {', '.join(self.others[:3])}")
        elif self.other_cores >= BUSY_CORES:  # short-lived ones, gone before they could be named
            parts.append(f"other processes busy on {where} ({self.other_cores:.1f} cores' worth)")
        if self.steal >= BUSY_STEAL:
            parts.append(f"the hypervisor took {100 * self.steal:.0f}% of {where}")
        if self.slowdown >= SLOWER:
            parts.append(f"a reference workload ran {self.slowdown:.1f}x slower than usual "
                         f"on {where}")
        return "; ".join(parts) or f"quiet on {where}"

    def to_dict(self) -> dict:
        return {"other_cores": round(self.other_cores, 3), "steal": round(self.steal, 3),
                "others": list(self.others), "slowdown": round(self.slowdown, 3), "busy": self.busy}


def _ranges(cpus: Iterable[int]) -> str:
    cpus = sorted(cpus)
    spans: list[str] = []
    for cpu in cpus:
        if spans and cpu == last + 1:
            spans[-1] = f"{spans[-1].split('-')[0]}-{cpu}"
        else:
            spans.append(str(cpu))
        last = cpu
    return ",".join(spans)


def _read_cpu_times() -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    busy, total, steal = {}, {}, {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            values = [int(v) for v in fields[:8]]
            cpu = int(name[3:])
            user, nice, system, idle, iowait, irq, softirq, stolen = values + [0] * (8 - len(values))
            busy[cpu] = user + nice + system + irq + softirq
            total[cpu] = busy[cpu] + idle + iowait + stolen
            steal[cpu] = stolen
    return busy, total, steal


def _read_processes() -> dict[int, tuple[str, int, int, int, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:  # gone meanwhile
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        # fields[0] is field 3 of proc(5): state, ppid, ..., utime (14), stime, cutime, cstime
        ticks = sum(int(v) for v in fields[11:15])
        found[int(entry)] = (name, int(fields[1]), ticks, int(fields[36]), int(fields[11]) + int(fields[12]))
    return found


def _snapshot() -> _Snapshot:
    busy, total, steal = _read_cpu_times()
    return _Snapshot(time.monotonic(), busy, total, steal, _read_processes())


def _our_tree(processes: dict[int, tuple[str, int, int, int, int]]) -> set[int]:
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (_, ppid, *_) in processes.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return ours


def _between(before: _Snapshot, after: _Snapshot, cpus: list[int]) -> Interference:
    total = sum(after.total.get(c, 0) - before.total.get(c, 0) for c in cpus)
    if total <= 0:
        return Interference(0.0, 0.0)
    busy = sum(after.busy.get(c, 0) - before.busy.get(c, 0) for c in cpus)
    stolen = sum(after.steal.get(c, 0) - before.steal.get(c, 0) for c in cpus)
    ours = _our_tree(after.processes) | _our_tree(before.processes)
    # Our own time only on these cores, and without the children reaped meanwhile (a worker's
    # whole life lands at once): else a child busy elsewhere hides a neighbour here. This
    # process counts wherever it ran last: the look's reference ran on these cores.
    ours_used = {p: after.processes[p][4] - before.processes[p][4] for p in ours
                 if p in after.processes and p in before.processes
                 and (p == os.getpid() or after.processes[p][3] in cpus)}
    own = sum(ours_used.values())
    per_core = total / len(cpus)  # ticks one core had in this window
    others = []
    for pid, (name, _, ticks, cpu, _) in after.processes.items():
        used = ticks - before.processes[pid][2] if pid in before.processes else 0
        if pid not in ours and cpu in cpus and used >= 0.1 * per_core:
            others.append((used, f"pid {pid} ({name})"))
    others.sort(reverse=True)
    return Interference(max(0.0, busy - own) / per_core, stolen / total,
                        tuple(text for _, text in others), own_cores=own / per_core,
                        children_cores=(own - ours_used.get(os.getpid(), 0)) / per_core)


class Watch:
    """Interference on ``cpus`` from ``start()`` to ``stop()``."""

    def __init__(self, cpus: Iterable[int]):
        self.cpus = sorted(cpus)
        self._before: _Snapshot | None = None

    def start(self) -> "Watch":
        self._before = _snapshot()
        return self

    def stop(self) -> Interference:
        return _between(self._before, _snapshot(), self.cpus)


# cpu -> the reference's usual times (ms): quiet looks only, so a slow spell stays slow until the
# Gate has waited it out; "usual" is their median (on a VM the fastest looks run 1.4x faster than
# the typical one, so a baseline at the fastest called quiet looks slow)
_reference_ms: dict[int, list[float]] = {}
REFERENCE_HISTORY = 50
REFERENCE_FIRST = 5  # looks kept unjudged first: the median of one or two is a guess
_reference_data: list = []  # made once: 16 MB to stream through, a matrix to multiply, rounds
REFERENCE_MS = 12.0  # several scheduler slices: a shorter run can fit in one turn beside a spinner


def _time_reference() -> float:
    """A fixed single-threaded workload: passes over 16 MB (memory) and small matmuls (compute),
    as many rounds as take about REFERENCE_MS on this CPU when it is made (a fast CPU once did
    the old fixed three rounds in 2.3 ms, which fit in a turn on a core shared with a busy
    process, and the probe missed it). The total, not the best round, for the same reason."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if not _reference_data:
            data, matrix = torch.ones(4 << 20), torch.ones(192, 192)
            _one_round(data, matrix)  # warm caches and code
            best = min(_timed(lambda: _one_round(data, matrix)) for _ in range(3))
            _reference_data.extend([data, matrix, max(3, math.ceil(REFERENCE_MS / max(best, 1e-3)))])
        data, matrix, rounds = _reference_data
        _one_round(data, matrix)  # warm caches and code, outside the timing
        return _timed(lambda: [_one_round(data, matrix) for _ in range(rounds)])
    finally:
        torch.set_num_threads(threads)


def _one_round(data, matrix) -> None:
    data.sum()
    for _ in range(4):
        matrix.mm(matrix)


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) * 1e3


def _reference_times(cpus: Iterable[int]) -> dict[int, float]:
    """The reference's time on each core (the first 8 of ``cpus``), run there by this thread, the
    best of three each: it sees what /proc cannot (a neighbour on the host, a lower clock)."""
    previous = os.sched_getaffinity(0)
    try:
        times = {}
        for cpu in sorted(cpus)[:8]:
            os.sched_setaffinity(0, {cpu})
            times[cpu] = min(_time_reference() for _ in range(3))  # jitter is brief, a slow core is not
        return times
    finally:
        os.sched_setaffinity(0, previous)


def _judge(times: dict[int, float]) -> float:
    """The worst of these times over its core's usual; the quiet ones become part of the usual."""
    worst = 1.0
    for cpu, took in times.items():
        history = _reference_ms.setdefault(cpu, [])
        ratio = took / statistics.median(history) if len(history) >= REFERENCE_FIRST else 1.0
        if ratio < SLOWER:
            history.append(took)
            del history[:-REFERENCE_HISTORY]
        worst = max(worst, ratio)
    return worst


def look(cpus: Iterable[int], seconds: float = PROBE_S) -> Interference:
    """Interference over ``seconds``, and the reference workload's slowdown within them (our
    own CPU time is left out of the interference, the reference's included)."""
    cpus = sorted(cpus)
    watch = Watch(cpus).start()
    start = time.monotonic()
    times = _reference_times(cpus)
    time.sleep(max(0.0, seconds - (time.monotonic() - start)))
    seen = watch.stop()
    if seen.children_cores > OWN_BUSY:  # our own compile shares the cores: the reference says nothing
        return seen
    return dataclasses.replace(seen, slowdown=_judge(times))


def wait_for_quiet(cpus: Iterable[int], max_wait_s: float,
                   say: Callable[[str], None] = lambda message: None,
                   on_look: Callable[[], None] = lambda: None) -> Interference:
    """Look until the cores are quiet or ``max_wait_s`` has passed; the last look. ``say`` hears
    why it waits, once and then every 30 s; ``on_look`` runs at the first look and then every
    5 s (a trial's heartbeat, so that a long wait does not look like a dead tuner)."""
    cpus = sorted(cpus)
    start = time.monotonic()
    said_at = beat_at = None
    while True:
        if beat_at is None or time.monotonic() - beat_at >= 5:
            beat_at = time.monotonic()
            on_look()
        seen = look(cpus)
        waited = time.monotonic() - start
        if not seen.busy or waited >= max_wait_s:
            return seen
        if said_at is None or time.monotonic() - said_at >= 30:
            said_at = time.monotonic()
            say(f"waiting for a quiet machine: {seen.describe(cpus)} "
                f"(up to {max(0, max_wait_s - waited):.0f} s more, then measuring anyway; a "
                "measurement that /proc sees busy is marked noisy)")


def _only_slower(seen: Interference) -> bool:
    return seen.slowdown >= SLOWER and seen.other_cores < BUSY_CORES and seen.steal < BUSY_STEAL


class Gate:
    """Waits for quiet before each measurement, ``max_wait_s`` at most while the machine stays
    busy: after that long, later measurements only take a look until the machine is seen quiet
    again, so a machine that never calms down costs one wait, not one per trial. (A measurement
    is marked noisy by what its own watch saw, not by this look.)"""

    def __init__(self, cpus: Iterable[int], max_wait_s: float,
                 say: Callable[[str], None] = lambda message: None):
        self.cpus, self.max_wait_s, self.say = sorted(cpus), max_wait_s, say
        self._busy_for = 0.0

    def wait(self, on_look: Callable[[], None] = lambda: None) -> Interference:
        start = time.monotonic()
        seen = wait_for_quiet(self.cpus, max(0.0, self.max_wait_s - self._busy_for), self.say, on_look)
        self._busy_for = self._busy_for + time.monotonic() - start if seen.busy else 0.0
        if self.max_wait_s > 0 and self._busy_for >= self.max_wait_s and _only_slower(seen):
            # nothing /proc shows, for the whole wait: this machine's new usual (a lower clock,
            # another host), not a spell; else every later measurement would be "busy"
            for cpu in self.cpus:
                _reference_ms.pop(cpu, None)
            self.say(f"the reference workload stayed {seen.slowdown:.1f}x slower than usual for "
                     f"{self.max_wait_s:.0f} s with nothing else busy on cores {_ranges(self.cpus)}: "
                     "taking that as their usual from now on")
        return seen

    def watch(self) -> Watch:
        return Watch(self.cpus).start()
