"""Compile-time lookup of tuned configs. Never breaks a compile: any problem means 'no config'."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy.exc import OperationalError

from .config import BackendConfig
from .errors import RecordError, StoreError
from .fingerprint import hardware_key
from .notices import warn_once
from .quantization import INT8, QuantizedModel
from .store import ConfigStore, TunedRecord, checked_record

log = logging.getLogger("backend")

LOOKUP_BUSY_TIMEOUT_MS = 200
# A lookup that failed this slowly (an unreachable server's connect timeout) is not tried again
# on the same store for a while: a model with graph breaks would wait that long for every graph.
SLOW_FAILURE_S = 1.0
RETRY_SLOW_STORE_AFTER_S = 60.0


@dataclass(frozen=True)
class Found:
    config: BackendConfig
    record: TunedRecord
    how: str  # "exact" or "nearest batch N"
    quantized: QuantizedModel | None = None  # an int8 record's model

    def describe(self) -> str:
        return (f"store ({self.how}, study {self.record.study_name}, "
                f"{self.record.speedup:.2f}x over the backend default when tuned)")


_lock = threading.Lock()
_stores: dict[str, ConfigStore] = {}
_cache: dict[tuple, Found | None] = {}
_slow_until: dict[str, float] = {}  # url -> when its lookups may be tried again
_generation = 0  # bumped by clear_cache: a lookup begun before it must not cache its answer


def _store(url: str) -> ConfigStore:
    with _lock:
        if url not in _stores:
            # a locked store must cost a compile milliseconds, not the tuner's 30 s patience
            _stores[url] = ConfigStore(url, read_only=True, busy_timeout_ms=LOOKUP_BUSY_TIMEOUT_MS)
        return _stores[url]


def clear_cache() -> None:
    """Forget cached lookups and open stores (tests, and tools that just wrote the store)."""
    global _generation
    with _lock:
        _generation += 1
        _cache.clear()
        _slow_until.clear()
        for store in _stores.values():
            store.close()
        _stores.clear()


def find(keys: dict[str, Any], url: str, weights: Callable[[], str] | None = None) -> Found | None:
    """The stored config for this graph on this hardware: exact key, else the nearest batch size.

    An int8 record applies only to the weights it was calibrated for (``weights()``: their
    digest); for other weights the best record that is not int8 or was calibrated for them
    applies, and when that is not int8, one warning says why.
    A missing store is silent: that is every process before the first ``autotune run``. Any other
    problem (a corrupt, locked, empty or foreign database, a newer schema, a stored config this
    version cannot build) costs one warning and leaves the defaults in place; an int8 record whose
    quantized model is damaged gives way to the best record that is not int8.
    """
    found = _cached(url, keys)
    if found is not None and found.quantized is not None and weights is not None:
        try:
            digest = weights()
        except Exception as exc:  # a weight we cannot read: int8 is not for these weights
            digest = f"unreadable ({type(exc).__name__}: {exc})"
        if digest != found.quantized.weights_digest:
            skipped = found
            # another checkpoint's int8 record must not hide the one for these weights
            found = _cached(url, keys, digest)
            if found is None or found.quantized is None:
                warn_once(f"int8-weights:{skipped.record.id}:{digest}",
                          f"ipex backend: stored int8 config {skipped.config.config_id} was "
                          "calibrated for other weights than this model's; not applying it (tune "
                          "again with --data to quantize these weights); using the best other "
                          "stored config, if any")
    return found


def _cached(url: str, keys: dict[str, Any], weights_digest: str | None = None) -> Found | None:
    """``weights_digest``: only int8 records calibrated for these weights; None: any record."""
    cache_key = (url, keys["workload_key"], keys["family_key"], keys["batch_size"], weights_digest)
    if cache_key in _cache:
        return _cache[cache_key]
    if time.monotonic() < _slow_until.get(url, 0.0):
        return None  # not cached: the store is tried again once the wait is over
    found = None
    start = None
    generation = _generation
    try:
        store = _store(url)
        start = time.monotonic()
        found = _find_in(store, keys, weights_digest)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged row raises, the model must still run
        failed_s = time.monotonic() - start if start is not None else 0.0
        # the database did not answer, slowly: a bad record or a locked file is not that
        slow = isinstance(exc.__cause__, OperationalError) and failed_s >= SLOW_FAILURE_S
        if slow and generation == _generation:  # a clear_cache() since forgets this wait too
            _slow_until[url] = time.monotonic() + RETRY_SLOW_STORE_AFTER_S
        warn_once(f"lookup:{type(exc).__name__}",
                  f"ipex backend: tuned-config lookup failed, using defaults ({exc})"
                  + (f"; it took {failed_s:.0f} s, so this process asks that store again only "
                     f"after {RETRY_SLOW_STORE_AFTER_S:.0f} s" if slow else ""))
        if slow:
            return None
    with _lock:
        if generation == _generation:  # else the store may have changed since it answered
            _cache[cache_key] = found
    return found


def _find_in(store: ConfigStore, keys: dict[str, Any], weights_digest: str | None) -> Found | None:
    if store.is_missing():
        return None
    if not store.has_tables():
        raise StoreError(f"config store {store.shown_url} holds no autotune tables (an empty file "
                         "or another program's database)")
    hw = hardware_key()
    record = store.best(keys["workload_key"], hw, weights_digest=weights_digest)
    how = "exact"
    if record is None and keys["batch_size"] is not None:
        record = store.nearest(keys["family_key"], hw, keys["batch_size"])
        if record is None:
            return None
        how = f"nearest tuned batch size {record.batch_size}"
        log.info("ipex backend: no config tuned for batch size %s; using the one tuned for "
                 "batch size %s", keys["batch_size"], record.batch_size)
    if record is None:
        return None
    checked_record(record.to_dict())  # a damaged row (hand-edited, a foreign writer) is a warning
    config = BackendConfig(record.config)
    if config.dtype != INT8:
        return Found(config, record, how)
    try:
        precision = store.precision(record.id)
        if precision is None or precision.quantized is None:  # put() refuses these: a foreign writer
            raise RecordError("it has no quantized model")
    # a damaged row, not a database error: those take the defaults, as everywhere in the lookup
    except RecordError as exc:  # one damaged int8 row must not hide the float record beside it
        warn_once(f"int8-damaged:{record.id}",
                  f"ipex backend: stored int8 config {config.config_id} (record {record.id}) cannot "
                  f"be applied ({exc}); using the best stored config that is not int8, if any")
        fallback = store.best(keys["workload_key"], hw, int8=False)
        if fallback is None:
            return None
        checked_record(fallback.to_dict())
        return Found(BackendConfig(fallback.config), fallback, how)
    return Found(config, record, how, precision.quantized)
