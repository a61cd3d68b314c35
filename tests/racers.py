"""Processes that open one new store at the same moment (spawned by test_bad_input.py)."""

from __future__ import annotations


def open_together(kind: str, urls: list[str], barrier, errors) -> None:
    """For each URL: wait at the barrier with the other racers, then open the store as ``kind``
    does; put what failed on ``errors``."""
    from autotune.models import ModelSpec
    from autotune.tuner import TuneRequest, open_study
    from backend.store import ConfigStore

    for url in urls:
        barrier.wait(timeout=600)  # the first wait also covers the others importing torch
        try:
            if kind == "tuner":
                open_study(TuneRequest(model=ModelSpec("resnet18"), storage=url))
            elif kind == "store":
                ConfigStore(url).close()
            else:  # a dashboard or a lookup inside torch.compile: read-only
                with ConfigStore(url, read_only=True) as store:
                    store.list()
        except Exception as exc:  # noqa: BLE001 - every failure is the finding
            errors.put(f"{kind} on {url}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
