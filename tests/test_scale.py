"""Scale out: workers on disjoint cores sharing a study; several tuners on one PostgreSQL study."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest

from autotune import cli
from autotune.models import ModelSpec
from autotune.tuner import Tuner, TuneRequest, open_study
from backend.fingerprint import hardware_key
from backend.store import ConfigStore
from tuning import QUICK_MEASURE, SELECTION_ROUNDS, tuner_argv, worker_pythonpath



@pytest.fixture(autouse=True)
def workers_import_test_models(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", worker_pythonpath())


@pytest.mark.slow
def test_three_tuners_share_a_postgres_study_and_survive_one_being_killed(postgres_url, tmp_path):
    trials = 6
    # whoever takes trial 1 hangs there, and says so with a marker file
    env = {**os.environ, "FAULT_PLAN": "1:hang", "FAULT_MARKER_DIR": str(tmp_path)}
    tuners = [subprocess.Popen(tuner_argv(postgres_url, "fleet", trials), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        # find the tuner holding trial 1 and SIGKILL it mid-trial
        deadline = time.monotonic() + 300
        while not (tmp_path / "hanging-1").exists():
            assert time.monotonic() < deadline, "no tuner ever started trial 1"
            time.sleep(0.1)
        study = optuna.load_study(study_name="fleet", storage=postgres_url)
        [trial] = [t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if t.number == 1]
        host, _, pid = trial.user_attrs["tuner"].partition(":")
        assert host == socket.gethostname()
        victim = next(t for t in tuners if t.pid == int(pid))
        # not reaped until its turn below: the survivors must see a zombie as dead
        victim.send_signal(signal.SIGKILL)
        outputs = {t.pid: t.communicate(timeout=600) for t in tuners}
    finally:
        for t in tuners:
            t.kill()
    survivors = [t for t in tuners if t is not victim]
    for t in survivors:
        assert t.returncode == 0, outputs[t.pid][1][-3000:]

    study = optuna.load_study(study_name="fleet", storage=postgres_url)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(trials)), "exactly the trials asked for, none lost or doubled"
    assert all(t.state.is_finished() for t in study.trials)
    killed = study.trials[1]
    assert killed.state == optuna.trial.TrialState.FAIL
    assert killed.user_attrs["failure_kind"] == "orphaned"
    # found by its dead pid (same host), not after the heartbeat's grace period
    assert f"the tuner (pid {victim.pid}) died" in killed.user_attrs["failure_reason"]
    # confirmation ran once: one tuner stored, the other says who did
    stored = [t for t in survivors if "stored in" in outputs[t.pid][0]]
    deferred = [t for t in survivors if re.search("is run by|were confirmed by", outputs[t.pid][0])]
    assert len(stored) == 1 and len(deferred) == 1
    records = [r for r in ConfigStore(postgres_url, read_only=True).list() if r.study_name == "fleet"]
    assert len(records) == 1


_TAKE_ALL = """
import json, pathlib, sys, time
from autotune.models import ModelSpec
from autotune.study_queue import claim_waiting_trial
from autotune.tuner import TuneRequest, open_study
url, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
claimed, other_claimed = pathlib.Path(sys.argv[4]), pathlib.Path(sys.argv[5])
study = open_study(TuneRequest(model=ModelSpec("resnet18"), storage=url, study_name="race"))
ready.touch()
deadline = time.monotonic() + 120
while not go.exists():
    assert time.monotonic() < deadline, "never told to start"
    time.sleep(0.01)
taken = []
while (trial := claim_waiting_trial(study)) is not None:
    taken.append(trial.number)
    if len(taken) == 1:
        # an event, not luck: both are inside their claim loops before either drains the queue
        claimed.touch()
        while not other_claimed.exists():
            assert time.monotonic() < deadline, "the other taker never claimed a trial"
            time.sleep(0.01)
print(json.dumps({"taken": taken}))
"""


def test_two_processes_never_claim_the_same_sqlite_trial(tmp_path):
    # SQLite ignores SELECT ... FOR UPDATE: without a write lock from the start of the claim,
    # both workers read WAITING and both run the trial (seen as a --jobs 2 flake)
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = open_study(TuneRequest(model=ModelSpec("resnet18"), storage=url, study_name="race"))
    for _ in range(60):
        study.enqueue_trial({})
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    claimed = [tmp_path / f"claimed-{i}" for i in range(2)]
    takers = [subprocess.Popen([sys.executable, "-c", _TAKE_ALL, url, str(ready[i]), str(go),
                                str(claimed[i]), str(claimed[1 - i])], stdout=subprocess.PIPE,
                               text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):  # both have the study open: start together
            assert time.monotonic() < deadline, "a taker never opened the study"
            assert all(p.poll() is None for p in takers), "a taker died before starting"
            time.sleep(0.05)
        go.touch()
        runs = [json.loads(p.communicate(timeout=120)[0]) for p in takers]
    finally:
        for p in takers:
            p.kill()
    taken = [r["taken"] for r in runs]
    assert all(taken), f"both takers claim concurrently by construction: {taken}"
    assert not set(taken[0]) & set(taken[1]), "a trial was claimed by both processes"
    assert sorted(taken[0] + taken[1]) == list(range(60))


@pytest.mark.slow
def test_jobs_2_runs_two_single_core_workers_pinned_to_their_cores(tmp_path):
    request = TuneRequest(model=ModelSpec("tuner_models:small_cnn"), space="quick", trials=4,
                          timeout_s=None, storage=f"sqlite:///{tmp_path / 'jobs.db'}", seed=0,
                          measure=QUICK_MEASURE, confirm_measure=QUICK_MEASURE,
                          confirm_rounds=2, confirm_top=1, jobs=2, cpus=[0, 1],
                          confirm_max_rounds=2, max_wait_s=5, selection_rounds=SELECTION_ROUNDS)
    result = Tuner(request).run()
    assert result.winner is not None and result.trials_total == 4
    study = optuna.load_study(study_name=result.study_name, storage=request.storage_url)
    measured = [t for t in study.trials if "cpus" in t.user_attrs]
    assert measured, "no trial reported where it ran"
    for trial in measured:
        assert trial.user_attrs["cpus"] in ([0], [1])
        assert trial.user_attrs["threads"] == 1 and trial.user_attrs["config"]["threads"] == 1
    assert {tuple(t.user_attrs["cpus"]) for t in measured} == {(0,), (1,)}, "both workers ran trials"
    assert study.user_attrs["hardware"]["cores"] == 1
    record = ConfigStore(request.storage_url, read_only=True).list()[0]
    assert record.hardware["cores"] == 1 and record.config["threads"] == 1


def test_jobs_beyond_the_cores_is_a_clear_error(capsys):
    code = cli.main(["run", "--model", "resnet18", "--jobs", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "--jobs 64" in err and "choose 1 to" in err


def test_worker_on_other_hardware_refuses_to_join(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    # a study tuned for one core; this host with two usable cores is another hardware key
    first_core = sorted(os.sched_getaffinity(0))[:1]
    one_core = TuneRequest(model=ModelSpec("tuner_models:small_cnn"), space="quick", storage=url,
                           study_name="mixed", cpus=first_core)
    open_study(one_core)
    code = cli.main(["run", "--model", "tuner_models:small_cnn", "--space", "quick",
                     "--storage", url, "--study-name", "mixed"])
    err = capsys.readouterr().err
    this_host = TuneRequest(model=ModelSpec("tuner_models:small_cnn"))
    assert code == 2
    assert hardware_key(one_core.hardware) in err and hardware_key(this_host.hardware) in err


def test_a_run_for_other_input_shapes_refuses_the_study_of_the_old_ones(tmp_path, capsys):
    # the study name has the batch size but not the shapes: the second run found its budget
    # done, confirmed nothing and stored nothing for the new graph
    url = f"sqlite:///{tmp_path / 'shapes.db'}"
    open_study(TuneRequest(model=ModelSpec("user_models:module_only", input_shapes=(3, 8, 8)),
                           space="quick", storage=url))
    code = cli.main(["run", "--model", "user_models:module_only", "--input-shape", "1,3,16,16",
                     "--space", "quick", "--storage", url])
    err = capsys.readouterr().err
    assert code == 2
    assert "tunes name user_models:module_only, batch_size 1, input_shape [3, 8, 8]" in err
    assert "asks for name user_models:module_only, batch_size 1, input_shape [3, 16, 16]" in err
    assert "--study-name" in err


def test_cpus_outside_this_process_affinity_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--model", "resnet18", "--cpus", "0,999"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "cores '0,999' are not all usable here; usable: " in err
