"""Trial workers forked from the zygote: fresh processes all the same, and a fallback when it fails."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from autotune import zygote
from autotune.models import ModelSpec
from autotune.worker import EAGER, TrialFailure, WorkerProcess, WorkerSpec
from tuning import process_state, worker_pythonpath

MODEL = ModelSpec("tuner_models:faulty_cnn").to_dict()


@pytest.fixture(autouse=True)
def fresh_zygote(monkeypatch):
    """Each test starts from no zygote, and leaves none behind."""
    monkeypatch.setenv("PYTHONPATH", worker_pythonpath())
    monkeypatch.delenv("AUTOTUNE_WORKER_START", raising=False)
    monkeypatch.setattr(zygote, "_zygote", None)
    monkeypatch.setattr(zygote, "_zygote_failed", False)
    yield
    if zygote._zygote is not None:
        zygote._zygote.close()
        zygote._zygote.process.wait(timeout=60)


def spec(tmp_path, **fields):
    return WorkerSpec(model=MODEL, candidate=EAGER, reference_path=str(tmp_path / "reference.pt"),
                      **fields)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_a_forked_worker_is_a_fresh_process_on_its_own_cores(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))[:1]
    with WorkerProcess(spec(tmp_path, threads=0), cpus=cpus) as worker:
        ready = worker.wait_ready(120)
        pid = worker.process.pid
        assert parent_of(pid) == zygote._zygote.process.pid, "not forked from the zygote"
        assert os.getsid(pid) == pid, "its own session: Ctrl-C in the terminal reaches only the tuner"
        assert ready["cpus"] == cpus
        assert ready["threads"] == len(cpus), "OpenMP sized to the worker's cores, not the zygote's"
        assert worker.measure(60, warmup_count=1, warmup_seconds=0, min_runs=3, min_seconds=0)["stats"]
    assert worker.process.returncode == 0


def test_workers_share_a_zygote_see_their_own_variables_and_report_their_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("FAULT_PLAN", "3:segfault")
    with WorkerProcess(spec(tmp_path, env={"AUTOTUNE_TRIAL_NUMBER": "2"})) as worker:
        worker.wait_ready(120)
    first = zygote._zygote.process.pid
    # trial 3's number reaches the model after the fork: it is the one that crashes
    with WorkerProcess(spec(tmp_path, env={"AUTOTUNE_TRIAL_NUMBER": "3"})) as worker:
        with pytest.raises(TrialFailure, match="crashed: SIGSEGV") as failure:
            worker.wait_ready(120)
    assert zygote._zygote.process.pid == first, "the same zygote forked it"
    assert failure.value.kind == "crash" and worker.process.returncode == -signal.SIGSEGV
    # a variable that may be read at import time needs a zygote started with it
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "1")
    with WorkerProcess(spec(tmp_path)) as worker:
        worker.wait_ready(120)
        assert parent_of(worker.process.pid) == zygote._zygote.process.pid != first


def test_a_zygote_that_cannot_start_falls_back_to_exec_with_one_warning(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "broken"
    (broken / "torchvision").mkdir(parents=True)
    (broken / "torchvision" / "__init__.py").write_text("raise ImportError('torchvision broken on purpose')\n")
    # the test model needs no torchvision, so an exec'd worker runs; the zygote preloads it and fails
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(broken), worker_pythonpath()]))
    with caplog.at_level(logging.WARNING, logger="autotune"):
        with WorkerProcess(spec(tmp_path)) as worker:
            worker.wait_ready(120)
            assert parent_of(worker.process.pid) == os.getpid()
        # the next worker does not try again: it is exec'd at once, without a second warning
        assert zygote.start_worker("autotune.worker:_child_main", dict(os.environ), None, 1, 1) is None and zygote._zygote is None
    warnings = [r.getMessage() for r in caplog.records if "preloaded process" in r.getMessage()]
    assert len(warnings) == 1 and "torchvision broken on purpose" in warnings[0], warnings


def test_workers_and_their_zygote_die_with_a_killed_tuner(tmp_path, monkeypatch):
    # the worker hangs in the model, deaf to its closed stdin: only the kill chain can end it
    monkeypatch.setenv("FAULT_PLAN", "0:hang")
    monkeypatch.setenv("FAULT_MARKER_DIR", str(tmp_path))
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import time
        from autotune import zygote
        from autotune.worker import EAGER, WorkerProcess, WorkerSpec
        worker = WorkerProcess(WorkerSpec(model={MODEL!r}, candidate=EAGER,
                                          reference_path={str(tmp_path / "reference.pt")!r},
                                          env={{"AUTOTUNE_TRIAL_NUMBER": "0"}}))
        with open({str(pids)!r} + ".tmp", "w") as f:
            f.write(f"{{zygote._zygote.process.pid}} {{worker.process.pid}}")
        time.sleep(600)
    """)
    tuner = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 180
    while not (tmp_path / "hanging-0").exists():
        assert tuner.poll() is None and time.monotonic() < deadline, "the worker never reached its hang"
        time.sleep(0.1)
    started = [int(pid) for pid in (tmp_path / "pids.tmp").read_text().split()]
    assert all(process_state(pid) not in ("Z", "gone") for pid in started)
    tuner.send_signal(signal.SIGKILL)
    tuner.wait()
    deadline = time.monotonic() + 30
    while any(process_state(pid) not in ("Z", "gone") for pid in started):
        assert time.monotonic() < deadline, "a worker or the zygote outlived the tuner"
        time.sleep(0.1)



def test_a_worker_whose_zygote_died_is_a_lost_trial_not_a_failing_config(tmp_path, monkeypatch):
    monkeypatch.setenv("FAULT_PLAN", "0:hang")
    monkeypatch.setenv("FAULT_MARKER_DIR", str(tmp_path))
    with WorkerProcess(spec(tmp_path, env={"AUTOTUNE_TRIAL_NUMBER": "0"})) as worker:
        deadline = time.monotonic() + 120
        while not (tmp_path / "hanging-0").exists():
            assert time.monotonic() < deadline, "the worker never reached its hang"
            time.sleep(0.1)
        zygote._zygote.process.kill()  # e.g. the kernel's OOM killer chose it
        with pytest.raises(TrialFailure, match="zygote that started this worker died") as failure:
            worker.wait_ready(60)
    assert failure.value.kind == "interrupted", "a crash would mark the config as failing for good"
    # the next worker gets a new zygote
    with WorkerProcess(spec(tmp_path, env={"AUTOTUNE_TRIAL_NUMBER": "1"})) as worker:
        worker.wait_ready(120)


def _pipes_and_sockets(pid: int) -> set[str]:
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("pipe:", "socket:")):
            held.add(target)
    return held


def test_a_worker_holds_no_pipe_of_the_zygote_or_of_another_worker(tmp_path, monkeypatch):
    # a stray copy of another worker's stdin or reply pipe would keep its EOF from arriving: a
    # crash would read as a timeout, and a closed tuner would leave the worker waiting forever
    monkeypatch.setenv("FAULT_PLAN", "0:hang,1:hang")
    monkeypatch.setenv("FAULT_MARKER_DIR", str(tmp_path))
    with WorkerProcess(spec(tmp_path, env={"AUTOTUNE_TRIAL_NUMBER": "0"})) as first, \
            WorkerProcess(spec(tmp_path, env={"AUTOTUNE_TRIAL_NUMBER": "1"})) as second:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"hanging-{n}").exists() for n in (0, 1)):
            assert time.monotonic() < deadline, "the workers never reached their hang"
            time.sleep(0.1)
        zygote_held = _pipes_and_sockets(zygote._zygote.process.pid)
        first_held = _pipes_and_sockets(first.process.pid)
        second_held = _pipes_and_sockets(second.process.pid)
        assert first_held and second_held, "each has its stdin and reply pipes"
        assert not second_held & zygote_held, "the zygote's socket, wakeup or status pipes leaked"
        assert not first_held & zygote_held
        assert not first_held & second_held, "one worker holds another's pipes"
        first.kill()
        second.kill()


def test_inductor_setting_its_cache_dir_after_the_prestart_keeps_the_prestarted_zygote(monkeypatch):
    # `autotune run` prestarts the zygote before it imports torch, which sets
    # TORCHINDUCTOR_CACHE_DIR; a zygote restarted for that paid its 9 s of imports twice
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored after the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    zygote.prestart()
    prestarted = zygote._zygote
    try:
        assert prestarted is not None
        cache_dir()
        assert "TORCHINDUCTOR_CACHE_DIR" in os.environ
        assert zygote._zygote_for(dict(os.environ)) is prestarted
    finally:
        zygote.shutdown()


def test_a_run_that_fails_in_process_leaves_no_zygote_importing_behind(monkeypatch):
    from autotune import cli

    prestarted = []
    prestart = zygote.prestart
    monkeypatch.setattr(zygote, "prestart", lambda: (prestart(), prestarted.append(zygote._zygote)))

    def fails(args):
        raise RuntimeError("not an AutotuneError")

    monkeypatch.setattr(cli, "cmd_run", fails)
    with pytest.raises(RuntimeError, match="not an AutotuneError"):
        cli.main(["run", "--model", "tuner_models:faulty_cnn"])
    assert prestarted and prestarted[0] is not None
    assert zygote._zygote is None
    assert prestarted[0].process.wait(timeout=30) is not None
