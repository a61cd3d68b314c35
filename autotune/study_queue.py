"""The study queue: a budget of trials queued once, taken one at a time by any number of tuners
on any hosts, kept alive by heartbeats and failed when their tuner dies; and the claims that let
one tuner of many queue the budget or confirm the result.

The only module that reaches into Optuna's internals: the study keeps its storage private, and
atomic claims and heartbeats need the storage API itself.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import sqlalchemy
from optuna.trial import TrialState

import torch

from backend.fingerprint import hardware_key
from backend.store import ConfigStore, masked_url, retry_creation_race

from . import trial_attrs as attrs
from .errors import StudyError
from .trial_attrs import LOST, FailureKind

log = logging.getLogger("autotune")

HEARTBEAT_INTERVAL_S = 10  # a running trial's tuner records a heartbeat this often...
GRACE_PERIOD_S = 60        # ...and its trial is failed as orphaned after this long without one
QUEUE_WAIT_S = 60          # how long a tuner joining a study waits for another to queue its trials


@dataclass(frozen=True)
class TrialCounts:
    total: int     # finished trials
    complete: int
    failed: int
    pruned: int


def tuner_id() -> str:
    """This tuner, as trials and claims name it: "host:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def make_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    """The search's sampler (benchmarks/tuner_quality.py replays it offline). The warm-start
    recipes are its startup trials: replayed on resnet50, more random ones only cost trials."""
    return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed,
                                      n_startup_trials=4, constant_liar=True)


# ------------------------------------------------------------------------------ opening
def open_study(storage_url: str, study_name: str, *, seed: int | None, hardware: dict,
               about: dict) -> optuna.Study:
    """The study, created on first use for ``hardware`` with ``about``'s attributes (model,
    dtypes); a tuner on other hardware is refused. Trials of dead tuners are failed at once."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # We drive heartbeats ourselves from the ask/tell loop, which optuna flags as unusual.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(study_name=study_name, storage=_open_storage(storage_url),
                                sampler=make_sampler(seed), direction="minimize", load_if_exists=True)
    hw_key = hardware_key(hardware)
    existing = study.user_attrs.get("hardware_key")
    if existing and existing != hw_key:
        raise StudyError(f"study {study.study_name!r} belongs to hardware {existing} "
                         f"({study.user_attrs.get('hardware')}), this worker is {hw_key} "
                         f"({hardware}); tune other hardware in its own study (--study-name)")
    tuned, asked = study.user_attrs.get("model"), about.get("model")
    if tuned and asked and tuned != asked:  # its trials, answers and claims are of another model
        raise StudyError(f"study {study.study_name!r} tunes {_model_text(tuned)}; this run asks for "
                         f"{_model_text(asked)}; tune it in its own study (--study-name)")
    then, now = study.user_attrs.get("inputs"), about.get("inputs")
    if then is not None and now is not None and then != now:  # older studies did not record them
        changed = "; ".join(f"{_INPUT_NAMES.get(k, k)} {_or_none(then.get(k))} then, "
                            f"{_or_none(now.get(k))} now"
                            for k in sorted({*then, *now}) if then.get(k) != now.get(k))
        raise StudyError(f"study {study.study_name!r} was tuned with other inputs ({changed}): its "
                         "trials and accuracy verdicts do not hold for this run; tune it in its own "
                         "study (--study-name)")
    if not existing:
        study.set_metric_names(["median latency (ms)"])
        study.set_user_attr("hardware_key", hw_key)
        study.set_user_attr("hardware", hardware)
        for key, value in about.items():
            study.set_user_attr(key, value)
        study.set_user_attr("torch_version", torch.__version__)
    fail_dead_trials(study)
    return study


_INPUT_NAMES = {"checkpoint": "--checkpoint contents", "data": "--data contents",
                "tolerance": "--tolerance", "min_agreement": "--min-agreement", "metric": "--metric",
                "randomized_layers": "zero-initialised layers given random values"}


def _or_none(value: Any) -> str:
    return "none" if value is None else str(value)


def _model_text(model: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in model.items() if v is not None)


def _open_storage(url: str) -> optuna.storages.RDBStorage:
    ConfigStore(url).close()  # validates the URL, creates our tables, sets WAL for SQLite
    try:
        storage = retry_creation_race(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=GRACE_PERIOD_S))
    except Exception as exc:  # optuna raises plain SQLAlchemy/ValueErrors for bad URLs
        raise StudyError(f"cannot open study storage {masked_url(url)!r}: {exc}") from None
    if storage.engine.dialect.name == "sqlite":
        _lock_sqlite_at_begin(storage.engine)
    return storage


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


def _storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


# ------------------------------------------------------------------------------ the budget
def fill_budget(study: optuna.Study, *, trials: int, warm_start: list[dict], storage_url: str) -> None:
    """Queue trials up to the budget, once per (study, budget) across all workers and hosts.

    Workers only take queued trials, so the study ends with exactly ``trials`` trials however
    many workers share it. Trials lost to an interrupted or killed tuner are not the config's
    fault: a rerun queues replacements for them. Warm start first: the params of ``warm_start``
    (the known-good recipes) lead the queue of a new study; ``{}`` lets the sampler pick.
    """
    lost = len([t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if t.user_attrs.get(attrs.FAILURE_KIND) in LOST])
    target = trials + lost
    missing = target - len(study.trials)
    if missing <= 0:
        return
    with ConfigStore(storage_url) as store:
        if not store.claim(f"budget:{study.study_name}:{trials}:{lost}", tuner_id()):
            # another tuner is queueing them right now: a search before it is done would
            # find nothing to take, and this tuner would end with "no trial completed"
            _wait_for_queue(study, target)
            return
    queue = warm_start if not study.trials else []
    for params in (queue + [{}] * missing)[:missing]:
        study.enqueue_trial(params)


def _wait_for_queue(study: optuna.Study, size: int) -> None:
    deadline = time.monotonic() + QUEUE_WAIT_S
    while len(study.get_trials(deepcopy=False)) < size and time.monotonic() < deadline:
        time.sleep(0.2)


def claim_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    """Atomically take the oldest WAITING trial (RUNNING is set by one process only), or None.
    Its first heartbeat is recorded at once: a tuner dying before its worker starts must still
    look stale."""
    storage = _storage_of(study)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):
                storage.record_heartbeat(frozen._trial_id)
                return optuna.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def heartbeat_of(study: optuna.Study, trial: optuna.Trial) -> Callable[[], None]:
    """Records that this tuner still runs ``trial`` (a worker calls it while it waits)."""
    storage, trial_id = _storage_of(study), trial._trial_id
    return lambda: storage.record_heartbeat(trial_id)


def count_trials(study: optuna.Study) -> TrialCounts:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return TrialCounts(total=len([s for s in states if s.is_finished()]),
                       complete=states.count(TrialState.COMPLETE),
                       failed=states.count(TrialState.FAIL), pruned=states.count(TrialState.PRUNED))


def wait_for_other_workers(study: optuna.Study) -> None:
    """Trials still running elsewhere (other jobs or hosts) finish, or are failed when dead."""
    said = False
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not said:
            log.warning("waiting for trials that other workers are running")
            said = True
        fail_dead_trials(study)
        time.sleep(2)


# ------------------------------------------------------------------------------ dead tuners
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
            if _fail_orphaned(storage, trial_id, f"{who} sent no heartbeat for over {GRACE_PERIOD_S} s: "
                                                 "it died during this trial, or its host did"):
                failed += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile, or another worker failed it first
    return failed


def fail_orphaned_trials(study: optuna.Study) -> int:
    """RUNNING trials whose tuner (on this host) is gone: fail them now rather than after the grace period."""
    host = socket.gethostname()
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = trial.user_attrs.get(attrs.TUNER, "").partition(":")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        failed += _fail_orphaned(_storage_of(study), trial._trial_id,
                                 f"the tuner (pid {pid}) died during this trial")
    return failed


def _fail_orphaned(storage: optuna.storages.BaseStorage, trial_id: int, reason: str) -> bool:
    """Failed as lost with its tuner: the kind and reason first, as a failed trial refuses them.
    False when another tuner of the study failed it first (both saw the same dead owner)."""
    try:
        storage.set_trial_user_attr(trial_id, attrs.FAILURE_KIND, FailureKind.ORPHANED)
        storage.set_trial_user_attr(trial_id, attrs.FAILURE_REASON, reason)
        return storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


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


# ------------------------------------------------------------------------------ confirmation
def claim_confirmation(storage_url: str, study_name: str, trials_total: int) -> str | None:
    """Take the confirmation of these trials for this tuner, since it (and the store write)
    happens once per study state, by one tuner. None when this tuner has it; else why not.
    The claim of a tuner that died on this host before it finished is taken over."""
    name = _confirmation_claim(study_name, trials_total)
    with ConfigStore(storage_url) as store:
        if store.claim(name, tuner_id()):
            return None
        owner = store.claim_owner(name) or "another tuner"
        if store.claim_owner(_confirmed(name)):
            return (f"these {trials_total} trials were confirmed by {owner}, its result stored: "
                    "nothing left to confirm (a larger --trials queues more trials)")
        if _died_here(owner) and store.take_over(name, owner, tuner_id()):
            return None
        return f"confirmation of these {trials_total} trials is run by {owner}; this worker stops here"


def confirmation_done(storage_url: str, study_name: str, trials_total: int) -> None:
    """Mark the confirmation finished: its claim outlives its tuner, and must not be taken over."""
    with ConfigStore(storage_url) as store:
        store.claim(_confirmed(_confirmation_claim(study_name, trials_total)), tuner_id())


def release_confirmation(storage_url: str, study_name: str, trials_total: int) -> None:
    """Give the claim back: this tuner did not finish the confirmation, a rerun may."""
    with ConfigStore(storage_url) as store:
        store.release(_confirmation_claim(study_name, trials_total))


def _died_here(owner: str) -> bool:
    """A tuner of this host ("host:pid") that no longer runs; one on another host cannot be told."""
    host, _, pid = owner.partition(":")
    return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _confirmed(claim: str) -> str:
    return f"{claim}:done"


def _confirmation_claim(study_name: str, trials_total: int) -> str:
    return f"confirm:{study_name}:{trials_total}"
