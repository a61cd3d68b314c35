"""The bench: candidates measured each in its own fresh worker process, checked against the eager
float32 reference, compiled side by side and timed in interleaved rounds. `autotune run` (its
trials and its confirmation) and `autotune compare` measure here; the statistics are in bench.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, replace
from typing import Callable

import torch

from backend import BackendConfig
from backend.store import ConfigStore

from .bench import MeasureSettings, Stats
from .errors import StudyError
from .models import ModelSpec, build, module_origin
from .worker import EAGER, TOLERANCES, TrialFailure, WorkerProcess, WorkerSpec


@dataclass(frozen=True)
class Candidate:
    name: str
    config: BackendConfig | None      # None: a baseline that is not a backend config
    stats: Stats | None = None
    graphs: tuple[dict, ...] = ()     # what the worker compiled: one record per graph
    failure: str | None = None
    kind: str = ""                    # for baselines: EAGER or TORCH_COMPILE_DEFAULT
    dtype: str = "float32"
    round_medians: tuple[float, ...] = ()  # one per interleaved round


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
    rounds: int                       # interleaved rounds
    round_measure: MeasureSettings    # one candidate in one round

    @functools.cached_property
    def reference(self) -> str:
        """Where the eager float32 output of this model and input lives (a per-user cache)."""
        blob = json.dumps([self.model.to_dict(), torch.__version__, _model_sources_stamp(self.model)],
                          sort_keys=True)
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return os.path.join(cache, "ipex-autotune", "references",
                            hashlib.sha256(blob.encode()).hexdigest()[:16] + ".pt")

    def preflight(self) -> None:
        """Fail on a bad model, input shape or storage URL before any study or worker exists."""
        build(self.model, check=True)
        ConfigStore(self.storage_url).close()

    def spec(self, candidate: dict | str, dtype: str = "float32") -> WorkerSpec:
        """A worker's task: knob values, or a baseline's kind, run in ``dtype``."""
        return WorkerSpec(model=self.model.to_dict(), candidate=candidate,
                          reference_path=self.reference, tolerance=self.tolerance or TOLERANCES[dtype],
                          threads=self.threads, env={"IPEX_AUTOTUNE_STORAGE": self.storage_url})

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
                            after_round: Callable[[], None] | None = None) -> dict[str, Candidate]:
        """Each candidate compiled once in its own fresh process, then timed in rotating rounds
        so that drift on a shared machine hits all of them alike: the candidates again, each with
        its stats or its failure. ``after_round`` runs between rounds, for measurements that
        should share their drift."""
        workers: dict[str, WorkerProcess] = {}  # every live worker: killed on an error, closed after
        try:
            started = self._start_side_by_side(candidates, workers)
            return self._time_rounds(started, workers, after_round)
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
                started[name] = replace(started[name], graphs=tuple(ready.get("graphs", [])))
            except TrialFailure as failure:
                started[name] = replace(started[name], failure=failure.reason)
                workers.pop(name).close()
        return started

    def _spec_of(self, candidate: Candidate) -> WorkerSpec:
        if candidate.config is None:
            return self.spec(candidate.kind, candidate.dtype)
        return self.spec(candidate.config.to_dict(), candidate.config.dtype)

    def _time_rounds(self, candidates: dict[str, Candidate], workers: dict[str, WorkerProcess],
                     after_round: Callable[[], None] | None) -> dict[str, Candidate]:
        """Every ready worker measured once a round, each round starting one further along."""
        samples: dict[str, list[float]] = {name: [] for name in workers}
        medians: dict[str, list[float]] = {name: [] for name in workers}
        failures: dict[str, str] = {}
        order = list(workers)
        for round_ in range(self.rounds):
            shift = round_ % max(1, len(order))
            for name in order[shift:] + order[:shift]:
                try:
                    measured = workers[name].measure(self.timeout_s, **self.round_measure.to_dict())
                    samples[name] += measured["samples"]
                    medians[name].append(measured["stats"]["median_ms"])
                except TrialFailure as failure:
                    failures[name] = failure.reason
                    order.remove(name)
            if after_round:
                after_round()
        timed = dict(candidates)
        for name in workers:
            timed[name] = replace(candidates[name], round_medians=tuple(medians[name]),
                                  failure=failures.get(name),
                                  stats=Stats.of(samples[name]) if name in order else None)
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
    """What can change the weights without changing the spec: versions and file timestamps."""
    import torchvision

    stamp: list = [torchvision.__version__]
    paths = [spec.checkpoint, module_origin(spec)]
    for path in filter(None, paths):
        try:
            info = os.stat(path)
            stamp.append([path, info.st_mtime_ns, info.st_size])
        except OSError:
            stamp.append([path, None])
    return stamp
