"""Headless Chromium without Playwright: rendered DOM, console errors and screenshots."""

import os
import shutil
import subprocess

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0"]


def render(url, profile_dir, *, screenshot=None, size="1400,2000"):
    """(rendered DOM, Chromium's log with the page's console lines); saves a screenshot too."""
    chromium = shutil.which("chromium")
    assert chromium, "headless Chromium is missing: apt-get install chromium (.ci/run does)"
    base = [chromium, *FLAGS, f"--user-data-dir={profile_dir}", f"--window-size={size}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    if screenshot:
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, screenshot)
        shot = subprocess.run([*base, f"--screenshot={path}", url], capture_output=True, text=True,
                              timeout=120)
        assert shot.returncode == 0 and os.path.getsize(path) > 10_000, shot.stderr[-2000:]
    return dom.stdout, dom.stderr


def js_errors(log):
    return [line for line in log.splitlines() if "Uncaught" in line]
