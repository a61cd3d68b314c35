"""Seeing interference: a real busy process on our cores is seen and named; our own are not."""

import os
import subprocess
import sys
import time

import pytest

from autotune import quiet

SPIN = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"


def spinner_outside_our_tree(cpu: int) -> int:
    """A busy loop pinned to ``cpu`` whose parent exits, as another user's program would be."""
    out = subprocess.run(
        ["sh", "-c", f"taskset -c {cpu} {sys.executable} -c '{SPIN}' >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.fixture
def busy_core():
    cpu = sorted(os.sched_getaffinity(0))[0]
    pid = spinner_outside_our_tree(cpu)
    time.sleep(0.3)
    yield cpu, pid
    os.kill(pid, 9)


def test_a_busy_process_on_our_core_is_seen_and_named(busy_core):
    cpu, pid = busy_core
    seen = quiet.look([cpu])
    assert seen.busy and seen.other_cores > 0.7
    assert f"pid {pid} (" in " ".join(seen.others)
    assert f"pid {pid}" in seen.describe([cpu]) and f"cores {cpu}" in seen.describe([cpu])


def test_our_own_children_are_not_interference():
    cpu = sorted(os.sched_getaffinity(0))[0]
    child = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", SPIN])
    try:
        time.sleep(0.3)
        seen = quiet.look([cpu])
        assert f"pid {child.pid} " not in " ".join(seen.others)
    finally:
        child.kill()
        child.wait()


def test_waiting_says_why_and_gives_up_at_the_limit(busy_core):
    cpu, pid = busy_core
    heard = []
    start = time.monotonic()
    seen = quiet.wait_for_quiet([cpu], max_wait_s=1.5, say=heard.append)
    assert 1.5 <= time.monotonic() - start < 5
    assert seen.busy
    assert heard and heard[0].startswith("waiting for a quiet machine: 1 other busy process on "
                                         f"cores {cpu}") and f"pid {pid}" in heard[0]
