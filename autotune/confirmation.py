"""The confirmation: the study's best configs and every warm-start recipe it ran, measured again
with the baselines in interleaved rounds; the rule that picks the winner; the store write."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import optuna
from optuna.trial import TrialState

import torch

from backend import BackendConfig
from backend.fingerprint import hardware_key
from backend.store import ConfigStore, TunedRecord

from . import trial_attrs as attrs
from .workbench import Bench, Candidate
from .worker import EAGER, TORCH_COMPILE_DEFAULT

log = logging.getLogger("autotune")

BACKEND_DEFAULT = "backend default"
BEST_STATIC = "best static recipe"
STATIC_RECIPE = "static recipe"
MIN_GAIN = 0.01  # a winner must beat the default's median by this much...


def _clearly_faster(a: Candidate, b: Candidate) -> bool:
    """...and be faster in every interleaved round: drift hits both alike within a round."""
    rounds = list(zip(a.round_medians, b.round_medians))
    return (a.stats.median_ms <= b.stats.median_ms * (1 - MIN_GAIN) and bool(rounds)
            and all(x < y for x, y in rounds))


@dataclass(frozen=True)
class Outcome:
    """How a tuner's confirmation ended: what it measured, the winner, what it stored."""

    candidates: dict[str, Candidate] = field(default_factory=dict)
    winner: Candidate | None = None
    kept_default: bool = False
    stored_ids: tuple[int, ...] = ()
    message: str = ""
    deferred: bool = False     # another worker of the same study confirms and stores
    interrupted: bool = False


def confirm(study: optuna.Study, bench: Bench, *, top: int, default: BackendConfig,
            recipes: Iterable[Mapping]) -> dict[str, Candidate]:
    """The ``top`` configs of the study and every warm-start recipe it ran, with the backend
    default and the baselines, each in its own fresh process, measured in interleaved rounds."""
    candidates = _top_trials(study, top, default.config_id)
    candidates = _with_recipes_run(study, candidates, recipes, default.config_id)
    candidates[BACKEND_DEFAULT] = Candidate(BACKEND_DEFAULT, default)
    candidates[TORCH_COMPILE_DEFAULT] = Candidate(TORCH_COMPILE_DEFAULT, None, kind=TORCH_COMPILE_DEFAULT)
    candidates[EAGER] = Candidate(EAGER, None, kind=EAGER)
    return _name_best_static(bench.measure_interleaved(candidates))


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
    """Every warm-start recipe, also one a noisy search-phase run pruned: the winner must be at
    least as fast as each of them in the same interleaved rounds. A top trial that is a recipe
    is confirmed once, as the recipe."""
    candidates = dict(candidates)
    recipe_ids = {BackendConfig(r).config_id for r in recipes}
    statics: list[str] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
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


def choose_winner(candidates: dict[str, Candidate]) -> Outcome:
    """The fastest confirmed config, or the backend default when that is not clearly faster."""
    tuned = [c for c in candidates.values() if c.stats and c.config is not None]
    if not tuned:
        return Outcome(candidates=candidates,
                       message="every candidate failed in confirmation: nothing stored")
    best = min(tuned, key=lambda c: c.stats.median_ms)
    default = candidates[BACKEND_DEFAULT]
    if best.config == default.config:
        best = default  # two processes of one config: their difference is noise, not a gain
    if best is not default and default.stats and not _clearly_faster(best, default):
        return Outcome(candidates=candidates, winner=default, kept_default=True, message=(
            "no config beat the backend default clearly (by at least "
            f"{100 * MIN_GAIN:.0f}% and in every interleaved round): storing the default"))
    return Outcome(candidates=candidates, winner=best)


def store_winner(study: optuna.Study, outcome: Outcome, *, storage_url: str, hardware: dict,
                 model_label: str) -> tuple[int, ...]:
    """The winner in the study's attributes, and in the store once per graph it compiled."""
    winner = outcome.winner
    baselines = {n: c.stats.to_dict() for n, c in outcome.candidates.items() if c.stats}
    default = outcome.candidates[BACKEND_DEFAULT]
    speedup = 1.0  # the default over itself, by definition; else a ratio of one confirmation
    if default.stats and winner.config != default.config:
        speedup = default.stats.median_ms / winner.stats.median_ms
    study.set_user_attr("winner", {"candidate": winner.name, "config": winner.config.to_dict(),
                                   "stats": winner.stats.to_dict(), "baselines": baselines,
                                   "kept_default": outcome.kept_default})
    ids = []
    with ConfigStore(storage_url) as store:
        for graph in winner.graphs:
            if not graph.get("workload_key"):
                continue
            applied = _config_ran(graph, winner.config)
            ids.append(store.put(TunedRecord(
                workload_key=graph["workload_key"], hardware_key=hardware_key(hardware),
                family_key=graph.get("family_key", ""), batch_size=graph.get("batch_size"),
                model_label=model_label, config=applied.to_dict(), config_id=applied.config_id,
                latency=winner.stats.to_dict(), baselines=baselines, speedup=speedup,
                torch_version=torch.__version__, study_name=study.study_name, hardware=hardware)))
    return tuple(ids)


def _config_ran(graph: dict, asked: BackendConfig) -> BackendConfig:
    """What a graph ran: a fallback (e.g. oneDNN Graph failed) is stored as such, so the lookup
    does not fail the same way in every process."""
    applied = BackendConfig(graph["config"]) if graph.get("config") else asked
    if applied != asked:
        log.warning("graph %s compiled with %s instead of %s (a fallback); storing what it ran",
                    graph["workload_key"], applied.config_id, asked.config_id)
    return applied
