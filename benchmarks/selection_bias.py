"""How often the confirmation calls a config faster than the default, simulated.

    python benchmarks/selection_bias.py [--runs 2000] [--noise 0.05]

Ten configs (nine, since one is the default's) and the default, timed in interleaved rounds by a
simulated bench: each round a drift shared by all, times each candidate's own log-normal noise,
times its config's true speed. Runs the confirmation many times and prints how often it said
"faster" (and stored the right config), for the rule it uses (the leader picked on selection
rounds, then tested on fresh rounds) and for the rule before it (picked and tested on the same
rounds). With every config as fast as the default, each "faster" is a false one: the rounds'
sign test promises under 5%. Then the worst case of an int8 leader: one config, as fast as the
rest, leads every selection by luck; when it is int8, the fastest other config is tested beside
it and stored for every weight if shown faster, so the calibrated weights get two chances at a
false "faster". No process is started.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import replace

import optuna

from autotune.bench import Stats
from autotune.confirmation import _decided, candidates_to_confirm, choose_winner, confirm
from autotune.evidence import FASTER, MAX_ROUNDS, MIN_ROUNDS
from backend import BackendConfig

DEFAULT = BackendConfig({"threads": 2})
FAST = BackendConfig({"path": "inductor", "cpp_wrapper": True, "threads": 2})
INT8_CONFIG = BackendConfig({"path": "inductor", "dtype": "int8", "threads": 2})


class SimulatedBench:
    """Per-round medians drawn for each candidate: a shared drift per round times its own noise
    times ``speed(candidate)``. Honours the rounds and the ``until`` of measure_interleaved."""

    def __init__(self, rng: random.Random, speed, noise: float = 0.05, selection_speed=None):
        self.rng, self.speed, self.noise = rng, speed, noise
        self.selection_speed = selection_speed or speed

    def measure_interleaved(self, candidates, after_round=None, until=None, rounds=None):
        first, most = rounds or (MIN_ROUNDS, MAX_ROUNDS)
        speed = self.selection_speed if rounds else self.speed  # confirm() sets rounds to select
        medians = {name: [] for name in candidates}
        timed = candidates
        for count in range(1, max(first, most if until else 0) + 1):
            drift = self.rng.lognormvariate(0, 0.1)
            for name, cand in candidates.items():
                medians[name].append(drift * speed(cand) * self.rng.lognormvariate(0, self.noise))
            timed = {name: replace(cand, stats=Stats.of(medians[name]), round_medians=tuple(medians[name]))
                     for name, cand in candidates.items()}
            if count >= first and until and until(timed):
                break
        return timed


def ten_configs_study(lucky: BackendConfig = FAST) -> optuna.Study:
    """A study whose ten completed trials are ten distinct configs, one of them the default's and
    one ``lucky``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    configs = [BackendConfig({"path": "torchscript", "onednn_fusion": fusion, "weights_prepack": prepack,
                              "channels_last": channels_last, "threads": 2})
               for fusion in (True, False) for prepack in (True, False) for channels_last in (True, False)]
    configs += [lucky, BackendConfig({"path": "inductor", "cpp_wrapper": False, "threads": 2})]
    for config in configs:
        study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={
            "config": config.to_dict(), "config_id": config.config_id}))
    return study


def tested_on_fresh_rounds(study, bench):
    confirmed = confirm(study, bench, top=10, default=DEFAULT, recipes=[])
    return choose_winner(confirmed.test, confirmed.leader, confirmed.selection, confirmed.other)


def tested_on_its_selection_rounds(study, bench):
    """The rule before 2026-12-04: the fastest of all, tested on the rounds that made it so."""
    candidates = candidates_to_confirm(study, top=10, default=DEFAULT, recipes=[])
    return choose_winner(bench.measure_interleaved(candidates, until=_decided))


def rates(rule, *, speed_of_fast: float, runs: int, noise: float, seed: int) -> tuple[float, float]:
    """(said faster, said faster of the truly faster config) over ``runs`` confirmations."""
    rng = random.Random(seed)
    study = ten_configs_study()
    bench = SimulatedBench(rng, lambda c: speed_of_fast if c.config == FAST else 1.0, noise)
    said = right = 0
    for _ in range(runs):
        outcome = rule(study, bench)
        faster = bool(outcome.verdict) and outcome.verdict.outcome == FASTER
        said += faster
        right += faster and outcome.winner.config == FAST
    return said / runs, right / runs


def false_faster_when_one_leads_by_luck(lucky: BackendConfig, *, runs: int, noise: float, seed: int) -> float:
    """How often a confirmation says "faster" when ``lucky`` leads every selection (its selection
    rounds 20% fast) and every config is truly as fast as the default."""
    rng = random.Random(seed)
    bench = SimulatedBench(rng, lambda c: 1.0, noise,
                           selection_speed=lambda c: 0.8 if c.config == lucky else 1.0)
    study = ten_configs_study(lucky)
    said = 0
    for _ in range(runs):
        outcome = tested_on_fresh_rounds(study, bench)
        said += bool(outcome.verdict) and outcome.verdict.outcome == FASTER
    return said / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.05, help="sigma of each candidate's log noise per round")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{args.runs} simulated confirmations each, noise {args.noise} per round, seed {args.seed}")
    print(f"{'one config truly':24s} {'rule':36s} {'said faster':>12s} {'of that config':>15s}")
    for speed, label in ((1.0, "as fast as the rest"), (0.95, "5% faster"), (0.9, "10% faster")):
        for rule, name in ((tested_on_its_selection_rounds, "picked and tested on the same rounds"),
                           (tested_on_fresh_rounds, "tested on fresh rounds")):
            said, right = rates(rule, speed_of_fast=speed, runs=args.runs, noise=args.noise, seed=args.seed)
            print(f"{label:24s} {name:36s} {100 * said:11.1f}% {100 * right:14.1f}%", flush=True)
    print("\nevery config as fast as the default, one leading every selection by luck:")
    for lucky, label in ((FAST, "a float config"), (INT8_CONFIG, "an int8 config")):
        said = false_faster_when_one_leads_by_luck(lucky, runs=args.runs, noise=args.noise, seed=args.seed)
        print(f"  the lucky one {label:16s} said faster {100 * said:5.1f}%", flush=True)


if __name__ == "__main__":
    main()
