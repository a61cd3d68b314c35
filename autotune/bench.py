"""Measurement statistics: warm-up by count and time, timed runs, median and spread."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Mapping


@dataclass(frozen=True)
class MeasureSettings:
    """How a candidate is timed: warm-up by count and time, then timed runs by count and time.
    The one set of defaults: a trial's; the confirmation halves the timed part."""

    warmup_count: int = 3
    warmup_seconds: float = 1.0
    min_runs: int = 20
    min_seconds: float = 2.0
    # times under torch's serving stance (skip_guard_eval_unsafe), as a server may run: dynamo's
    # per-call layer with most guards unchecked (benchmarks/call_overhead.py)
    skip_guards: bool = False

    @classmethod
    def of(cls, command: Mapping) -> "MeasureSettings":
        """The settings in a worker command; what it leaves out keeps its default."""
        return cls(**{k: command[k] for k in asdict(cls()) if k in command})

    def timed_for(self, seconds: float) -> "MeasureSettings":
        """``seconds`` of timed runs, warmed up at most as long: a quick measurement asked for
        (`--measure-seconds 0.2`) is not four parts warm-up to one part timing."""
        return replace(self, min_seconds=seconds, warmup_seconds=min(self.warmup_seconds, seconds))

    def to_dict(self) -> dict:
        return asdict(self)


CONFIRM_MEASURE = MeasureSettings(min_runs=10, min_seconds=1.0)


@dataclass(frozen=True)
class Stats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    runs: int

    @classmethod
    def of(cls, samples_ms: list[float]) -> "Stats":
        if not samples_ms:
            raise ValueError("no samples")
        ordered = sorted(samples_ms)
        if len(ordered) >= 4:
            q = statistics.quantiles(ordered, n=10, method="inclusive")
            quart = statistics.quantiles(ordered, n=4, method="inclusive")
            p10, p90, iqr = q[0], q[-1], quart[2] - quart[0]
        else:
            p10, p90, iqr = ordered[0], ordered[-1], ordered[-1] - ordered[0]
        return cls(statistics.median(ordered), p10, p90, iqr, len(ordered))

    @property
    def spread(self) -> float:
        """Relative interquartile range: the noise a comparison has to beat."""
        return self.iqr_ms / self.median_ms if self.median_ms else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def warm_up(fn: Callable[[], object], *, count: int = 3, seconds: float = 0.5) -> None:
    """At least ``count`` calls and at least ``seconds`` of calls."""
    start = time.perf_counter()
    done = 0
    while done < count or time.perf_counter() - start < seconds:
        fn()
        done += 1


def sample(fn: Callable[[], object], *, min_runs: int = 10, min_seconds: float = 1.0,
           max_runs: int = 1000) -> list[float]:
    """Time single calls until both the run count and the time budget are reached."""
    samples = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def measure(fn: Callable[[], object], *, warmup_count: int = 3, warmup_seconds: float = 0.5,
            min_runs: int = 10, min_seconds: float = 1.0) -> Stats:
    warm_up(fn, count=warmup_count, seconds=warmup_seconds)
    return Stats.of(sample(fn, min_runs=min_runs, min_seconds=min_seconds))


def interleaved(fns: Mapping[str, Callable[[], object]], *, rounds: int = 5, runs_per_round: int = 10,
                warmup_count: int = 3) -> dict[str, Stats]:
    """Measure several callables in alternating rounds, so drift on a shared machine hits all alike."""
    for fn in fns.values():
        warm_up(fn, count=warmup_count, seconds=0.2)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += sample(fn, min_runs=runs_per_round, min_seconds=0.0,
                                    max_runs=runs_per_round)
    return {name: Stats.of(s) for name, s in samples.items()}
