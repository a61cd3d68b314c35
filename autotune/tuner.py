"""The tuning job: the request, the search loop that runs the study queue's trials on the bench,
and `Tuner.run()`, which ties the study queue, the bench and the confirmation together."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from backend import BackendConfig
from backend.fingerprint import hardware_info, usable_cores
from backend.store import default_storage_url

from . import quiet, study_queue
from . import trial_attrs as attrs
from . import zygote
from .bench import CONFIRM_MEASURE, MeasureSettings
from .confirmation import SELECTION_ROUNDS, Outcome, choose_winner, confirm, store_winner
from .errors import AutotuneError, StudyError
from .evidence import FASTER, MAX_ROUNDS, MIN_ROUNDS
from .models import ModelSpec, randomized_layers
from .space import SearchSpace, load_space
from .trial_attrs import DETERMINISTIC, LOST, FailureKind
from .workbench import Bench, Candidate
from .worker import MIN_AGREEMENT, PRUNE_RUNS, TrialFailure

log = logging.getLogger("autotune")

# A trial whose timed runs spread wider than this (IQR over median) is measured again; still so,
# it is kept with a mark, but neither prunes other trials nor is printed as a speedup.
MAX_TRIAL_SPREAD = 0.25


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
    confirm_rounds: int = MIN_ROUNDS        # at least; more until the winner is decided...
    confirm_max_rounds: int = MAX_ROUNDS    # ...up to this many
    selection_rounds: int = SELECTION_ROUNDS  # that pick the config to test, before those rounds
    max_wait_s: float = 180                 # for a quiet machine before a measurement (quiet.py)
    measure: MeasureSettings = MeasureSettings()
    confirm_measure: MeasureSettings = CONFIRM_MEASURE
    cpus: list[int] | None = None           # pin workers here; threads default to their count
    jobs: int = 1                           # parallel workers on disjoint core slices
    store_winner: bool = True
    data: str | None = None                 # the user's inputs: int8 calibration, accuracy gate
    min_agreement: float = MIN_AGREEMENT    # top-1 agreement with float32 a reduced dtype keeps
    metric: str | None = None               # the user's own gate figure instead (module:callable)

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

    def default_config(self, dtype: str = "float32") -> BackendConfig:
        """The backend default on this request's threads: what a tuned config must beat."""
        return BackendConfig({"threads": self.threads, "dtype": dtype})

    def bench(self) -> Bench:
        """Where this request's candidates are measured; its rounds are the confirmation's."""
        return Bench(model=self.model, storage_url=self.storage_url, threads=self.threads,
                     cpus=self.cpus, memory_limit_mb=self.memory_limit_mb,
                     timeout_s=self.trial_timeout_s, tolerance=self.tolerance,
                     rounds=self.confirm_rounds, round_measure=self.confirm_measure,
                     max_rounds=self.confirm_max_rounds, max_wait_s=self.max_wait_s,
                     data=self.data, min_agreement=self.min_agreement, metric=self.metric)


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    storage_url: str
    trials_total: int
    trials_complete: int
    trials_failed: int
    trials_pruned: int
    wall_s: float
    interrupted: bool
    candidates: dict[str, Candidate] = field(default_factory=dict)
    winner: Candidate | None = None
    kept_default: bool = False
    stored_ids: tuple[int, ...] = ()
    message: str = ""
    deferred: bool = False  # another worker of the same study confirms and stores
    selection: dict[str, Candidate] = field(default_factory=dict)  # the rounds that picked the leader
    shown_faster: bool = False  # the test showed the winner faster than the backend default

    def speedup_over(self, name: str) -> float | None:
        base = self.candidates.get(name)
        if not (self.winner and self.winner.stats and base and base.stats):
            return None
        return base.stats.median_ms / self.winner.stats.median_ms


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    best_ms: float | None
    default_ms: float | None
    elapsed_s: float
    left_s: float | None
    last: str


def open_study(request: TuneRequest) -> optuna.Study:
    """The request's study in the study queue, created on first use."""
    return study_queue.open_study(request.storage_url, request.resolved_study_name(),
                                  seed=request.seed, hardware=request.hardware,
                                  about={"model": request.model.to_dict(), "dtypes": list(request.dtypes),
                                         "inputs": _trial_inputs(request)})


def _trial_inputs(request: TuneRequest) -> dict[str, Any]:
    """What decides a trial's outcome besides its config and the model: a rerun that changes any
    of it is another study, or the old trials and gate failures would stand for new ones."""
    inputs = {"checkpoint": _file_digest(request.model.checkpoint), "data": _file_digest(request.data),
              "tolerance": request.tolerance, "min_agreement": request.min_agreement,
              "metric": request.metric}
    randomized = randomized_layers(request.model)
    if randomized:  # absent otherwise: studies from before this key still resume
        inputs["randomized_layers"] = randomized
    return inputs


def _file_digest(given: str | None) -> str | None:
    """A file's contents' digest: the same path may hold other weights or inputs by the next run.
    Anything else (module:callable data, a missing file the run refuses later) as given."""
    if given is None or not os.path.isfile(given):
        return given
    digest = hashlib.sha256()
    try:
        with open(given, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return given
    return "sha256:" + digest.hexdigest()[:16]


def _search_slice(request: TuneRequest, cpus: list[int]) -> bool:
    """A joblib worker: search on its own cores until the shared queue is empty."""
    request = replace(request, cpus=cpus, jobs=1)

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
    def __init__(self, request: TuneRequest, progress: Callable[[Progress], None] | None = None,
                 say: Callable[[str], None] | None = None):
        slices = request.core_slices()  # also refuses --jobs 0 or below
        self.slices = slices if len(slices) > 1 else None
        if self.slices:
            # this process confirms on the first slice, as every trial ran on a slice that size
            request = replace(request, cpus=self.slices[0], jobs=1)
        self.request = request
        self.progress = progress or (lambda p: None)
        self.say = say or (lambda text: None)  # what the tuner is doing, between progress lines
        self.space: SearchSpace = load_space(request.space).restrict(
            cores=request.threads, dtypes=request.dtypes)
        self.bench = request.bench()
        self._preflight_done = False

    def preflight(self) -> None:
        """Fail on a bad model, input shape or storage URL before any study or trial exists."""
        self.bench.preflight()
        self._preflight_done = True

    # ------------------------------------------------------------------------------ the whole job
    def run(self) -> TuneResult:
        start = time.monotonic()
        request = self.request
        if not self._preflight_done:
            self.preflight()
        study = open_study(request)
        self.bench.ensure_reference()
        self.fill_budget(study)
        interrupted = self._search_slices() if self.slices else self.search(study)
        study_queue.wait_for_other_workers(study)
        counts = study_queue.count_trials(study)
        if not counts.complete:
            outcome = Outcome(message="no trial completed: nothing to confirm or store"
                              + _noisy_note(study))
        elif why_not := study_queue.claim_confirmation(request.storage_url, study.study_name, counts.total):
            outcome = Outcome(deferred=True, message=why_not)
        else:
            outcome = self._confirm_and_store(study, counts.total)
        return TuneResult(
            study_name=study.study_name, storage_url=request.storage_url,
            trials_total=counts.total, trials_complete=counts.complete,
            trials_failed=counts.failed, trials_pruned=counts.pruned,
            wall_s=time.monotonic() - start, interrupted=interrupted or outcome.interrupted,
            candidates=outcome.candidates, winner=outcome.winner, kept_default=outcome.kept_default,
            stored_ids=outcome.stored_ids, message=outcome.message, deferred=outcome.deferred,
            selection=outcome.selection,
            shown_faster=bool(outcome.verdict) and outcome.verdict.outcome == FASTER)

    def _confirm_and_store(self, study: optuna.Study, trials_total: int) -> Outcome:
        """Confirm, choose and store under this tuner's confirmation claim; one that did not
        finish gives the claim back, so that a rerun confirms."""
        request = self.request
        outcome = Outcome()
        try:
            confirmed = confirm(study, self.bench, top=request.confirm_top,
                                default=request.default_config(),
                                recipes=self.space.static_recipes(request.dtypes),
                                selection_rounds=request.selection_rounds, say=self.say)
            outcome = choose_winner(confirmed.test, confirmed.leader, confirmed.selection, confirmed.other)
            if outcome.winner and request.store_winner:
                outcome = replace(outcome, stored_ids=store_winner(
                    study, outcome, storage_url=request.storage_url, hardware=request.hardware,
                    model_label=request.model.name))
            study_queue.confirmation_done(request.storage_url, study.study_name, trials_total)
            return outcome
        except BaseException as exc:
            study_queue.release_confirmation(request.storage_url, study.study_name, trials_total)
            if not isinstance(exc, KeyboardInterrupt):
                raise
            return replace(outcome, interrupted=True,
                           message="interrupted during confirmation: nothing stored; rerun to resume")

    # ------------------------------------------------------------------------------ search
    def fill_budget(self, study: optuna.Study) -> None:
        """This request's budget in the study queue, the warm-start recipes first."""
        warm_start = [self.space.params_for(r) for r in self.space.static_recipes(self.request.dtypes)]
        study_queue.fill_budget(study, trials=self.request.trials, warm_start=warm_start,
                                storage_url=self.request.storage_url)

    def search(self, study: optuna.Study) -> bool:
        """Take queued trials until none is left or time is up. True when interrupted (Ctrl-C)."""
        request = self.request
        start = time.monotonic()
        done_at_start = self._progress(study, start, None, "warm start").done
        last = "warm start"
        while request.timeout_s is None or time.monotonic() - start < request.timeout_s:
            study_queue.fail_dead_trials(study)
            progress = self._progress(study, start, done_at_start, last)
            self.progress(progress)
            trial = study_queue.claim_waiting_trial(study)
            if trial is None:
                break
            try:
                last = self._run_trial(study, trial, progress.best_ms)
            except KeyboardInterrupt:
                return True
        self.progress(replace(self._progress(study, start, done_at_start, last), left_s=0))
        return False

    def _run_trial(self, study: optuna.Study, trial: optuna.Trial, best_ms: float | None) -> str:
        """One claimed trial: its config sampled, then answered by an earlier trial of the same
        config or measured in its own worker. Returns what happened, for the progress line."""
        trial.set_user_attr(attrs.TUNER, study_queue.tuner_id())
        try:
            config = BackendConfig(self.space.suggest(trial))
        except AutotuneError as exc:  # a sampled combination the knobs refuse: not a crash
            _fail(study, trial, FailureKind.CONFIG, str(exc))
            return f"#{trial.number} invalid config"
        trial.set_user_attr(attrs.CONFIG, config.to_dict())
        trial.set_user_attr(attrs.CONFIG_ID, config.config_id)
        return (_answer_from_earlier(study, trial, config)
                or self._measure_trial(study, trial, config, best_ms))

    def _measure_trial(self, study: optuna.Study, trial: optuna.Trial, config: BackendConfig,
                       best_ms: float | None) -> str:
        spec = self.bench.spec(config.to_dict(), config.dtype)
        spec.env["AUTOTUNE_TRIAL_NUMBER"] = str(trial.number)
        worker = self.bench.start(spec, heartbeat=study_queue.heartbeat_of(study, trial))
        try:
            ready = worker.wait_ready(self.request.trial_timeout_s)
            prune_above = best_ms * self.request.prune_ratio if best_ms else None
            measured, seen = self._measure_on_quiet(worker, prune_above,
                                                    study_queue.heartbeat_of(study, trial))
        except TrialFailure as failure:
            trial.set_user_attr(attrs.PEAK_RSS_MB, round(worker.peak_rss_mb, 1))
            _fail(study, trial, failure.kind, failure.reason[:2000])
            return f"#{trial.number} failed ({failure.kind})"
        except BaseException:
            worker.kill()
            _fail(study, trial, FailureKind.INTERRUPTED, "the tuner was interrupted during this trial")
            raise
        finally:
            worker.close()
        trial.set_user_attr(attrs.INTERFERENCE, seen.to_dict())
        if seen.busy:
            trial.set_user_attr(attrs.PEAK_RSS_MB, round(max(worker.peak_rss_mb, measured["peak_rss_mb"]), 1))
            for key, value in measured["stats"].items():
                trial.set_user_attr(key, value)
            _fail(study, trial, FailureKind.NOISY, f"measured twice on a busy machine "
                  f"({seen.describe(self.bench.cpus_used)}); a rerun queues a trial in its place")
            return f"#{trial.number} noisy: not counted"
        spread = _too_spread(measured)
        if spread is not None:  # a number the sampler may see, but no bar to prune others by
            trial.set_user_attr(attrs.TOO_SPREAD, round(spread, 3))
        told = _tell_measured(study, trial, ready, measured,
                              peak_rss_mb=max(worker.peak_rss_mb, measured["peak_rss_mb"]))
        return told + (f" (IQR {100 * spread:.0f}%: not a number to prune by)" if spread is not None else "")

    def _measure_on_quiet(self, worker, prune_above: float | None,
                          heartbeat: Callable[[], None]) -> tuple[dict, quiet.Interference]:
        """A trial's timing on a quiet machine, waited for; one taken on a busy machine (which
        could prune a good config), or spread too widely to be a number, is taken again,
        unpruned. Returns it and what else ran."""
        for attempt in range(2):
            before = self.bench.gate.wait(on_look=heartbeat)
            watch = self.bench.gate.watch()
            measured = worker.measure(self.request.trial_timeout_s,
                                      prune_above_ms=None if before.busy or attempt else prune_above,
                                      **self.request.measure.to_dict())
            seen = watch.stop()  # a quiet window is a good number, however long the wait before
            spread = _too_spread(measured)
            if not seen.busy and spread is None:
                break
            again = "; measuring it again" if not attempt else ""
            why = (f"on a busy machine ({seen.describe(self.bench.cpus_used)})" if seen.busy
                   else f"with an IQR of {100 * spread:.0f}% of its median")
            log.warning(f"trial measured {why}{again}")
        return measured, seen

    def _progress(self, study: optuna.Study, start: float, done_at_start: int | None,
                  last: str) -> Progress:
        """Where the study stands, from one read of its trials."""
        trials = study.get_trials(deepcopy=False)
        # a trial lost with a killed tuner is replaced, so it does not count against the budget
        done = len([t for t in trials if t.state.is_finished() and not (
            t.state == TrialState.FAIL and t.user_attrs.get(attrs.FAILURE_KIND) in LOST)])
        total = max(self.request.trials, done)  # a rerun may ask for fewer than the study has
        # a timing spread too widely to be a number is no bar and no baseline
        complete = [t for t in trials if t.state == TrialState.COMPLETE and attrs.TOO_SPREAD not in t.user_attrs]
        default_id = self.request.default_config().config_id
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
        return Progress(done=done, total=total, best_ms=best_ms, default_ms=default_ms,
                        elapsed_s=elapsed, left_s=left, last=last)

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


def _answer_from_earlier(study: optuna.Study, trial: optuna.Trial, config: BackendConfig) -> str | None:
    """A config tried before is not run again: told the earlier value, or failed again when it
    failed the way the same config always does. None: the config is new."""
    for previous in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if previous.user_attrs.get(attrs.CONFIG_ID) != config.config_id:
            continue
        if previous.state == TrialState.COMPLETE:
            trial.set_user_attr(attrs.DUPLICATE_OF, previous.number)
            if attrs.TOO_SPREAD in previous.user_attrs:
                trial.set_user_attr(attrs.TOO_SPREAD, previous.user_attrs[attrs.TOO_SPREAD])
            study.tell(trial, previous.value)
            return f"#{trial.number} same config as #{previous.number}"
        if previous.user_attrs.get(attrs.FAILURE_KIND) in DETERMINISTIC:
            trial.set_user_attr(attrs.DUPLICATE_OF, previous.number)
            _fail(study, trial, previous.user_attrs[attrs.FAILURE_KIND],
                  previous.user_attrs[attrs.FAILURE_REASON])
            return f"#{trial.number} same failing config as #{previous.number}"
    return None


def _tell_measured(study: optuna.Study, trial: optuna.Trial, ready: dict, measured: dict, *,
                   peak_rss_mb: float) -> str:
    """What the worker reported, then its median; or pruned, when it was slow from the start."""
    stats = measured["stats"]
    for key in attrs.READY_KEYS:
        trial.set_user_attr(key, ready[key])
    if "accuracy" in ready:
        trial.set_user_attr(attrs.ACCURACY_FIGURES, ready["accuracy"])
    for key, value in stats.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(attrs.PEAK_RSS_MB, round(peak_rss_mb, 1))
    if measured["pruned"]:
        study.tell(trial, state=TrialState.PRUNED)
        return f"#{trial.number} pruned ({stats['median_ms']:.2f} ms after {PRUNE_RUNS} runs)"
    study.tell(trial, stats["median_ms"])
    return f"#{trial.number} {stats['median_ms']:.2f} ms"


def _too_spread(measured: dict) -> float | None:
    """The relative IQR of a full measurement above MAX_TRIAL_SPREAD, else None (a pruned one
    stopped after too few runs to tell)."""
    stats = measured["stats"]
    spread = stats["iqr_ms"] / stats["median_ms"] if stats["median_ms"] else 0.0
    return spread if not measured["pruned"] and spread > MAX_TRIAL_SPREAD else None


def _noisy_note(study: optuna.Study) -> str:
    noisy = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
             if t.user_attrs.get(attrs.FAILURE_KIND) == FailureKind.NOISY]
    return (f" ({len(noisy)} trial(s) were measured on a busy machine: rerun on a quieter one, "
            "which queues trials in their place)") if noisy else ""


def _fail(study: optuna.Study, trial: optuna.Trial, kind: FailureKind | str, reason: str) -> None:
    trial.set_user_attr(attrs.FAILURE_KIND, kind)
    trial.set_user_attr(attrs.FAILURE_REASON, reason)
    study.tell(trial, state=TrialState.FAIL)
