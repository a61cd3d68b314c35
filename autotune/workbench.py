"""The bench: candidates measured each in its own fresh worker process, checked against the eager
float32 reference, compiled side by side and timed in interleaved rounds. `autotune run` (its
trials and its confirmation) and `autotune compare` measure here; the statistics are in bench.py.
"""

from __future__ import annotations

import functools
import logging
import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch

from backend import BackendConfig
from backend.store import ConfigStore

from . import data, models, quiet
from .bench import MeasureSettings, Stats
from .errors import StudyError
from .models import ModelSpec, build, module_origin
from .worker import EAGER, MIN_AGREEMENT, TOLERANCES, TrialFailure, WorkerProcess, WorkerSpec

log = logging.getLogger("autotune")


@dataclass(frozen=True)
class Candidate:
    name: str
    config: BackendConfig | None      # None: a baseline that is not a backend config
    stats: Stats | None = None
    graphs: tuple[dict, ...] = ()     # what the worker compiled: one record per graph
    failure: str | None = None
    kind: str = ""                    # for baselines: EAGER or TORCH_COMPILE_DEFAULT
    dtype: str = "float32"
    # one per interleaved round: None where it failed, or where the machine was busy (quiet.py)
    round_medians: tuple[float | None, ...] = ()
    noisy: bool = False               # its stats come from rounds measured on a busy machine
    accuracy: dict | None = None      # a reduced-precision candidate's gate figures

    def paired_with(self, other: "Candidate") -> tuple[list, list]:
        """Both candidates' medians of the rounds each measured on a quiet machine."""
        pairs = [(a, b) for a, b in zip(self.round_medians, other.round_medians)
                 if a is not None and b is not None]
        return [a for a, _ in pairs], [b for _, b in pairs]


@dataclass(frozen=True)
class Bench:
    """One model measured on these cores, within these limits, its workers reading ``storage_url``."""

    model: ModelSpec
    storage_url: str
    threads: int
    cpus: list[int] | None            # pin workers here
    memory_limit_mb: float
    timeout_s: float                  # for each answer of a worker: ready, measured
    tolerance: float | None           # relative; default per dtype (TOLERANCES)
    rounds: int                       # interleaved rounds, at least
    round_measure: MeasureSettings    # one candidate in one round
    max_rounds: int = 0               # more rounds while ``until`` says undecided, up to this
    max_wait_s: float = 0.0           # for a quiet machine before each round (quiet.py)
    data: str | None = None           # the user's inputs (autotune.data)
    min_agreement: float = MIN_AGREEMENT
    metric: str | None = None         # the user's gate figure (autotune.data.load_metric)

    @property
    def cpus_used(self) -> list[int]:
        return sorted(self.cpus or os.sched_getaffinity(0))

    @functools.cached_property
    def gate(self) -> quiet.Gate:
        """Every measurement on this bench waits here for a quiet machine."""
        return quiet.Gate(self.cpus_used, self.max_wait_s, say=log.warning)

    @functools.cached_property
    def reference(self) -> str:
        """Where the eager float32 output of this model and input lives (a per-user cache)."""
        blob = json.dumps([self.model.to_dict(), torch.__version__, _model_sources_stamp(self.model)],
                          sort_keys=True)
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(cache, "ipex-autotune", "references",
                            hashlib.sha256(blob.encode()).hexdigest()[:16] + ".pt")

    def preflight(self, *, writes_store: bool = True) -> None:
        """Fail on a bad model, input shape or storage URL before any study or worker exists.
        A reader (``writes_store=False``: compare) checks the store without creating it, and says
        once when nothing was tuned there."""
        _, inputs = build(self.model, check=True)
        if self.data:
            data.load(self.data, inputs)
        if self.metric:
            data.load_metric(self.metric)
        with ConfigStore(self.storage_url, read_only=not writes_store) as store:
            if not writes_store and not store.has_tables():
                log.warning(f"the store {store.shown_url} holds no tuned configs: the lookup "
                            "applies the backend's defaults")

    def spec(self, candidate: dict | str, dtype: str = "float32") -> WorkerSpec:
        """A worker's task: knob values, or a baseline's kind, run in ``dtype``."""
        return WorkerSpec(model=self.model.to_dict(), candidate=candidate,
                          reference_path=self.reference, tolerance=self.tolerance or TOLERANCES[dtype],
                          threads=self.threads, env={"IPEX_AUTOTUNE_STORAGE": self.storage_url},
                          data=self.data, min_agreement=self.min_agreement, metric=self.metric)

    def start(self, spec: WorkerSpec, heartbeat: Callable[[], None] | None = None) -> WorkerProcess:
        return WorkerProcess(spec, memory_limit_mb=self.memory_limit_mb, heartbeat=heartbeat,
                             cpus=self.cpus)

    def ensure_reference(self) -> None:
        if os.path.exists(self.reference):
            return
        os.makedirs(os.path.dirname(self.reference), exist_ok=True)
        with self.start(self.spec(EAGER)) as worker:
            try:
                worker.wait_ready(self.timeout_s)
            except TrialFailure as failure:
                raise StudyError(f"the eager float32 reference run of {self.model.name} "
                                 f"failed ({failure.reason}); nothing can be checked against it") from None

    def measure_interleaved(self, candidates: dict[str, Candidate],
                            after_round: Callable[[], None] | None = None,
                            until: Callable[[dict[str, Candidate]], bool] | None = None,
                            rounds: tuple[int, int] | None = None) -> dict[str, Candidate]:
        """Each candidate compiled once in its own fresh process, then timed in rotating rounds
        so that drift on a shared machine hits all of them alike: the candidates again, each with
        its stats or its failure. ``after_round`` runs between rounds, for measurements that
        should share their drift. Past ``rounds`` (at least, at most; default the bench's),
        rounds go on up to the most while ``until`` of the candidates so far says the question
        is open."""
        workers: dict[str, WorkerProcess] = {}  # every live worker: killed on an error, closed after
        try:
            started = self._start_side_by_side(candidates, workers)
            return self._time_rounds(started, workers, after_round, until,
                                     rounds or (self.rounds, self.max_rounds))
        except BaseException:
            for worker in workers.values():
                worker.kill()
            raise
        finally:
            for worker in workers.values():
                worker.close()

    def _start_side_by_side(self, candidates: dict[str, Candidate],
                            workers: dict[str, WorkerProcess]) -> dict[str, Candidate]:
        """Nothing is timed until every candidate is ready, so they start side by side, one per
        core (the imports and most of a compile are single-threaded), as many as the memory limit
        allows. ``workers`` holds each worker from its start (so an error kills it) and, at the
        end, the ready ones; a candidate that failed to start carries why."""
        side_by_side = max(1, min(len(self.cpus or os.sched_getaffinity(0)),
                                  int(_available_mb() // self.memory_limit_mb)))
        started = dict(candidates)
        waiting, starting = list(candidates), []
        while waiting or starting:
            while waiting and _may_start_beside(candidates[waiting[0]],
                                                [candidates[n] for n in starting], side_by_side):
                name = waiting.pop(0)
                try:
                    workers[name] = self.start(self._spec_of(candidates[name]))
                    starting.append(name)
                except TrialFailure as failure:
                    started[name] = replace(started[name], failure=failure.reason)
            if not starting:
                continue
            name = starting.pop(0)
            try:
                ready = workers[name].wait_ready(self.timeout_s)
                started[name] = replace(started[name], graphs=tuple(ready.get("graphs", [])),
                                        accuracy=ready.get("accuracy"))
            except TrialFailure as failure:
                started[name] = replace(started[name], failure=failure.reason)
                workers.pop(name).close()
        return started

    def _spec_of(self, candidate: Candidate) -> WorkerSpec:
        if candidate.config is None:
            return self.spec(candidate.kind, candidate.dtype)
        return self.spec(candidate.config.to_dict(), candidate.config.dtype)

    def _time_rounds(self, candidates: dict[str, Candidate], workers: dict[str, WorkerProcess],
                     after_round: Callable[[], None] | None,
                     until: Callable[[dict[str, Candidate]], bool] | None,
                     at_least_most: tuple[int, int]) -> dict[str, Candidate]:
        """Every ready worker measured once a round, each round starting one further along; a
        round the machine was busy for counts for no candidate."""
        rounds = _Rounds(list(workers))
        first, most = at_least_most
        last = max(first, most if until else 0)
        while rounds.count < last and rounds.order:
            self.gate.wait()
            watch = self.gate.watch()
            measured = {}
            for name in rounds.rotation():
                try:
                    measured[name] = workers[name].measure(self.timeout_s, **self.round_measure.to_dict())
                except TrialFailure as failure:
                    rounds.fail(name, failure.reason)
            seen = watch.stop()  # a quiet round is a good round, however long the wait before
            busy = seen.busy
            if busy:
                log.warning(f"round {rounds.count + 1} measured on a busy machine "
                            f"({seen.describe(self.cpus_used)}): it decides nothing")
            rounds.add(measured, busy)
            if after_round:
                after_round()
            if rounds.count >= first and until and until(rounds.results(candidates)):
                break
        return rounds.results(candidates)


class _Rounds:
    """Interleaved rounds so far: each candidate's samples and per-round medians."""

    def __init__(self, names: list[str]):
        self.order = names
        self.names = list(names)
        self.count = 0
        self.samples: dict[str, list[float]] = {n: [] for n in names}
        self.quiet_samples: dict[str, list[float]] = {n: [] for n in names}
        self.medians: dict[str, list[float | None]] = {n: [] for n in names}
        self.failures: dict[str, str] = {}

    def rotation(self) -> list[str]:
        shift = self.count % max(1, len(self.order))
        return self.order[shift:] + self.order[:shift]

    def fail(self, name: str, reason: str) -> None:
        self.failures[name] = reason
        self.order.remove(name)

    def add(self, measured: dict[str, dict], busy: bool) -> None:
        for name in self.names:
            result = measured.get(name)
            if result is not None:
                self.samples[name] += result["samples"]
                if not busy:
                    self.quiet_samples[name] += result["samples"]
            self.medians[name].append(result["stats"]["median_ms"] if result and not busy else None)
        self.count += 1

    def results(self, candidates: dict[str, Candidate]) -> dict[str, Candidate]:
        timed = dict(candidates)
        for name in self.names:
            # the quiet rounds' samples; a busy machine's only when there were no quiet rounds
            samples = self.quiet_samples[name] or self.samples[name]
            measured = name in self.order and samples
            timed[name] = replace(candidates[name], round_medians=tuple(self.medians[name]),
                                  failure=self.failures.get(name),
                                  stats=Stats.of(samples) if measured else None,
                                  noisy=bool(measured) and not self.quiet_samples[name])
        return timed


def _may_start_beside(candidate: Candidate, starting: list[Candidate], side_by_side: int) -> bool:
    """A max-autotune config starts alone, since its compile times kernels to pick one."""
    def alone(cand: Candidate) -> bool:
        return cand.config is not None and cand.config.max_autotune

    return not starting or (len(starting) < side_by_side
                            and not any(alone(c) for c in [candidate, *starting]))


def _available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0  # unknown: one at a time


def _model_sources_stamp(spec: ModelSpec) -> list:
    """What can change the weights without changing the spec: versions and file timestamps,
    the builder's own among them (it decides how random weights are made)."""
    import torchvision

    stamp: list = [torchvision.__version__]
    paths = [spec.checkpoint, module_origin(spec), models.__file__]
    for path in filter(None, paths):
        try:
            info = os.stat(path)
            stamp.append([path, info.st_mtime_ns, info.st_size])
        except OSError:
            stamp.append([path, None])
    return stamp
