"""The confirmation: the study's best configs and every warm-start recipe it ran, measured again
with the baselines in interleaved selection rounds; the leader they pick tested against the
backend default in new processes and new rounds; the rule that picks the winner; the store write."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

import optuna
from optuna.trial import TrialState

import torch

from backend import BackendConfig
from backend.fingerprint import hardware_key
from backend.quantization import INT8, QuantizedModel
from backend.store import ConfigStore, Precision, TunedRecord

from . import trial_attrs as attrs
from .errors import StudyError
from .trial_attrs import FailureKind
from .evidence import FASTER, MIN_GAIN, MIN_ROUNDS, SLOWER, UNDECIDED, Verdict, paired_verdict
from .workbench import Bench, Candidate
from .worker import EAGER, TORCH_COMPILE_DEFAULT

log = logging.getLogger("autotune")

BACKEND_DEFAULT = "backend default"
BEST_STATIC = "best static recipe"
STATIC_RECIPE = "static recipe"


# Rounds in which every candidate is timed to pick the one to test: the test against the
# default then runs on fresh processes and fresh rounds. Testing the fastest of ten on the rounds
# that made it the fastest says "faster" of a config no faster than the default about three
# times as often as the test's 5% (benchmarks/selection_bias.py simulates it).
SELECTION_ROUNDS = 3


@dataclass(frozen=True)
class Outcome:
    """How a tuner's confirmation ended: what it measured, the winner, what it stored."""

    candidates: dict[str, Candidate] = field(default_factory=dict)  # the rounds that decided
    winner: Candidate | None = None
    kept_default: bool = False
    verdict: Verdict | None = None   # the winner against the backend default, from paired rounds
    inconclusive: bool = False       # the rounds could not decide: the machine was too noisy
    stored_ids: tuple[int, ...] = ()
    message: str = ""
    deferred: bool = False     # another worker of the same study confirms and stores
    interrupted: bool = False
    selection: dict[str, Candidate] = field(default_factory=dict)  # the rounds that picked the leader


@dataclass(frozen=True)
class Confirmed:
    """A confirmation's measurements: ``selection`` timed every candidate to pick the leader
    (empty when there was nothing to pick between); ``test`` timed the leader, the default and
    the baselines again, in fresh processes and fresh rounds, and decides."""

    test: dict[str, Candidate]
    selection: dict[str, Candidate] = field(default_factory=dict)
    leader: str | None = None
    other: str | None = None  # beside an int8 leader: the fastest other config, tested too


def confirm(study: optuna.Study, bench: Bench, *, top: int, default: BackendConfig,
            recipes: Iterable[Mapping], selection_rounds: int = SELECTION_ROUNDS,
            say: Callable[[str], None] = lambda text: None) -> Confirmed:
    """The ``top`` configs of the study and every warm-start recipe it ran, with the backend
    default and the baselines, each in its own fresh process, measured in interleaved rounds:
    when more than one config could lead, ``selection_rounds`` of them pick the leader, and the
    leader is tested against the default in new processes and new rounds."""
    candidates = candidates_to_confirm(study, top=top, default=default, recipes=recipes)
    contenders = [c for c in candidates.values() if c.config is not None and c.config != default]
    if len(contenders) <= 1:  # nothing to pick between: the rounds that test are the only ones
        say(f"confirming: {len(candidates)} candidates, each in a fresh process, timed in "
            "interleaved rounds until they decide against the backend default")
        return Confirmed(test=_name_best_static(bench.measure_interleaved(candidates, until=_decided)))
    say(f"confirming: {len(candidates)} candidates, each in a fresh process, timed in "
        f"{selection_rounds} quiet interleaved selection rounds that pick the config to test")
    selection = _name_best_static(bench.measure_interleaved(
        candidates, until=_quiet_rounds_at_least(selection_rounds),
        rounds=(selection_rounds, 2 * selection_rounds)))
    leader = _leader(selection)
    if leader is None or leader.name == BACKEND_DEFAULT:  # no config to test against the default
        return Confirmed(test=selection)
    finalists = [leader, candidates[BACKEND_DEFAULT], candidates[TORCH_COMPILE_DEFAULT], candidates[EAGER]]
    tested = [leader.name]
    if leader.config.dtype == INT8:  # the record for other weights is tested on these rounds too
        other = _leader(_not_int8(selection))
        if other is not None and other.name != BACKEND_DEFAULT:
            finalists.insert(1, other)
            tested.append(other.name)
    fresh = {c.name: Candidate(c.name, c.config, kind=c.kind, dtype=c.dtype) for c in finalists}
    say(f"confirming: testing {' and '.join(tested)} against the backend default, with the "
        "baselines, in new processes and new rounds")
    test = bench.measure_interleaved(
        fresh, until=lambda measured: all(_decided(measured, name) for name in tested))
    return Confirmed(test=test, selection=selection, leader=leader.name,
                     other=tested[1] if len(tested) > 1 else None)


def _not_int8(candidates: dict[str, Candidate]) -> dict[str, Candidate]:
    return {n: c for n, c in candidates.items() if c.config is None or c.config.dtype != INT8}


def candidates_to_confirm(study: optuna.Study, *, top: int, default: BackendConfig,
                          recipes: Iterable[Mapping]) -> dict[str, Candidate]:
    candidates = _top_trials(study, top, default.config_id)
    candidates = _with_recipes_run(study, candidates, recipes, default.config_id)
    candidates[BACKEND_DEFAULT] = Candidate(BACKEND_DEFAULT, default)
    candidates[TORCH_COMPILE_DEFAULT] = Candidate(TORCH_COMPILE_DEFAULT, None, kind=TORCH_COMPILE_DEFAULT)
    candidates[EAGER] = Candidate(EAGER, None, kind=EAGER)
    return candidates


def _quiet_rounds_at_least(count: int):
    def enough(candidates: dict[str, Candidate]) -> bool:
        return max((sum(m is not None for m in c.round_medians) for c in candidates.values()),
                   default=0) >= count
    return enough


def _top_trials(study: optuna.Study, top: int, default_id: str) -> dict[str, Candidate]:
    candidates: dict[str, Candidate] = {}
    seen = {default_id}  # the default's config is measured once, as the backend default
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(complete, key=lambda t: t.value):
        if len(candidates) == top:
            break
        cid = t.user_attrs.get(attrs.CONFIG_ID)
        if cid in seen:
            continue
        seen.add(cid)
        name = f"trial #{t.number}"
        candidates[name] = Candidate(name, BackendConfig(t.user_attrs[attrs.CONFIG]))
    return candidates


def _with_recipes_run(study: optuna.Study, candidates: dict[str, Candidate], recipes: Iterable[Mapping],
                      default_id: str) -> dict[str, Candidate]:
    """Every warm-start recipe, also one a noisy search-phase run pruned or failed as noisy: the
    leader must be at least as fast as each of them in the same selection rounds. A top trial
    that is a recipe is confirmed once, as the recipe."""
    candidates = dict(candidates)
    recipe_ids = {BackendConfig(r).config_id for r in recipes}
    statics: list[str] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                      TrialState.FAIL)):
        if t.state == TrialState.FAIL and t.user_attrs.get(attrs.FAILURE_KIND) != FailureKind.NOISY:
            continue
        cid = t.user_attrs.get(attrs.CONFIG_ID)
        if cid not in recipe_ids or cid == default_id or cid in statics:
            continue
        statics.append(cid)
        top = next((n for n, c in candidates.items() if c.config.config_id == cid), None)
        config = candidates.pop(top).config if top else BackendConfig(t.user_attrs[attrs.CONFIG])
        name = f"{STATIC_RECIPE} (trial #{t.number})"
        candidates[name] = Candidate(name, config)
    return candidates


def _name_best_static(candidates: dict[str, Candidate]) -> dict[str, Candidate]:
    """The fastest recipe is the one to beat: named the best static recipe."""
    measured = [c for c in candidates.values() if c.name.startswith(STATIC_RECIPE) and c.stats]
    if not measured:
        return candidates
    best = min(measured, key=lambda c: c.stats.median_ms)
    renamed = replace(best, name=best.name.replace(STATIC_RECIPE, BEST_STATIC, 1))
    return {c.name: c for c in (renamed if c is best else c for c in candidates.values())}


def _leader(candidates: dict[str, Candidate], name: str | None = None) -> Candidate | None:
    """The config named (None when it failed: another config in its place would be picked on
    the rounds that test it), else the fastest config in median. The default when it is the
    default's own config."""
    tuned = [c for c in candidates.values() if c.stats and c.config is not None]
    if name is not None:
        tuned = [c for c in tuned if c.name == name]
    if not tuned:
        return None
    best = min(tuned, key=lambda c: c.stats.median_ms)
    default = candidates[BACKEND_DEFAULT]
    return default if best.config == default.config else best


def _decided(candidates: dict[str, Candidate], leader: str | None = None) -> bool:
    """Whether the rounds so far answer the confirmation's question: is the leader (by default
    the fastest config) faster than the backend default, or not?"""
    leader, default = _leader(candidates, leader), candidates[BACKEND_DEFAULT]
    if leader is None or leader is default or not default.stats:
        return True
    return paired_verdict(*leader.paired_with(default)).decided


def median_noise(candidates: dict[str, Candidate]) -> float:
    """The candidates' median relative IQR: the noise a ratio between them had to beat."""
    spreads = [c.stats.spread for c in candidates.values() if c.stats]
    return statistics.median(spreads) if spreads else 0.0


def choose_winner(candidates: dict[str, Candidate], leader: str | None = None,
                  selection: dict[str, Candidate] | None = None, other: str | None = None) -> Outcome:
    """The config the paired rounds favour: the leader (by default the fastest config) when it
    is faster than the backend default with confidence, else the default, unless the default
    itself was shown slower than torch.compile's default or eager, where the leader is the
    better bet. ``selection``: the rounds that picked the leader, carried for the record;
    ``other``: the config tested beside an int8 leader."""
    if selection:
        outcome = replace(choose_winner(candidates, leader), selection=selection)
        return _unless_int8_lost(outcome, candidates, leader, other) if other else outcome
    named, default = candidates.get(leader), candidates[BACKEND_DEFAULT]
    leader = _leader(candidates, leader)
    if named is not None and leader is None:
        why = f"{named.name}, the selection's leader, failed in its test ({_failure(named)})"
        if not default.stats:
            return Outcome(candidates=candidates, message=f"{why}, and so did the backend default "
                           f"({_failure(default)}): nothing stored")
        return Outcome(candidates=candidates, winner=default, kept_default=True,
                       message=f"{why}: storing the default")
    if leader is None:
        return Outcome(candidates=candidates,
                       message="every candidate failed in confirmation: nothing stored")
    if leader is default:
        return _with_slower_than_baselines(Outcome(
            candidates=candidates, winner=default, kept_default=True,
            message="the backend default was the fastest config measured: storing it"), candidates)
    if not default.stats:
        return _with_slower_than_baselines(Outcome(
            candidates=candidates, winner=leader,
            message=f"the backend default failed in confirmation ({_failure(default)}): storing "
                    f"{leader.name} without a test against it"), candidates)
    verdict = paired_verdict(*leader.paired_with(default))
    if verdict.outcome == FASTER:
        return _with_slower_than_baselines(Outcome(
            candidates=candidates, winner=leader, verdict=verdict,
            message=f"{leader.name} is {verdict.describe()} than the backend default"), candidates)
    noise = median_noise(candidates)
    # undecided on a difference too small to matter is a decision; on too few rounds, not
    inconclusive = verdict.outcome == UNDECIDED and not (
        verdict.rounds >= MIN_ROUNDS and abs(1 - verdict.ratio) < MIN_GAIN)
    if inconclusive:
        busy = sum(m is None for m in default.round_medians)
        why = (f"inconclusive: the machine was too noisy (median IQR {100 * noise:.0f}%, {busy} of "
               f"{len(default.round_medians)} rounds on a busy machine) to decide "
               f"whether {leader.name} beats the backend default ({verdict.describe()}): rerun on a "
               "quieter machine")
    else:
        why = (f"no config beat the backend default by at least {100 * MIN_GAIN:.0f}% with "
               f"confidence ({leader.name}: {verdict.describe()})")
    for name in (TORCH_COMPILE_DEFAULT, EAGER):
        base = candidates.get(name)
        versus = paired_verdict(*default.paired_with(base)) if base and base.stats else None
        if versus and versus.outcome == SLOWER and verdict.outcome != SLOWER:
            return _with_slower_than_baselines(Outcome(
                candidates=candidates, winner=leader, verdict=verdict, inconclusive=inconclusive,
                message=f"{why}; but the backend default is {versus.describe()} than {name}, so "
                        f"the fastest config measured, {leader.name}, is stored"), candidates)
    return Outcome(candidates=candidates, winner=default, kept_default=True, verdict=verdict,
                   inconclusive=inconclusive, message=f"{why}: storing the default")


def _unless_int8_lost(outcome: Outcome, candidates: dict[str, Candidate], leader: str,
                      other: str) -> Outcome:
    """An int8 leader that is not shown faster (failed, kept the default, or stored only because
    the default lost to a baseline or failed itself) leaves these weights, too, to ``other``, the
    fastest config that is not int8, when its test shows it faster (never when the default
    failed: then nothing was shown faster, and the message says so). Both tests were declared
    before the rounds ran (``other``'s as the record for other weights), so neither picks on the
    rounds that test it. Two chances at "faster" for one set of weights could make a false one up
    to twice as likely as one test's; in one simulation it was not (benchmarks/selection_bias.py)."""
    named = candidates[leader]
    leader_shown = outcome.verdict and outcome.verdict.outcome == FASTER
    if outcome.winner and outcome.winner.name == leader and leader_shown:
        return outcome
    instead = choose_winner(_not_int8(candidates), other)
    if not (instead.verdict and instead.verdict.outcome == FASTER):
        shown = (instead.verdict.describe() if instead.verdict else "no test: the backend default "
                 "failed" if candidates[other].stats else _failure(candidates[other]))
        return replace(outcome, message=f"{outcome.message}; {other}, the fastest config that is "
                                        f"not int8, was not shown faster either ({shown})")
    why = (f"{leader}, the int8 leader, failed in its test ({_failure(named)})" if not named.stats
           else f"{leader}, the int8 leader, was not shown faster than the backend default"
           + (f" ({outcome.verdict.describe()})" if outcome.verdict else ""))
    # the int8 leader stays among the candidates: its test-round figures, not its selection ones
    return replace(instead, candidates=candidates, selection=outcome.selection,
                   message=f"{why}; of the configs that are not int8, {instead.message}")


def _failure(candidate: Candidate) -> str:
    return (candidate.failure or "no round on a quiet machine")[:300]


def _with_slower_than_baselines(outcome: Outcome, candidates: dict[str, Candidate]) -> Outcome:
    """Say so when the paired rounds show the winner slower than torch.compile's default or eager."""
    notes = []
    for name in (TORCH_COMPILE_DEFAULT, EAGER):
        base = candidates.get(name)
        if base and base.stats and outcome.winner.stats:
            versus = paired_verdict(*outcome.winner.paired_with(base))
            if versus.outcome == SLOWER:
                notes.append(f"{versus.describe()} than {name}")
    if not notes:
        return outcome
    note = (f"the stored config is {' and '.join(notes)}: it is the fastest this backend can "
            "represent for this model")
    return replace(outcome, message="; ".join(filter(None, [outcome.message, note])))


def store_winner(study: optuna.Study, outcome: Outcome, *, storage_url: str, hardware: dict,
                 model_label: str) -> tuple[int, ...]:
    """The winner in the study's attributes, and in the store once per graph it compiled. An
    int8 winner applies only to the weights it was calibrated for: the same confirmation's
    choice among the other candidates is stored beside it, for the lookup to apply to other
    weights."""
    winner = outcome.winner
    in_selection = outcome.selection.get(winner.name)
    study.set_user_attr("winner", {"candidate": winner.name, "config": winner.config.to_dict(),
                                   "stats": latency_of(outcome),
                                   # what the selection-round baselines compare with
                                   "selection_stats": in_selection.stats.to_dict()
                                   if in_selection and in_selection.stats else None,
                                   "baselines": baselines_of(outcome),
                                   "kept_default": outcome.kept_default, "message": outcome.message})
    ids = _put(study, outcome, storage_url=storage_url, hardware=hardware, model_label=model_label)
    if winner.config.dtype == INT8:
        for_other_weights = choose_winner(_not_int8(outcome.candidates),
                                          selection=_not_int8(outcome.selection))
        if for_other_weights.winner:
            ids += _put(study, for_other_weights, storage_url=storage_url, hardware=hardware,
                        model_label=model_label)
    return ids


def _put(study: optuna.Study, outcome: Outcome, *, storage_url: str, hardware: dict,
         model_label: str) -> tuple[int, ...]:
    """The outcome's winner in the store, once per graph it compiled."""
    winner = outcome.winner
    baselines = baselines_of(outcome)
    default = outcome.candidates[BACKEND_DEFAULT]
    # the ratio of one confirmation, when its test showed it; else no speedup is claimed (the
    # default itself, or a leader stored because the default lost to torch.compile's default)
    speedup = 1.0
    if default.stats and outcome.verdict and outcome.verdict.outcome == FASTER:
        speedup = default.stats.median_ms / winner.stats.median_ms
    latency = latency_of(outcome)
    ids = []
    with ConfigStore(storage_url) as store:
        for graph in winner.graphs:
            if not graph.get("workload_key"):
                continue
            applied = _config_ran(graph, winner.config)
            precision = _precision_of(winner, graph)
            ids.append(store.put(TunedRecord(
                workload_key=graph["workload_key"], hardware_key=hardware_key(hardware),
                family_key=graph.get("family_key", ""), batch_size=graph.get("batch_size"),
                model_label=model_label, config=applied.to_dict(), config_id=applied.config_id,
                latency=latency, baselines=baselines, speedup=speedup,
                torch_version=torch.__version__, study_name=study.study_name, hardware=hardware),
                precision))
    return tuple(ids)


def baselines_of(outcome: Outcome) -> dict[str, dict]:
    """Every candidate's stats: from the rounds that decided, else (marked) from the selection
    rounds, which time the candidates that were not tested."""
    selected = {n: {**c.stats.to_dict(), "measured_in": "selection"}
                for n, c in outcome.selection.items() if c.stats}
    return {**selected, **{n: c.stats.to_dict() for n, c in outcome.candidates.items() if c.stats}}


def _precision_of(winner: Candidate, graph: dict) -> Precision | None:
    """What a reduced-precision winner's record carries: its gate's figures and, for int8, the
    quantized model its worker measured (read from the engines' cache)."""
    if winner.accuracy is None and "quantized" not in graph:
        return None
    quantized = None
    if "quantized" in graph:
        try:
            quantized = QuantizedModel.from_description(graph["quantized"])
        except OSError as exc:
            raise StudyError(f"the winner's quantized model is gone from the engines' cache "
                             f"({exc}); rerun to quantize it again") from None
    return Precision(winner.accuracy, quantized)


def latency_of(outcome: Outcome) -> dict:
    """The winner's stats, with what they say of their own noise and of the speedup's confidence."""
    winner = outcome.winner
    quiet_rounds = sum(m is not None for m in winner.round_medians)
    return {**winner.stats.to_dict(),
            "noise": {"iqr": round(winner.stats.spread, 4),
                      "median_iqr": round(median_noise(outcome.candidates), 4),
                      "rounds": len(winner.round_medians), "quiet_rounds": quiet_rounds,
                      "noisy": winner.noisy},
            "speedup_evidence": outcome.verdict.to_dict() if outcome.verdict else None,
            "inconclusive": outcome.inconclusive, "kept_default": outcome.kept_default}


def _config_ran(graph: dict, asked: BackendConfig) -> BackendConfig:
    """What a graph ran: a fallback (e.g. oneDNN Graph failed) is stored as such, so the lookup
    does not fail the same way in every process."""
    applied = BackendConfig(graph["config"]) if graph.get("config") else asked
    if applied != asked:
        log.warning("graph %s compiled with %s instead of %s (a fallback); storing what it ran",
                    graph["workload_key"], applied.config_id, asked.config_id)
    return applied
