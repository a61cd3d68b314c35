"""How many trials the default tuner needs to get within 3% of a reference search's best.

    python benchmarks/tuner_quality.py [--model resnet50] [--batch-size 1] [--storage URL]
                                       [--seeds 0,...,9] [--within 0.03] [--trials 25]

1. Reference: every config of a grid over the knobs that matter (GRID below) is measured as a
   real trial (fresh process, full median, no pruning) in the study "<model>-reference-grid".
   A rerun reuses the measured grid.
2. Replay: for each seed, the default tuner's own search (its space fitted to this host, its
   warm start, its sampler) runs offline against the grid. A sampled config is scored by the grid
   config that agrees with it on the grid knobs; knobs outside the grid count as neutral, and a
   thread count other than all cores scores as the grid's worst. The script reports the trial at which the best so far first comes within 3% of the grid's best.
3. Check of that assumption: for the default studies of the same model in the storage (a real
   `autotune run`), the error between each real trial and its grid projection.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
import warnings

import optuna
import yaml
from optuna.trial import TrialState

from autotune.errors import AutotuneError
from autotune.models import ModelSpec
from autotune.space import load_space
from autotune.trial_attrs import LOST
from autotune.study_queue import make_sampler
from autotune.tuner import Tuner, TuneRequest, open_study
from backend.config import BackendConfig
from backend.fingerprint import usable_cores
from backend.knobs import INDUCTOR, KNOBS, TORCHSCRIPT, superseded
from backend.store import default_storage_url

# The knobs whose values moved resnet50's latency by more than the noise in `autotune run` studies.
GRID = {
    TORCHSCRIPT: {"weights_prepack": [True, False], "channels_last": [True, False],
                  "optimize_for_inference": [False, True], "onednn_fusion": [False, True]},
    INDUCTOR: {"weights_prepack": [True, False], "channels_last": [True, False],
               "freezing": [True, False], "max_autotune": [False, True], "cpp_wrapper": [False, True]},
}


def grid_configs(threads: int) -> list[dict]:
    configs = []
    for path, knobs in GRID.items():
        for values in itertools.product(*knobs.values()):
            config = {"path": path, "threads": threads, **dict(zip(knobs, values))}
            # a knob the compile ignores is measured once, at its default
            if all(config[name] == KNOBS[name].default for name in superseded(config)):
                configs.append(config)
    return configs


def grid_key(config: dict) -> tuple:
    """The grid point a full config falls on: its path and its grid knobs (the rest: neutral)."""
    path, ignored = config["path"], superseded(config)
    return (path, *(KNOBS[name].default if name in ignored else config.get(name, KNOBS[name].default)
                    for name in GRID[path]))


def measure_grid(args, threads: int) -> tuple[dict[tuple, float], set[tuple]]:
    """The grid's medians by grid key, and the grid keys whose trial failed."""
    space_file = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    knobs = {"path": [TORCHSCRIPT, INDUCTOR], "threads": [threads]}
    for path_knobs in GRID.values():
        for name, values in path_knobs.items():
            knobs[name] = values
    yaml.safe_dump({"description": "reference grid", "knobs": knobs}, space_file)
    space_file.close()
    spec = ModelSpec(args.model, batch_size=args.batch_size)
    request = TuneRequest(model=spec, timeout_s=None, space=space_file.name, storage=args.storage,
                          study_name=f"{spec.study_label}-reference-grid", prune_ratio=math.inf)
    tuner = Tuner(request)
    os.unlink(space_file.name)  # loaded by Tuner()
    tuner.preflight()
    study = open_study(request)
    # queue every grid point not measured yet (a rerun after an interruption finishes the grid)
    done = {grid_key(t.user_attrs["config"]) for t in study.trials
            if "config" in t.user_attrs and t.user_attrs.get("failure_kind") not in LOST}
    for config in grid_configs(threads):
        if grid_key(config) not in done:
            study.enqueue_trial(tuner.space.params_for({**config, "dtype": "float32"}))
    lost = len([t for t in study.trials if t.user_attrs.get("failure_kind") in LOST])
    request.trials = len(study.trials) - lost  # exactly the queued grid: nothing sampled on top
    print(f"reference grid: {len(grid_configs(threads))} configs in study {study.study_name!r}",
          file=sys.stderr, flush=True)
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        tuner.bench.ensure_reference()
        tuner.search(study)  # the grid's own medians; no confirmation, nothing stored
    measured, failed = {}, set()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            measured[grid_key(t.user_attrs["config"])] = t.value
        elif t.state == TrialState.FAIL and t.user_attrs.get("failure_kind") not in LOST + (None,):
            failed.add(grid_key(t.user_attrs["config"]))
    missing = len(grid_configs(threads)) - len(measured) - len(failed)
    if missing:
        print(f"warning: {missing} grid configs have no measurement; rerun to finish the grid", file=sys.stderr)
    return measured, failed


def replay(seed: int, grid: dict[tuple, float], failed: set[tuple], threads: int,
           trials: int) -> list[float | None]:
    """The default search against the grid, as Tuner.fill_budget and Tuner._run_trial run it:
    warm start, duplicates answered from the first result, failures told as failures, the
    pruning rule. Returns the best value after each trial."""
    space = load_space("default").restrict(cores=threads)
    study = optuna.create_study(sampler=make_sampler(seed), direction="minimize")
    for recipe in space.static_recipes():
        study.enqueue_trial(space.params_for(recipe))
    seen: dict[str, float | None] = {}  # config_id -> its value (None: it failed)
    best, curve = math.inf, []
    for _ in range(trials):
        trial = study.ask()
        try:
            config = BackendConfig(space.suggest(trial))
        except AutotuneError:
            study.tell(trial, state=TrialState.FAIL)
            curve.append(best if best < math.inf else None)
            continue
        key = grid_key(config.to_dict())
        if config.config_id in seen:
            value = seen[config.config_id]
        elif key in failed:
            value = None
        elif config.threads != threads or key not in grid:
            value = max(grid.values())  # off the grid (another thread count): scored as the worst
        else:
            value = grid[key]
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
            seen[config.config_id] = None
        elif config.config_id not in seen and value > best * TuneRequest.prune_ratio:
            study.tell(trial, state=TrialState.PRUNED)  # stopped early; a repeat runs again
        else:
            study.tell(trial, value)
            best = min(best, value)
            seen[config.config_id] = value
        curve.append(best if best < math.inf else None)
    return curve


def projection_errors(args, grid: dict[tuple, float], threads: int) -> list[float]:
    """Relative error of the grid's value against real default-space trials of the same model."""
    errors = []
    storage = args.storage or default_storage_url()
    name = f"{ModelSpec(args.model, batch_size=args.batch_size).study_label}-float32"
    if name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            config = t.user_attrs.get("config", {})
            if config.get("threads") == threads and grid_key(config) in grid:
                errors.append(abs(t.value / grid[grid_key(config)] - 1))
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--storage", help="study storage URL (default: the embedded SQLite store)")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9")
    parser.add_argument("--within", type=float, default=0.03)
    parser.add_argument("--trials", type=int, default=25, help="the default budget of `autotune run`")
    args = parser.parse_args(argv)
    threads = usable_cores()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    grid, failed = measure_grid(args, threads)
    reference = min(grid.values())
    target = reference * (1 + args.within)
    best_key = min(grid, key=grid.get)
    print(f"reference best: {reference:.2f} ms ({best_key}); grid of {len(grid)}, "
          f"worst {max(grid.values()):.2f} ms; target {target:.2f} ms")
    needed = []
    for seed in map(int, args.seeds.split(",")):
        curve = replay(seed, grid, failed, threads, args.trials)
        hit = next((i + 1 for i, best in enumerate(curve) if best is not None and best <= target), None)
        needed.append(hit if hit is not None else math.inf)
        print(f"seed {seed}: within {args.within:.0%} after {hit if hit else f'more than {args.trials}'} "
              f"trials; best after {args.trials}: {curve[-1]:.2f} ms")
    print(f"median trials to within {args.within:.0%}: {statistics.median(needed)}")
    errors = projection_errors(args, grid, threads)
    if errors:
        print(f"neutral-knob check: {len(errors)} real trials of the default space differ from their "
              f"grid point by a median {statistics.median(errors):.1%} (max {max(errors):.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
