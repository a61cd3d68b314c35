"""The Optuna study: warm start, isolated trials, pruning, interleaved confirmation, store write."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import optuna
import sqlalchemy
from optuna.trial import TrialState

import torch

from backend import BackendConfig
from backend.fingerprint import hardware_info, hardware_key, usable_cores
from backend.store import ConfigStore, TunedRecord, default_storage_url, retry_creation_race

from . import trial_attrs as attrs
from . import zygote
from .bench import CONFIRM_MEASURE, MeasureSettings, Stats
from .errors import AutotuneError, StudyError
from .models import ModelSpec, build, module_origin
from .space import SearchSpace, load_space
from .trial_attrs import DETERMINISTIC, LOST, FailureKind
from .worker import (EAGER, PRUNE_RUNS, TOLERANCES, TORCH_COMPILE_DEFAULT, TrialFailure, WorkerProcess,
                     WorkerSpec)

log = logging.getLogger("autotune")

BACKEND_DEFAULT = "backend default"
BEST_STATIC = "best static recipe"
STATIC_RECIPE = "static recipe"
MIN_GAIN = 0.01  # a winner must beat the default's median by this much...


def _clearly_faster(a: "Candidate", b: "Candidate") -> bool:
    """...and be faster in every interleaved round: drift hits both alike within a round."""
    rounds = list(zip(a.round_medians, b.round_medians))
    return (a.stats.median_ms <= b.stats.median_ms * (1 - MIN_GAIN) and bool(rounds)
            and all(x < y for x, y in rounds))
HEARTBEAT_INTERVAL_S = 10  # a running trial's tuner records a heartbeat this often...
GRACE_PERIOD_S = 60        # ...and its trial is failed as orphaned after this long without one
QUEUE_WAIT_S = 60          # how long a tuner joining a study waits for another to queue its trials


@dataclass
class TuneRequest:
    model: ModelSpec
    dtypes: tuple[str, ...] = ("float32",)
    trials: int = 25
    timeout_s: float | None = 15 * 60       # search phase; confirmation comes after
    space: str = "default"
    storage: str | None = None
    study_name: str | None = None
    tolerance: float | None = None          # relative; default per dtype (TOLERANCES)
    seed: int | None = None
    trial_timeout_s: float = 600
    memory_limit_mb: float = 8192
    prune_ratio: float = 1.3                # a trial this much slower than the best after 5 runs stops
    confirm_top: int = 3
    confirm_rounds: int = 4
    measure: MeasureSettings = MeasureSettings()
    confirm_measure: MeasureSettings = CONFIRM_MEASURE
    cpus: list[int] | None = None           # pin workers here; threads default to their count
    jobs: int = 1                           # parallel workers on disjoint core slices
    store_winner: bool = True

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url()

    @property
    def threads(self) -> int:
        return len(self.cpus) if self.cpus else usable_cores()

    @property
    def hardware(self) -> dict:
        """The hardware a config is tuned for: this CPU with the cores one worker gets."""
        return hardware_info(cores=self.threads)

    def core_slices(self) -> list[list[int]]:
        """Disjoint, equal core sets, one per job."""
        cores = sorted(self.cpus or os.sched_getaffinity(0))
        if self.jobs < 1 or self.jobs > len(cores):
            raise StudyError(f"--jobs {self.jobs}: this process may use {len(cores)} core(s) "
                             f"({', '.join(map(str, cores))}); choose 1 to {len(cores)}")
        size = len(cores) // self.jobs
        return [cores[i * size:(i + 1) * size] for i in range(self.jobs)]

    def resolved_study_name(self) -> str:
        return self.study_name or f"{self.model.study_label}-{'+'.join(self.dtypes)}"


@dataclass
class Candidate:
    name: str
    config: BackendConfig | None      # None: a baseline that is not a backend config
    stats: Stats | None = None
    graphs: list = field(default_factory=list)
    failure: str | None = None
    kind: str = ""                    # for baselines: EAGER or TORCH_COMPILE_DEFAULT
    dtype: str = "float32"
    round_medians: list = field(default_factory=list)  # one per interleaved round


@dataclass
class TuneResult:
    study_name: str
    storage_url: str
    trials_total: int
    trials_complete: int
    trials_failed: int
    trials_pruned: int
    wall_s: float
    winner: Candidate | None
    candidates: dict[str, Candidate]
    kept_default: bool
    stored_ids: list[int]
    interrupted: bool
    message: str = ""
    deferred: bool = False  # another worker of the same study confirms and stores

    def speedup_over(self, name: str) -> float | None:
        base = self.candidates.get(name)
        if not (self.winner and self.winner.stats and base and base.stats):
            return None
        return base.stats.median_ms / self.winner.stats.median_ms


@dataclass
class Progress:
    done: int
    total: int
    best_ms: float | None
    default_ms: float | None
    elapsed_s: float
    left_s: float | None
    last: str


def _engine_kwargs(url: str) -> dict:
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def _lock_sqlite_at_begin(engine: sqlalchemy.Engine) -> None:
    """Take SQLite's write lock when a transaction starts, not at its first write.

    Optuna claims a WAITING trial by reading its state and then writing RUNNING. PostgreSQL
    locks the row (SELECT ... FOR UPDATE); SQLite ignores that, so two workers could both read
    WAITING and both run the trial. One writer at a time closes that gap. (SQLAlchemy's recipe:
    pysqlite must leave BEGIN to us.)
    """
    def no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    def begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(engine, "connect", no_implicit_begin)
    sqlalchemy.event.listen(engine, "begin", begin_immediate)
    engine.dispose()  # connections pooled before the listeners would begin the old way


def make_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    """The search's sampler (benchmarks/tuner_quality.py replays it offline). The warm-start
    recipes are its startup trials: replayed on resnet50, more random ones only cost trials."""
    return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed,
                                      n_startup_trials=4, constant_liar=True)


def open_study(request: TuneRequest) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # We drive heartbeats ourselves from the ask/tell loop, which optuna flags as unusual.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    url = request.storage_url
    ConfigStore(url).close()  # validates the URL, creates our tables, sets WAL for SQLite
    try:
        storage = retry_creation_race(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S))
    except Exception as exc:  # optuna raises plain SQLAlchemy/ValueErrors for bad URLs
        raise StudyError(f"cannot open study storage {url!r}: {exc}") from None
    if storage.engine.dialect.name == "sqlite":
        _lock_sqlite_at_begin(storage.engine)
    sampler = make_sampler(request.seed)
    study = optuna.create_study(study_name=request.resolved_study_name(), storage=storage,
                                sampler=sampler, direction="minimize", load_if_exists=True)
    hw_key = hardware_key(request.hardware)
    existing = study.user_attrs.get("hardware_key")
    if existing and existing != hw_key:
        raise StudyError(f"study {study.study_name!r} belongs to hardware {existing} "
                         f"({study.user_attrs.get('hardware')}), this worker is {hw_key} "
                         f"({request.hardware}); tune other hardware in its own study (--study-name)")
    if not existing:
        study.set_metric_names(["median latency (ms)"])
        study.set_user_attr("hardware_key", hw_key)
        study.set_user_attr("hardware", request.hardware)
        study.set_user_attr("model", request.model.to_dict())
        study.set_user_attr("dtypes", list(request.dtypes))
        study.set_user_attr("torch_version", torch.__version__)
    fail_dead_trials(study)
    return study


def _storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    # Study keeps its storage private; heartbeats and atomic claims need the storage API itself.
    return study._storage


def claim_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    """Atomically take the oldest WAITING trial (RUNNING is set by one process only), or None."""
    storage = _storage_of(study)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def fail_dead_trials(study: optuna.Study) -> None:
    fail_orphaned_trials(study)  # this host: the tuner's pid is gone (names the cause)
    fail_stale_trials(study)     # any host: no heartbeat within the grace period


def fail_stale_trials(study: optuna.Study) -> int:
    """RUNNING trials, of any host, whose tuner sent no heartbeat within the grace period:
    failed as ``orphaned`` (so a rerun replaces them), the reason naming the silent tuner.

    Staleness is optuna's own rule, the one ``optuna.storages.fail_stale_trials`` applies; that
    function fails the trial first, after which the storage refuses the failure's attributes,
    so here the kind and reason are written first and the trial is failed after them.
    """
    storage = _storage_of(study)
    if not getattr(storage, "get_heartbeat_interval", lambda: None)():
        return 0
    failed = 0
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        owner = storage.get_trial(trial_id).user_attrs.get(attrs.TUNER, "")
        host, _, pid = owner.partition(":")
        who = f"its tuner (pid {pid} on host {host})" if pid else "its tuner"
        try:
            storage.set_trial_user_attr(trial_id, attrs.FAILURE_KIND, FailureKind.ORPHANED)
            storage.set_trial_user_attr(trial_id, attrs.FAILURE_REASON,
                                        f"{who} sent no heartbeat for over {GRACE_PERIOD_S} s: "
                                        "it died during this trial, or its host did")
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                failed += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile, or another worker failed it first
    return failed


def _available_mb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0  # unknown: one at a time


def _tuner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    """A process that exists and has not exited: a killed tuner its parent has not reaped yet
    (a zombie) is dead, though signals still reach its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc to tell: signals reach it, so take it as alive


def fail_orphaned_trials(study: optuna.Study) -> int:
    """RUNNING trials whose tuner (on this host) is gone: fail them now rather than after the grace period."""
    host = socket.gethostname()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = trial.user_attrs.get(attrs.TUNER, "").partition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        storage = _storage_of(study)
        storage.set_trial_user_attr(trial._trial_id, attrs.FAILURE_KIND, FailureKind.ORPHANED)
        storage.set_trial_user_attr(trial._trial_id, attrs.FAILURE_REASON,
                                    f"the tuner (pid {pid}) died during this trial")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        failed += 1
    return failed


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


def _reference_path(request: TuneRequest) -> str:
    """Where the eager float32 output of this model and input lives (a per-user cache)."""
    blob = json.dumps([request.model.to_dict(), torch.__version__, _model_sources_stamp(request.model)],
                      sort_keys=True)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "ipex-autotune", "references",
                        hashlib.sha256(blob.encode()).hexdigest()[:16] + ".pt")


def _search_slice(request: TuneRequest, cpus: list[int]) -> bool:
    """A joblib worker: search on its own cores until the shared queue is empty."""
    request = dataclasses.replace(request, cpus=cpus, jobs=1)

    def progress(p: Progress) -> None:
        best = f"best {p.best_ms:.2f} ms" if p.best_ms else "best -"
        print(f"[cores {','.join(map(str, cpus))}] {p.done}/{p.total} trials | {best} | last: {p.last}",
              file=sys.stderr, flush=True)

    tuner = Tuner(request, progress)
    try:
        return tuner.search(open_study(request))
    finally:
        zygote.shutdown()  # joblib keeps this process for a while: its zygote need not stay


class Tuner:
    def __init__(self, request: TuneRequest, progress: Callable[[Progress], None] | None = None):
        slices = request.core_slices()  # also refuses --jobs 0 or below
        self.slices = slices if len(slices) > 1 else None
        if self.slices:
            # this process confirms on the first slice, as every trial ran on a slice that size
            request = dataclasses.replace(request, cpus=self.slices[0], jobs=1)
        self.request = request
        self.progress = progress or (lambda p: None)
        self.space: SearchSpace = load_space(request.space).restrict(
            cores=request.threads, dtypes=request.dtypes)
        self.reference = _reference_path(request)
        self._preflight_done = False

    def preflight(self) -> None:
        """Fail on a bad model, input shape or storage URL before any study or trial exists."""
        build(self.request.model, check=True)
        ConfigStore(self.request.storage_url).close()
        self._preflight_done = True

    # ------------------------------------------------------------------------------ candidates
    def _spec(self, candidate: dict | str, dtype: str = "float32") -> WorkerSpec:
        tol = self.request.tolerance or TOLERANCES[dtype]
        return WorkerSpec(model=self.request.model.to_dict(), candidate=candidate,
                          reference_path=self.reference, tolerance=tol,
                          threads=self.request.threads,
                          env={"IPEX_AUTOTUNE_STORAGE": self.request.storage_url})

    def _worker(self, spec: WorkerSpec, study: optuna.Study | None = None,
                trial_id: int | None = None) -> WorkerProcess:
        beat = None
        if study is not None and trial_id is not None:
            storage = _storage_of(study)
            beat = lambda: storage.record_heartbeat(trial_id)  # noqa: E731
        return WorkerProcess(spec, memory_limit_mb=self.request.memory_limit_mb, heartbeat=beat,
                             cpus=self.request.cpus)

    def ensure_reference(self) -> None:
        if os.path.exists(self.reference):
            return
        os.makedirs(os.path.dirname(self.reference), exist_ok=True)
        with self._worker(self._spec(EAGER)) as worker:
            try:
                worker.wait_ready(self.request.trial_timeout_s)
            except TrialFailure as failure:
                raise StudyError(f"the eager float32 reference run of {self.request.model.name} "
                                 f"failed ({failure.reason}); nothing can be checked against it") from None

    def default_config(self, dtype: str = "float32") -> BackendConfig:
        return BackendConfig({"threads": self.request.threads, "dtype": dtype})

    # ------------------------------------------------------------------------------ search
    def fill_budget(self, study: optuna.Study) -> None:
        """Queue trials up to the budget, once per (study, budget) across all workers and hosts.

        Workers only take queued trials, so the study ends with exactly ``trials`` trials however
        many workers share it. Trials lost to an interrupted or killed tuner are not the config's
        fault: a rerun queues replacements for them. Warm start first: the known-good recipes
        lead the queue.
        """
        request = self.request
        lost = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                    if t.user_attrs.get(attrs.FAILURE_KIND) in LOST])
        target = request.trials + lost
        missing = target - len(study.trials)
        if missing <= 0:
            return
        with ConfigStore(request.storage_url) as store:
            if not store.claim(f"budget:{study.study_name}:{request.trials}:{lost}", _tuner_id()):
                # another tuner is queueing them right now: a search before it is done would
                # find nothing to take, and this tuner would end with "no trial completed"
                deadline = time.monotonic() + QUEUE_WAIT_S
                while len(study.get_trials(deepcopy=False)) < target and time.monotonic() < deadline:
                    time.sleep(0.2)
                return
        queue = []
        if not study.trials:
            queue = [self.space.params_for(r) for r in self.space.static_recipes(request.dtypes)]
        queue = (queue + [{}] * missing)[:missing]  # {}: the sampler picks every knob
        for params in queue:
            study.enqueue_trial(params)

    def _run_trial(self, study: optuna.Study, trial: optuna.Trial, best_ms: float | None) -> str:
        trial.set_user_attr(attrs.TUNER, _tuner_id())
        try:
            config = BackendConfig(self.space.suggest(trial))
        except AutotuneError as exc:  # a sampled combination the knobs refuse: not a crash
            trial.set_user_attr(attrs.FAILURE_KIND, FailureKind.CONFIG)
            trial.set_user_attr(attrs.FAILURE_REASON, str(exc))
            study.tell(trial, state=TrialState.FAIL)
            return f"#{trial.number} invalid config"
        trial.set_user_attr(attrs.CONFIG, config.to_dict())
        trial.set_user_attr(attrs.CONFIG_ID, config.config_id)
        for previous in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if previous.user_attrs.get(attrs.CONFIG_ID) != config.config_id:
                continue
            if previous.state == TrialState.COMPLETE:
                trial.set_user_attr(attrs.DUPLICATE_OF, previous.number)
                study.tell(trial, previous.value)
                return f"#{trial.number} same config as #{previous.number}"
            if previous.user_attrs.get(attrs.FAILURE_KIND) in DETERMINISTIC:
                # the same config fails the same way: don't spend a process on it again
                trial.set_user_attr(attrs.DUPLICATE_OF, previous.number)
                for key in (attrs.FAILURE_KIND, attrs.FAILURE_REASON):
                    trial.set_user_attr(key, previous.user_attrs[key])
                study.tell(trial, state=TrialState.FAIL)
                return f"#{trial.number} same failing config as #{previous.number}"
        spec = self._spec(config.to_dict(), config.dtype)
        spec.env["AUTOTUNE_TRIAL_NUMBER"] = str(trial.number)
        worker = self._worker(spec, study, trial._trial_id)
        try:
            ready = worker.wait_ready(self.request.trial_timeout_s)
            prune_above = best_ms * self.request.prune_ratio if best_ms else None
            measured = worker.measure(self.request.trial_timeout_s, prune_above_ms=prune_above,
                                      **self.request.measure.to_dict())
        except TrialFailure as failure:
            trial.set_user_attr(attrs.FAILURE_KIND, failure.kind)
            trial.set_user_attr(attrs.FAILURE_REASON, failure.reason[:2000])
            trial.set_user_attr(attrs.PEAK_RSS_MB, round(worker.peak_rss_mb, 1))
            study.tell(trial, state=TrialState.FAIL)
            return f"#{trial.number} failed ({failure.kind})"
        except BaseException:
            worker.kill()
            trial.set_user_attr(attrs.FAILURE_KIND, FailureKind.INTERRUPTED)
            trial.set_user_attr(attrs.FAILURE_REASON, "the tuner was interrupted during this trial")
            study.tell(trial, state=TrialState.FAIL)
            raise
        finally:
            worker.close()
        stats = measured["stats"]
        for key in attrs.READY_KEYS:
            trial.set_user_attr(key, ready[key])
        for key, value in stats.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(attrs.PEAK_RSS_MB, round(max(worker.peak_rss_mb, measured["peak_rss_mb"]), 1))
        if measured["pruned"]:
            study.tell(trial, state=TrialState.PRUNED)
            return f"#{trial.number} pruned ({stats['median_ms']:.2f} ms after {PRUNE_RUNS} runs)"
        study.tell(trial, stats["median_ms"])
        return f"#{trial.number} {stats['median_ms']:.2f} ms"

    def search(self, study: optuna.Study) -> bool:
        """Take queued trials until none is left or time is up. True when interrupted (Ctrl-C)."""
        request = self.request
        start = time.monotonic()
        done_at_start = self._progress(study, start, None, "warm start").done
        last = "warm start"
        while request.timeout_s is None or time.monotonic() - start < request.timeout_s:
            fail_dead_trials(study)
            progress = self._progress(study, start, done_at_start, last)
            self.progress(progress)
            trial = claim_waiting_trial(study)
            if trial is None:
                break
            # beat at once: a tuner dying before its worker starts must still look stale
            _storage_of(study).record_heartbeat(trial._trial_id)
            try:
                last = self._run_trial(study, trial, progress.best_ms)
            except KeyboardInterrupt:
                return True
        final = self._progress(study, start, done_at_start, last)
        final.left_s = 0
        self.progress(final)
        return False

    def _progress(self, study: optuna.Study, start: float, done_at_start: int | None,
                  last: str) -> Progress:
        """Where the study stands, from one read of its trials."""
        trials = study.get_trials(deepcopy=False)
        # a trial lost with a killed tuner is replaced, so it does not count against the budget
        done = len([t for t in trials if t.state.is_finished() and not (
            t.state == TrialState.FAIL and t.user_attrs.get(attrs.FAILURE_KIND) in LOST)])
        total = max(self.request.trials, done)  # a rerun may ask for fewer than the study has
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        default_id = self.default_config().config_id
        default_ms = next((t.value for t in complete
                           if t.user_attrs.get(attrs.CONFIG_ID) == default_id), None)
        best_ms = min((t.value for t in complete), default=None)
        elapsed = time.monotonic() - start
        left = None
        if done_at_start is not None and done > done_at_start:
            left = elapsed / (done - done_at_start) * (total - done)
            if self.request.timeout_s is not None:
                left = min(left, self.request.timeout_s - elapsed)
            left = max(0.0, left)
        return Progress(done, total, best_ms, default_ms, elapsed, left, last)

    # ------------------------------------------------------------------------------ confirmation
    def confirm(self, study: optuna.Study) -> dict[str, Candidate]:
        """Top configs and baselines, each in its own fresh process, measured in interleaved rounds."""
        request = self.request
        candidates: dict[str, Candidate] = {}
        seen = set()
        default_id = self.default_config().config_id  # measured once, as the backend default
        complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                          key=lambda t: t.value)
        for t in complete:
            cid = t.user_attrs.get(attrs.CONFIG_ID)
            if cid in seen or cid == default_id:
                continue
            seen.add(cid)
            candidates[f"trial #{t.number}"] = Candidate(f"trial #{t.number}",
                                                         BackendConfig(t.user_attrs[attrs.CONFIG]))
            if len(candidates) == request.confirm_top:
                break
        # every warm-start recipe, also one a noisy search-phase run pruned: the winner must be
        # at least as fast as each of them in the same interleaved rounds
        recipe_ids = {BackendConfig(r).config_id for r in self.space.static_recipes(request.dtypes)}
        statics: list[str] = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            cid = t.user_attrs.get(attrs.CONFIG_ID)
            if cid not in recipe_ids or cid == default_id or cid in statics:
                continue
            statics.append(cid)
            top = next((n for n, c in candidates.items() if c.config.config_id == cid), None)
            cand = candidates.pop(top) if top else Candidate("", BackendConfig(t.user_attrs[attrs.CONFIG]))
            cand.name = f"{STATIC_RECIPE} (trial #{t.number})"
            candidates[cand.name] = cand
        candidates[BACKEND_DEFAULT] = Candidate(BACKEND_DEFAULT, self.default_config())
        candidates[TORCH_COMPILE_DEFAULT] = Candidate(TORCH_COMPILE_DEFAULT, None, kind=TORCH_COMPILE_DEFAULT)
        candidates[EAGER] = Candidate(EAGER, None, kind=EAGER)

        self.measure_interleaved(candidates)
        measured = [c for c in candidates.values() if c.name.startswith(STATIC_RECIPE) and c.stats]
        if measured:  # the fastest recipe is the one to beat
            best = min(measured, key=lambda c: c.stats.median_ms)
            best.name = best.name.replace(STATIC_RECIPE, BEST_STATIC, 1)
            candidates = {c.name: c for c in candidates.values()}
        return candidates

    def measure_interleaved(self, candidates: dict[str, Candidate],
                            after_round: Callable[[], None] | None = None) -> None:
        """Each candidate compiled once in its own fresh process, then timed in rotating rounds
        so that drift on a shared machine hits all of them alike. Fills stats or failure.
        ``after_round`` runs between rounds, for measurements that should share their drift.

        Nothing is timed until every candidate is ready, so they start side by side, one per core
        (the imports and most of a compile are single-threaded), as many as the memory limit
        allows; a max-autotune config starts alone, since its compile times kernels to pick one."""
        request = self.request
        workers: dict[str, WorkerProcess] = {}
        starting: dict[str, WorkerProcess] = {}
        waiting = list(candidates.items())
        side_by_side = max(1, min(len(request.cpus or os.sched_getaffinity(0)),
                                  int(_available_mb() // request.memory_limit_mb)))

        def alone(cand: Candidate) -> bool:
            return cand.config is not None and cand.config.max_autotune

        try:
            while waiting or starting:
                while waiting and len(starting) < side_by_side and not (
                        starting and (alone(waiting[0][1]) or any(alone(candidates[n]) for n in starting))):
                    name, cand = waiting.pop(0)
                    kind = cand.config.to_dict() if cand.config is not None else cand.kind
                    dtype = cand.config.dtype if cand.config is not None else cand.dtype
                    try:
                        starting[name] = self._worker(self._spec(kind, dtype))
                    except TrialFailure as failure:
                        cand.failure = failure.reason
                if not starting:
                    continue
                name = next(iter(starting))  # in starting until ready: an interrupt kills it
                try:
                    ready = starting[name].wait_ready(request.trial_timeout_s)
                    candidates[name].graphs = ready.get("graphs", [])
                    workers[name] = starting.pop(name)
                except TrialFailure as failure:
                    candidates[name].failure = failure.reason
                    starting.pop(name).close()
            samples: dict[str, list[float]] = {name: [] for name in workers}
            order = list(workers)
            for round_ in range(request.confirm_rounds):
                shift = round_ % max(1, len(order))
                for name in order[shift:] + order[:shift]:
                    try:
                        measured = workers[name].measure(request.trial_timeout_s,
                                                         **request.confirm_measure.to_dict())
                        samples[name] += measured["samples"]
                        candidates[name].round_medians.append(measured["stats"]["median_ms"])
                    except TrialFailure as failure:
                        candidates[name].failure = failure.reason
                        order.remove(name)
                if after_round:
                    after_round()
            for name in order:
                candidates[name].stats = Stats.of(samples[name])
        except BaseException:
            for worker in [*starting.values(), *workers.values()]:
                worker.kill()
            raise
        finally:
            for worker in [*starting.values(), *workers.values()]:
                worker.close()

    # ------------------------------------------------------------------------------ the whole job
    def run(self) -> TuneResult:
        start = time.monotonic()
        request = self.request
        if not self._preflight_done:
            self.preflight()
        study = open_study(request)
        self.ensure_reference()
        self.fill_budget(study)
        interrupted = self._search_slices() if self.slices else self.search(study)
        result = TuneResult(study.study_name, request.storage_url, 0, 0, 0, 0, 0.0, None, {},
                            False, [], interrupted)
        self._wait_for_other_workers(study)
        self._count(study, result)
        if not result.trials_complete:
            result.message = "no trial completed: nothing to confirm or store"
        elif not self._claim_confirmation(study, result):
            pass  # another worker confirms; result.message says who
        else:
            try:
                result.candidates = self.confirm(study)
                self._choose_winner(result)
                if result.winner and request.store_winner:
                    result.stored_ids = self._store(study, result)
            except BaseException as exc:
                with ConfigStore(request.storage_url) as store:  # let a rerun confirm
                    store.release(self._confirm_claim(result))
                if not isinstance(exc, KeyboardInterrupt):
                    raise
                result.message = "interrupted during confirmation: nothing stored; rerun to resume"
                result.interrupted = True
        result.wall_s = time.monotonic() - start
        return result

    @staticmethod
    def _count(study: optuna.Study, result: TuneResult) -> None:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        result.trials_total = len([s for s in states if s.is_finished()])
        result.trials_complete = states.count(TrialState.COMPLETE)
        result.trials_failed = states.count(TrialState.FAIL)
        result.trials_pruned = states.count(TrialState.PRUNED)

    def _search_slices(self) -> bool:
        """One joblib worker per core slice, all taking trials from the same study."""
        from joblib import Parallel, delayed

        try:
            interrupted = Parallel(n_jobs=len(self.slices), backend="loky")(
                delayed(_search_slice)(self.request, cpus) for cpus in self.slices)
        except KeyboardInterrupt:
            return True
        except Exception as exc:  # a worker died (e.g. killed): the others' trials are stored
            log.warning("a parallel worker stopped: %s", exc)
            return False
        return any(interrupted)

    def _wait_for_other_workers(self, study: optuna.Study) -> None:
        """Trials still running elsewhere (other jobs or hosts) finish, or are failed when dead."""
        said = False
        while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not said:
                log.warning("waiting for trials that other workers are running")
                said = True
            fail_dead_trials(study)
            time.sleep(2)

    @staticmethod
    def _confirm_claim(result: TuneResult) -> str:
        return f"confirm:{result.study_name}:{result.trials_total}"

    def _claim_confirmation(self, study: optuna.Study, result: TuneResult) -> bool:
        """Confirmation (and the store write) happens once per study state, by one worker."""
        name = self._confirm_claim(result)
        with ConfigStore(self.request.storage_url) as store:
            if store.claim(name, _tuner_id()):
                return True
            result.message = (f"confirmation of these {result.trials_total} trials is run by "
                              f"{store.claim_owner(name)}; this worker stops here")
            result.deferred = True
        return False

    def _choose_winner(self, result: TuneResult) -> None:
        tuned = [c for n, c in result.candidates.items()
                 if c.stats and c.config is not None]
        if not tuned:
            result.message = "every candidate failed in confirmation: nothing stored"
            return
        best = min(tuned, key=lambda c: c.stats.median_ms)
        default = result.candidates[BACKEND_DEFAULT]
        if best.config == default.config:
            best = default  # two processes of one config: their difference is noise, not a gain
        if best is not default and default.stats and not _clearly_faster(best, default):
            result.kept_default = True
            result.message = ("no config beat the backend default clearly (by at least "
                              f"{100 * MIN_GAIN:.0f}% and in every interleaved round): storing the default")
            best = default
        result.winner = best

    def _store(self, study: optuna.Study, result: TuneResult) -> list[int]:
        winner = result.winner
        baselines = {n: c.stats.to_dict() for n, c in result.candidates.items() if c.stats}
        default = result.candidates[BACKEND_DEFAULT]
        speedup = 1.0  # the default over itself, by definition; else a ratio of one confirmation
        if default.stats and winner.config != default.config:
            speedup = default.stats.median_ms / winner.stats.median_ms
        study.set_user_attr("winner", {"candidate": winner.name, "config": winner.config.to_dict(),
                                       "stats": winner.stats.to_dict(), "baselines": baselines,
                                       "kept_default": result.kept_default})
        store = ConfigStore(result.storage_url)
        ids = []
        try:
            for graph in winner.graphs or [{"workload_key": None}]:
                if not graph.get("workload_key"):
                    continue
                # what this graph ran: a fallback (e.g. oneDNN Graph failed) is stored as such,
                # so the lookup does not fail the same way in every process
                applied = BackendConfig(graph["config"]) if graph.get("config") else winner.config
                if applied != winner.config:
                    log.warning("graph %s compiled with %s instead of %s (a fallback); storing "
                                "what it ran", graph["workload_key"], applied.config_id,
                                winner.config.config_id)
                ids.append(store.put(TunedRecord(
                    workload_key=graph["workload_key"], hardware_key=hardware_key(self.request.hardware),
                    family_key=graph.get("family_key", ""), batch_size=graph.get("batch_size"),
                    model_label=self.request.model.name, config=applied.to_dict(),
                    config_id=applied.config_id, latency=winner.stats.to_dict(),
                    baselines=baselines, speedup=speedup, torch_version=torch.__version__,
                    study_name=study.study_name, hardware=self.request.hardware)))
        finally:
            store.close()
        return ids
