"""Warnings the backend says once per process: a fallback must not flood a serving log."""

from __future__ import annotations

import logging

log = logging.getLogger("backend")

_said: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log ``message`` the first time ``key`` is seen (a kind of problem, not its numbers)."""
    if key not in _said:
        _said.add(key)
        log.warning(message)
