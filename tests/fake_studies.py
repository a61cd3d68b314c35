"""A finished study database in a second, with the attributes the real tuner writes."""

import random

import optuna
from optuna.trial import TrialState

from backend.store import ConfigStore, TunedRecord

HARDWARE = {"cpu": "Intel(R) Xeon(R) Platinum 8488C", "features": ["avx2", "avx512f", "amx_bf16"],
            "cores": 2, "sockets": 1, "machine": "x86_64"}
STATIC = [{"path": "torchscript", "weights_prepack": True, "channels_last": True,
           "optimize_for_inference": False, "threads": 2},
          {"path": "inductor", "weights_prepack": True, "channels_last": True, "freezing": True,
           "threads": 2},
          {"path": "torchscript", "weights_prepack": True, "channels_last": True,
           "optimize_for_inference": True, "threads": 2}]


def _latency(config):
    ms = 4.0 if config["path"] == "torchscript" else 2.6
    ms *= 0.8 if config["weights_prepack"] else 1.0
    if not config["channels_last"]:
        ms *= 0.85 if config["path"] == "inductor" else 1.25
    ms *= 0.9 if config.get("freezing") or config.get("optimize_for_inference") else 1.0
    return ms * (1.6 if config["threads"] == 1 else 1.0)


def _stats(ms):
    return {"median_ms": ms, "p10_ms": ms * 0.95, "p90_ms": ms * 1.08, "iqr_ms": ms * 0.05, "runs": 40}


def make_study(url, name="small_cnn-bs1-float32", model="tuner_models:small_cnn", trials=14,
               failures=((5, "crash", "worker died with SIGSEGV while compiling"),)):
    """A study like `autotune run` leaves it: static recipes first, a pruned and a failed trial,
    the confirmed winner; and its record (plus one from other hardware) in the store."""
    rng = random.Random(0)
    with ConfigStore(url) as store:  # creates our tables and sets WAL, as the tuner does
        study = optuna.create_study(study_name=name, storage=url, direction="minimize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        for key, value in {"hardware_key": "hw-test", "hardware": HARDWARE,
                           "model": {"name": model, "batch_size": 1, "input_shape": None,
                                     "checkpoint": None},
                           "dtypes": ["float32"], "torch_version": "2.14.1"}.items():
            study.set_user_attr(key, value)
        for params in STATIC + [{}] * (trials - len(STATIC)):  # {}: the sampler picks, as the tuner does
            study.enqueue_trial(params)
        failed = {number: (kind, reason) for number, kind, reason in failures}
        for _ in range(trials):
            trial = study.ask()
            config = {"path": trial.suggest_categorical("path", ["torchscript", "inductor"]),
                      "dtype": "float32",
                      "weights_prepack": trial.suggest_categorical("weights_prepack", [True, False]),
                      "channels_last": trial.suggest_categorical("channels_last", [True, False])}
            if config["path"] == "torchscript":
                config["optimize_for_inference"] = trial.suggest_categorical(
                    "optimize_for_inference", [False, True])
            else:
                config["freezing"] = trial.suggest_categorical("freezing", [True, False])
            config["threads"] = trial.suggest_int("threads", 1, 2)
            trial.set_user_attr("config", config)
            trial.set_user_attr("config_id", f"cfg-{trial.number:012d}")
            if trial.number in failed:
                kind, reason = failed[trial.number]
                trial.set_user_attr("failure_kind", kind)
                trial.set_user_attr("failure_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                continue
            ms = _latency(config) * rng.uniform(0.97, 1.03)
            for key, value in {**_stats(ms), "compile_s": 1.2, "error": 1e-6, "peak_rss_mb": 310.0,
                               "threads": config["threads"], "graphs": []}.items():
                trial.set_user_attr(key, value)
            if ms > 6:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, ms)
        best = study.best_trial
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        static = min((t for t in complete if t.number < len(STATIC)), key=lambda t: t.value)
        winner = _stats(best.value * 1.01)
        baselines = {f"trial #{best.number}": winner, "backend default": _stats(3.3),
                     # timed only in the rounds that picked the winner
                     f"best static recipe (trial #{static.number})": {**_stats(static.value),
                                                                      "measured_in": "selection"},
                     "torch.compile default": _stats(3.0), "eager": _stats(4.7)}
        study.set_user_attr("winner", {"candidate": f"trial #{best.number}",
                                       "config": best.user_attrs["config"], "stats": winner,
                                       "selection_stats": _stats(best.value * 0.97),
                                       "baselines": baselines, "kept_default": False})
        for hw_key, hardware, label in (("hw-test", HARDWARE, model),
                                        ("hw-other", {**HARDWARE, "cpu": "AMD EPYC 9R14", "cores": 4},
                                         "resnet50")):
            store.put(TunedRecord(
                workload_key=f"wl-{label}", hardware_key=hw_key, family_key="fam", batch_size=1,
                model_label=label, config=best.user_attrs["config"], config_id="cfg-x",
                latency=winner, baselines=baselines, speedup=3.3 / winner["median_ms"],
                torch_version="2.14.1", study_name=name, hardware=hardware))
    return study
