"""Shared helpers for tests that run the real tuner or check file:line errors."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from autotune.bench import MeasureSettings

TESTS = os.path.dirname(__file__)
# Short measurements: these tests check behaviour, not speed.
QUICK_MEASURE = MeasureSettings(warmup_count=2, warmup_seconds=0.1, min_runs=5, min_seconds=0.2)
# One quiet round picks the leader: these tests check the flow, not the pick (test_decisions does).
SELECTION_ROUNDS = 1


def worker_pythonpath() -> str:
    """PYTHONPATH under which trial workers can import the test models."""
    return os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))


def tuner_argv(url, study_name, trials, model="tuner_models:faulty_cnn"):
    return [sys.executable, "-m", "autotune.cli", "run", "--model", model, "--space", "quick",
            "--trials", str(trials), "--study-name", study_name, "--storage", url, "--seed", "0",
            "--measure-seconds", "0.2", "--confirm-rounds", "2", "--max-confirm-rounds", "2",
            "--confirm-top", "1", "--selection-rounds", str(SELECTION_ROUNDS), "--max-wait", "5s"]


def finished_trials(db, study_name) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "select count(*) from trials t join studies s on s.study_id = t.study_id "
                "where s.study_name = ? and t.state in ('COMPLETE', 'PRUNED', 'FAIL')",
                (study_name,)).fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def start_tuner_hanging_in_trial(argv, db, study_name, trial, **popen):
    """Start `autotune run` whose trial ``trial`` hangs; return once its worker is hanging there.

    SIGINT is handled as in a terminal, even when this test runner was started with it ignored.
    """
    markers = os.path.join(os.path.dirname(db), "fault-markers")
    os.makedirs(markers, exist_ok=True)
    tuner = subprocess.Popen(argv, env={**os.environ, "FAULT_PLAN": f"{trial}:hang",
                                        "FAULT_MARKER_DIR": markers},
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                             **popen)
    hanging = os.path.join(markers, f"hanging-{trial}")
    deadline = time.monotonic() + 240
    while not os.path.exists(hanging):  # the fault writes it just before it sleeps
        assert tuner.poll() is None and time.monotonic() < deadline, f"tuner never reached trial {trial}"
        time.sleep(0.1)
    assert finished_trials(db, study_name) == trial
    return tuner


def assert_file_line_error(error_type, load, path, line, pieces):
    """``load(path)`` fails with an error that starts with path:line and names every piece."""
    with pytest.raises(error_type) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    for piece in pieces:
        assert piece in message, message


def process_state(pid: int) -> str:
    """The one-letter state in /proc/<pid>/stat ("Z": exited, not reaped), or "gone"."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
