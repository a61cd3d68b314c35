"""`autotune dashboard` over a real study database, and readers beside a live tuner."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import optuna
import pytest

from autotune.report import report_for
from browser import js_errors, render
from fake_studies import make_study
from tuning import SELECTION_ROUNDS, worker_pythonpath



def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, method="GET"):
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
        return json.load(r)


@contextmanager
def dashboard(storage_url):
    """`autotune dashboard` in a subprocess, answering; stopped with Ctrl-C at the end."""
    port = _free_port()
    # SIGINT handled as in a terminal, even when this test runner was started with it ignored
    server = subprocess.Popen([sys.executable, "-m", "autotune.cli", "dashboard", "--port", str(port),
                               "--storage", storage_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                _get(base + "/api/meta")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "dashboard never answered"
                time.sleep(0.3)
        yield base
    finally:
        server.send_signal(signal.SIGINT)
        try:
            out, _ = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0
    assert f"http://127.0.0.1:{port}/dashboard" in out


@pytest.fixture(scope="module")
def study_db(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'study.db'}"
    return url, make_study(url)


def test_dashboard_serves_the_study_and_its_trials_read_only(study_db, tmp_path):
    url, study = study_db
    with dashboard(url) as base:
        summaries = _get(base + "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == [study.study_name]
        study_id = summaries[0]["study_id"]
        detail = _get(f"{base}/api/studies/{study_id}")
        assert detail["name"] == study.study_name and len(detail["trials"]) == len(study.trials)
        attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
        assert {"config", "median_ms", "iqr_ms", "compile_s"} <= attrs
        with pytest.raises(urllib.error.HTTPError) as refused:  # the UI's delete button
            _get(f"{base}/api/studies/{study_id}", method="DELETE")
        assert refused.value.code == 403 and b"read-only" in refused.value.read()

        dom, log = render(f"{base}/dashboard/studies/{study_id}", tmp_path / "chromium",
                          screenshot="dashboard.png", size="1400,1000")
        assert study.study_name in dom and 'class="main-svg"' in dom
        assert not js_errors(log)
    assert len(optuna.load_study(study_name=study.study_name, storage=url).trials) == len(study.trials)


@pytest.mark.slow
def test_a_live_tuner_never_fails_while_the_dashboard_and_report_read(tmp_path):
    db = tmp_path / "live.db"
    url = f"sqlite:///{db}"
    markers = tmp_path / "markers"
    markers.mkdir()
    # trial 1's worker pauses mid-trial until told to go on: the reads below overlap a running
    # trial by construction, not by the luck of sleeps
    env = {**os.environ, "PYTHONPATH": worker_pythonpath(), "FAULT_PLAN": "1:pause",
           "FAULT_MARKER_DIR": str(markers)}
    tuner = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "run", "--model", "tuner_models:faulty_cnn", "--space",
         "quick", "--trials", "4", "--study-name", "live", "--storage", url, "--seed", "0",
         "--measure-seconds", "0.2", "--confirm-rounds", "2", "--max-confirm-rounds", "2",
         "--confirm-top", "1", "--selection-rounds", str(SELECTION_ROUNDS), "--max-wait", "5s"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (markers / "hanging-1").exists():
            assert tuner.poll() is None, tuner.stdout.read()
            assert time.monotonic() < deadline, "the tuner never reached trial 1"
            time.sleep(0.1)
        with dashboard(url) as base:
            for _ in range(3):
                for summary in _get(base + "/api/studies")["study_summaries"]:
                    _get(f"{base}/api/studies/{summary['study_id']}")
                assert "Optimization history" in report_for(url, study_name="live")
            running = _get(base + "/api/studies/1")["trials"]
            assert [t["state"] for t in running].count("Running") == 1, running
            (markers / "resume-1").touch()
            while tuner.poll() is None:  # a person looking, not a load test
                assert time.monotonic() < deadline + 600, "the tuner never finished"
                _get(base + "/api/studies/1")
                time.sleep(1)
            output = tuner.communicate(timeout=600)[0]
            final = _get(base + "/api/studies/1")
    finally:
        if tuner.poll() is None:
            tuner.kill()
    assert tuner.returncode == 0, output[-3000:]
    study = optuna.load_study(study_name="live", storage=url)
    for trial in study.trials:
        reason = trial.user_attrs.get("failure_reason", "")
        assert "locked" not in reason and "OperationalError" not in reason, reason
        # a trial measured twice beside hypervisor steal fails as noisy, by design: not the reads
        if trial.state == optuna.trial.TrialState.FAIL:
            assert trial.user_attrs.get("failure_kind") == "noisy", (trial.number, reason)
    assert len(final["trials"]) == len(study.trials) >= 4
    assert "winner" in study.user_attrs
    assert "vs torch.compile default" in report_for(url, study_name="live")
