"""The best-config store: every measured config is a record; "best" is a query over them.

Written by the tuner, read by the backend at compile time. Any SQLAlchemy URL works; SQLite is
the default. Tables are prefixed ``autotune_`` because Optuna's tables share the database.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import random
import re
import sqlite3
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import quote

from sqlalchemy import (DateTime, Float, Index, Integer, LargeBinary, String, Text, create_engine,
                        delete, event, func, inspect, select, update)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.types import TypeDecorator

from .config import BackendConfig
from .errors import KnobError, RecordError, StoreError
from .fingerprint import hardware_key as hardware_key_of

try:
    from lzma import LZMAError
except ImportError:  # a Python built without liblzma: zipfile then refuses LZMA members itself
    LZMAError = OSError

SCHEMA_VERSION = 1
STORAGE_ENV = "IPEX_AUTOTUNE_STORAGE"
URL_EXAMPLES = "sqlite:////abs/path.db or postgresql://user@host/db"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def per_user_store_path() -> str:
    """The SQLite file under ``$XDG_DATA_HOME`` (~/.local/share) that is the default store."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(os.path.abspath(data_home), "ipex-autotune", "autotune.db")


def default_storage_url() -> str:
    """``$IPEX_AUTOTUNE_STORAGE``, else the per-user SQLite file."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    return "sqlite:///" + per_user_store_path()


T = TypeVar("T")
CREATION_RACE_SECONDS = 30.0


def _is_creation_race(error: BaseException) -> bool:
    """A table, row or lock that another process creating the same database holds right now."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, IntegrityError):
            return True
        text = str(getattr(error, "orig", None) or error).lower()
        if any(sign in text for sign in ("already exists", "database is locked", "unique constraint",
                                         "duplicate key")):
            return True
        error = error.__cause__ or error.__context__
    return False


def retry_creation_race(create: Callable[[], T], *, seconds: float = CREATION_RACE_SECONDS) -> T:
    """``create()``, retried while another process is creating the same tables at that moment.

    Creating tables checks for them first and then creates them, so two processes opening a new
    database together can both decide to create: the loser fails with "already exists" or a
    duplicate version row. Retried, it finds them in place and joins.
    """
    deadline = time.monotonic() + seconds
    pause = 0.02
    while True:
        try:
            return create()
        except Exception as e:  # noqa: BLE001 - every driver and library wraps these differently
            if not _is_creation_race(e) or time.monotonic() > deadline:
                raise
        time.sleep(pause * (1 + random.random()))  # jitter: the racers must not retry in step
        pause = min(pause * 2, 0.5)


def _as_utc(moment: datetime) -> datetime:
    # Naive datetimes are taken as UTC: the databases store them without a zone.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@dataclass
class TunedRecord:
    """One measured config for one workload on one kind of hardware."""

    workload_key: str
    hardware_key: str
    family_key: str  # graph key without the batch size: finds the nearest tuned batch
    batch_size: int | None
    model_label: str
    config: dict[str, Any]  # knob values
    config_id: str
    latency: dict[str, Any]  # median_ms, p10_ms, p90_ms, iqr_ms, runs
    baselines: dict[str, dict[str, Any]]  # e.g. "torch.compile default" -> latency stats
    speedup: float  # vs the backend default
    torch_version: str
    study_name: str
    hardware: dict[str, Any]
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["created_at"] = _as_utc(self.created_at).isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TunedRecord":
        values = dict(data)
        if isinstance(values.get("created_at"), str):
            values["created_at"] = _as_utc(datetime.fromisoformat(values["created_at"]))
        return cls(**values)


HARDWARE_FIELDS = ("cpu", "features", "cores", "sockets", "machine")
# config_id is recomputed; hardware_key is recomputed or checked on its own
_TEXT_FIELDS = ("workload_key", "family_key", "model_label", "torch_version", "study_name")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_stats(name: str, stats: Any) -> dict[str, Any]:
    if not isinstance(stats, Mapping):
        raise RecordError(f"{name}: got {stats!r}; expected a mapping with a positive median_ms")
    median = stats.get("median_ms")
    if not _number(median) or median <= 0:
        raise RecordError(f"{name}.median_ms: got {median!r}; expected a positive number of ms")
    for key, value in stats.items():
        if key.endswith("_ms") and value is not None and not (_number(value) and value >= 0):
            raise RecordError(f"{name}.{key}: got {value!r}; expected a number of ms, at least 0")
    return dict(stats)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_evidence(latency: dict[str, Any]) -> None:
    """The noise and speedup evidence a confirmation stores beside the latency, when present:
    `ls`, `show`, `explain` and the report read every one of these fields."""
    noise = latency.get("noise")
    if noise is not None:
        shape = "a mapping with iqr and median_iqr (fractions, at least 0), rounds and quiet_rounds (counts)"
        if not (isinstance(noise, Mapping) and all(_number(noise.get(k)) and noise[k] >= 0
                                                   for k in ("iqr", "median_iqr"))
                and _count(noise.get("rounds")) and _count(noise.get("quiet_rounds"))
                and noise["quiet_rounds"] <= noise["rounds"]):
            raise RecordError(f"latency.noise: got {noise!r}; expected {shape}")
    verdict = latency.get("speedup_evidence")
    if verdict is not None:
        if not (isinstance(verdict, Mapping) and verdict.get("outcome") in ("faster", "slower", "undecided")
                and _number(verdict.get("p_value")) and 0 <= verdict["p_value"] <= 1
                and _count(verdict.get("rounds"))):
            raise RecordError(f"latency.speedup_evidence: got {verdict!r}; expected a mapping with "
                              "outcome (faster, slower or undecided), p_value in [0, 1] and rounds")


def _check_hardware_facts(hardware: Mapping[str, Any]) -> None:
    """Facts of the types hardware_info() gives: other types make a key no host ever has."""
    for name in ("cpu", "machine"):
        if not isinstance(hardware[name], str):
            raise RecordError(f"hardware.{name}: got {hardware[name]!r}; expected text")
    for name in ("cores", "sockets"):
        if isinstance(hardware[name], bool) or not isinstance(hardware[name], int) or hardware[name] < 1:
            raise RecordError(f"hardware.{name}: got {hardware[name]!r}; expected a positive integer")
    features = hardware["features"]
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise RecordError(f"hardware.features: got {features!r}; expected a list of CPU flags, "
                          "e.g. [avx2, fma]")


def checked_record(data: Mapping[str, Any], *, recompute_hardware_key: bool = False) -> TunedRecord:
    """A record that holds the schema, with its config normalised and its ``config_id`` recomputed.

    Raises RecordError naming the field (or knob) and what would be valid. The config is
    checked against the knobs but not against this CPU: a store may hold other hardware's
    configs. ``recompute_hardware_key`` also derives the hardware key from the hardware facts,
    for records that come from outside (``autotune import``).
    """
    values = _present_fields(data, recompute_hardware_key)
    _check_keys(values, recompute_hardware_key)
    values["config"], values["config_id"] = _checked_config(values["config"])
    values["latency"] = _check_stats("latency", values["latency"])
    _check_evidence(values["latency"])
    if not isinstance(values["baselines"], Mapping):
        raise RecordError(f"baselines: got {values['baselines']!r}; expected a mapping of "
                          "candidate name to latency stats")
    values["baselines"] = {str(name): _check_stats(f"baselines[{name!r}]", stats)
                           for name, stats in values["baselines"].items()}
    if not _number(values["speedup"]) or values["speedup"] <= 0:
        raise RecordError(f"speedup: got {values['speedup']!r}; expected a positive number")
    if not isinstance(values["hardware"], Mapping):
        raise RecordError(f"hardware: got {values['hardware']!r}; expected a mapping with "
                          f"{', '.join(HARDWARE_FIELDS)}")
    if recompute_hardware_key:
        absent = [key for key in HARDWARE_FIELDS if key not in values["hardware"]]
        if absent:
            raise RecordError(f"hardware: missing {', '.join(absent)}; expected a mapping with "
                              f"{', '.join(HARDWARE_FIELDS)}")
        _check_hardware_facts(values["hardware"])
        values["hardware_key"] = hardware_key_of(dict(values["hardware"]))
    values["created_at"] = _checked_time(values.get("created_at", datetime.now(timezone.utc)))
    values["id"] = None
    return TunedRecord(**values)


def _present_fields(data: Any, recompute_hardware_key: bool) -> dict[str, Any]:
    """The record's fields, every required one present and no unknown one."""
    if not isinstance(data, Mapping):
        raise RecordError(f"got {type(data).__name__}; expected a mapping of record fields")
    fields = {f.name for f in dataclasses.fields(TunedRecord)}
    optional = {"id", "created_at", "config_id"}  # recomputed, so a hand-written file may omit it
    if recompute_hardware_key:
        optional.add("hardware_key")
    unknown = sorted(set(map(str, data)) - fields)
    if unknown:
        raise RecordError(f"unknown field(s) {', '.join(unknown)}; valid fields: "
                          f"{', '.join(sorted(fields))}")
    missing = sorted(fields - optional - set(data))
    if missing:
        raise RecordError(f"missing field(s) {', '.join(missing)}")
    return {"config_id": "", "hardware_key": "", **data}


def _check_keys(values: Mapping[str, Any], recompute_hardware_key: bool) -> None:
    if not recompute_hardware_key and (not isinstance(values["hardware_key"], str)
                                       or not values["hardware_key"]):
        raise RecordError(f"hardware_key: got {values['hardware_key']!r}; expected text")
    for name in _TEXT_FIELDS:
        if not isinstance(values[name], str) or (not values[name] and name != "family_key"):
            raise RecordError(f"{name}: got {values[name]!r}; expected text")
    if not values["workload_key"].startswith("wl-"):
        raise RecordError(f"workload_key: got {values['workload_key']!r}; expected a graph key "
                          "starting with 'wl-'")
    batch = values["batch_size"]
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise RecordError(f"batch_size: got {batch!r}; expected a positive integer or null")


def _checked_config(config: Any) -> tuple[dict[str, Any], str]:
    """The config's plain, normalised values and its id."""
    if not isinstance(config, Mapping):
        raise RecordError(f"config: got {config!r}; expected a mapping of knob values")
    try:
        checked = BackendConfig(config, check_cpu=False)
    except KnobError as e:
        raise RecordError(f"config: {e}") from None
    return checked.to_dict(), checked.config_id


def _checked_time(created: Any) -> datetime:
    given = created
    if isinstance(created, str):
        try:
            created = datetime.fromisoformat(created)
        except ValueError:
            created = None
    if not isinstance(created, datetime):
        raise RecordError(f"created_at: got {given!r}; expected an ISO 8601 "
                          "time such as 2026-12-02T10:00:00+00:00")
    return _as_utc(created)


class _JSONText(TypeDecorator):
    """JSON kept as plain text, so every backend stores and shows it the same way."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else json.dumps(value, sort_keys=True)

    def process_result_value(self, value, dialect):
        return None if value is None else json.loads(value)


class _Base(DeclarativeBase):
    pass


class _Meta(_Base):
    __tablename__ = "autotune_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class _Claim(_Base):
    """One row per one-time job ("confirm study S"): the primary key makes the claim atomic."""

    __tablename__ = "autotune_claims"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime)


class _Record(_Base):
    __tablename__ = "autotune_records"
    __table_args__ = (
        Index("ix_autotune_records_workload_hardware", "workload_key", "hardware_key"),
        Index("ix_autotune_records_family_hardware", "family_key", "hardware_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workload_key: Mapped[str] = mapped_column(String(64))
    hardware_key: Mapped[str] = mapped_column(String(64))
    family_key: Mapped[str] = mapped_column(String(64))
    batch_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_label: Mapped[str] = mapped_column(String(255))
    config: Mapped[dict] = mapped_column(_JSONText)
    config_id: Mapped[str] = mapped_column(String(64))
    latency: Mapped[dict] = mapped_column(_JSONText)
    median_ms: Mapped[float] = mapped_column(Float)  # copy of latency["median_ms"], to sort in SQL
    baselines: Mapped[dict] = mapped_column(_JSONText)
    speedup: Mapped[float] = mapped_column(Float)
    torch_version: Mapped[str] = mapped_column(String(64))
    study_name: Mapped[str] = mapped_column(String(255))
    hardware: Mapped[dict] = mapped_column(_JSONText)
    created_at: Mapped[datetime] = mapped_column(DateTime)  # naive UTC

    def to_record(self) -> TunedRecord:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TunedRecord)}
        values["created_at"] = _as_utc(self.created_at)
        return TunedRecord(**values)


class _Precision(_Base):
    """What a reduced-precision record carries besides its config: the accuracy figures its gate
    measured and, for int8, the quantized model bound to the weights it was calibrated for.
    Added after schema 1 shipped: a store without this table reads as having none."""

    __tablename__ = "autotune_precision"

    record_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    accuracy: Mapped[dict | None] = mapped_column(_JSONText, nullable=True)
    engine: Mapped[str | None] = mapped_column(String(64), nullable=True)
    weights_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # a zip of its files


_OPTIONAL_TABLES = {_Precision.__tablename__}


@dataclass(frozen=True)
class Precision:
    accuracy: dict[str, Any] | None
    quantized: Any = None  # backend.quantization.QuantizedModel


def accuracy_text(accuracy: Mapping[str, Any] | None) -> str:
    """One line for a gate's figures: "top-1 agreement with float32 99.22% (bound at least 99%)
    on 128 held-out inputs"; "" for a record without them (float32)."""
    if not accuracy:
        return ""
    value, bound = accuracy["value"], accuracy["bound"]
    if accuracy["metric"].startswith("top-1"):
        shown, bound_text = f"{100 * value:.2f}%", f"at least {100 * bound:g}%"
    elif _higher_is_better(accuracy):  # the user's --metric
        shown, bound_text = f"{value:.4g}", f"at least {bound:g}"
    else:
        shown, bound_text = f"{value:.3g}", f"at most {bound:g}"
    classes, relative_error = accuracy.get("classes"), accuracy.get("relative_error")
    spread = "" if classes is None else (
        f", float32 answering {classes} classes" if classes > 1 else
        ", but float32 answers one class for all of them: the figure cannot tell" +
        ("" if relative_error is None else f"; relative error {relative_error:.3g}") +
        ("" if accuracy.get("relative_error_bound") is None
         else f" (bound at most {accuracy['relative_error_bound']:g})"))
    # each bound beside its own figure: with the relative error's bound too, a bound at the end
    # of the line reads as that one's
    return f"{accuracy['metric']} {shown} (bound {bound_text}) on {accuracy['inputs']} held-out inputs{spread}"


def _higher_is_better(accuracy: Mapping[str, Any]) -> bool:
    # figures stored before the key existed: top-1 agreement, else a relative error
    return accuracy.get("higher_is_better", accuracy["metric"].startswith("top-1"))


def accuracy_problem(accuracy: Any) -> str | None:
    """Why stored gate figures are malformed or below their bound; None when they pass."""
    if not isinstance(accuracy, Mapping) or not isinstance(accuracy.get("metric"), str):
        return f"accuracy figures must be a mapping with a metric, not {accuracy!r}"
    numbers = {name: accuracy.get(name) for name in ("value", "bound", "inputs")}
    bad = [name for name, value in numbers.items()
           if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)]
    bad += [name for name in ("classes", "relative_error", "relative_error_bound")  # optional
            if accuracy.get(name) is not None and not isinstance(accuracy[name], (int, float))]
    if bad:
        return f"accuracy figures need numbers for {', '.join(bad)} (got {accuracy!r})"
    if not isinstance(accuracy.get("higher_is_better", False), bool):
        return f"accuracy figures: higher_is_better must be true or false (got {accuracy!r})"
    value, bound = numbers["value"], numbers["bound"]
    passes = value >= bound if _higher_is_better(accuracy) else value <= bound
    # with one class answered, agreement cannot tell: the relative error's bound, when it has one
    error, error_bound = accuracy.get("relative_error"), accuracy.get("relative_error_bound")
    if error_bound is not None and not (error is not None and error <= error_bound):
        passes = False
    return None if passes else f"the accuracy gate failed ({accuracy_text(accuracy)})"


def precision_to_dict(precision: Precision) -> dict[str, Any]:
    """For `autotune export`: the figures and the quantized model (a base64 zip)."""
    quantized = precision.quantized
    return {"accuracy": precision.accuracy,
            **({"engine": quantized.engine, "weights_digest": quantized.weights_digest,
                "model_zip_base64": base64.b64encode(_zipped(quantized.files)).decode()}
               if quantized else {})}


def precision_from_dict(data: Any) -> Precision:
    """Back from ``precision_to_dict``; RecordError naming what is wrong."""
    from .quantization import QuantizedModel

    if not isinstance(data, Mapping) or not isinstance(data.get("accuracy"), (Mapping, type(None))):
        raise RecordError(f"precision: got {data!r}; expected a mapping with accuracy (and, for "
                          "int8, engine, weights_digest and model_zip_base64)")
    quantized = None
    if "model_zip_base64" in data:
        try:
            files = _unzipped(base64.b64decode(data["model_zip_base64"], validate=True))
        except (ValueError, TypeError) as exc:
            raise RecordError(f"precision.model_zip_base64: not a base64 zip, or a zip with a damaged "
                              f"member ({exc})") from None
        if not isinstance(data.get("engine"), str) or not isinstance(data.get("weights_digest"), str):
            raise RecordError("precision: a quantized model needs its engine and weights_digest")
        quantized = QuantizedModel(data["engine"], data["weights_digest"], files)
    return Precision(dict(data["accuracy"]) if data["accuracy"] else None, quantized)


def _zipped(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _unzipped(blob: bytes) -> dict[str, bytes]:
    """ValueError when ``blob`` is not a zip this Python can read."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    # NotImplementedError: a compression method zipfile lacks; RuntimeError: an encrypted member;
    # OSError, LZMAError: a damaged bzip2 or LZMA stream
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError,
            LZMAError) as exc:
        raise ValueError(str(exc)) from exc


def _is_int8(config: Any) -> bool:
    # a damaged config (not a mapping) is not int8 here: the lookup's validation names it
    return isinstance(config, Mapping) and config.get("dtype") == "int8"


CONNECT_TIMEOUT_S = 10  # PostgreSQL; a URL's own ?connect_timeout= wins

# Fastest first, by the speedup over the backend default measured in the record's own run: two
# runs' raw medians differ by the day's load on a shared host (resnet50's default: 19.1-23.0 ms),
# so an old record from a quiet day would hide a better config tuned on a busy one. Then the
# lower median, then the newer record.
_BEST_FIRST = (_Record.speedup.desc(), _Record.median_ms.asc(), _Record.id.desc())


def masked_url(url: str) -> str:
    """``url`` as it may be shown: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparsable (a port that is no number), but it may still carry a password
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _one_line(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error  # the driver's message, without SQL and links
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


class ConfigStore:
    """Tuned configs, keyed by workload and hardware.

    Contract (every implementation, every database):

    * ``put(record)`` appends; nothing is ever overwritten. It returns the new record's id and
      ignores ``record.id``, so records exported from one store import into another.
    * ``best(workload_key, hardware_key)`` is the record with the highest speedup over the
      defaults measured beside it among all records for that exact pair (ties: the lower
      median, then the newest), or None. A config tuned on other hardware is
      never returned.
    * ``nearest(family_key, hardware_key, batch_size)`` looks at records of the same family and
      hardware but another batch size, picks the batch size closest to ``batch_size`` (ties: the
      smaller one) and returns that batch size's best record, or None.
    * ``list(model_label=None, hardware_key=None)`` is the best record of every
      (workload_key, hardware_key) pair, newest first.
    * ``read_only=True`` never creates or writes anything: a missing database or one without
      autotune tables reads as empty, and ``put`` raises. A file that is not a database, a schema
      from a newer ipex-autotune, a bad URL and every database error raise ``StoreError`` naming
      the URL (password hidden).

    Each call opens its own short transaction on a fresh connection (no pool; ``sqlite://`` in
    memory is the one exception), so one store may be used from several processes and threads
    at once. SQLite runs in WAL mode with a busy timeout, so a
    reader never makes a writing tuner fail.
    """

    def __init__(self, url: str, *, read_only: bool = False,
                 busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS):
        self.url = url
        self.read_only = read_only
        self.busy_timeout_ms = busy_timeout_ms
        self._shown_url = masked_url(url)
        self._sqlite_path: str | None = None  # a file path, when the store is an SQLite file
        self._schema_checked = False
        try:
            parsed = make_url(url)
            self._engine = create_engine(parsed, **self._engine_options(parsed))
        except (ArgumentError, NoSuchModuleError, ValueError) as e:
            raise StoreError(f"invalid store URL {self._shown_url!r} ({_one_line(e)}); "
                             f"use for example {URL_EXAMPLES}") from e
        except ImportError as e:
            raise StoreError(f"config store {self._shown_url}: the database driver is not "
                             f"installed ({_one_line(e)})") from e
        except OSError as e:
            raise StoreError(f"config store {self._shown_url}: cannot create its folder "
                             f"({e.strerror}: {e.filename})") from e
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", self._on_sqlite_connect)
        if not read_only:
            self._create_schema()

    def _engine_options(self, url: URL) -> dict[str, Any]:
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            # an unreachable server must not hold every torch.compile for the TCP timeout (minutes)
            return {"poolclass": NullPool, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        if url.get_backend_name() != "sqlite":
            return {"poolclass": NullPool}  # no connection outlives a call, or a fork
        if url.database in (None, "", ":memory:"):
            # Every new connection would be a new, empty database: keep exactly one.
            return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        self._sqlite_path = os.path.abspath(url.database)
        if not self.read_only:
            folder = os.path.dirname(self._sqlite_path)
            if self._sqlite_path == per_user_store_path():
                os.makedirs(folder, exist_ok=True)
            elif not os.path.isdir(folder):
                # a typo in a URL the user gave must not grow a new folder tree
                raise StoreError(f"config store {self._shown_url}: folder {folder} does not exist; "
                                 "create it or correct the URL (only the default per-user store's "
                                 "folder is created)")
            return {"poolclass": NullPool}
        # mode=ro: a reader must never create the file the tuner has not written yet.
        uri = f"file:{quote(self._sqlite_path)}?mode=ro"
        return {"poolclass": NullPool,
                "creator": lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)}

    def _on_sqlite_connect(self, dbapi_connection, connection_record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        if not self.read_only:
            # WAL lets readers keep reading while a tuner writes (and vice versa).
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error, errors become StoreError."""
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                yield session
        except (SQLAlchemyError, sqlite3.Error) as e:
            raise StoreError(f"config store {self._shown_url}: {_one_line(e)}") from e

    def _create_schema(self) -> None:
        def create() -> None:
            self._readable()  # a newer schema must stop us before we touch its tables
            with self._session() as session:
                _Base.metadata.create_all(session.connection())
                if session.get(_Meta, "schema_version") is None:
                    session.add(_Meta(key="schema_version", value=str(SCHEMA_VERSION)))

        retry_creation_race(create)  # several tuners may open a new database at once
        self._schema_checked = True

    def _readable(self) -> bool:
        """True once the autotune tables exist; checks their schema version the first time."""
        if self._schema_checked:
            return True
        if self.is_missing():
            return False
        with self._session() as session:
            inspector = inspect(session.connection())
            if not all(inspector.has_table(name) for name in _Base.metadata.tables
                       if name not in _OPTIONAL_TABLES):
                return False
            version = session.scalar(select(_Meta.value).where(_Meta.key == "schema_version"))
        if version is not None and not re.fullmatch(r"\d+", version.strip()):
            raise StoreError(f"config store {self._shown_url} has a damaged schema version "
                             f"{version!r} (expected a whole number up to {SCHEMA_VERSION}); set "
                             "autotune_meta.schema_version back to a number, or tune into a new "
                             "store (--storage)")
        if version is not None and int(version) > SCHEMA_VERSION:
            raise StoreError(
                f"config store {self._shown_url} was written by a newer ipex-autotune (schema "
                f"{version}, this version reads up to {SCHEMA_VERSION}); upgrade ipex-autotune")
        self._schema_checked = True
        return True

    @property
    def shown_url(self) -> str:
        """The URL with its password hidden, for messages."""
        return self._shown_url

    def is_missing(self) -> bool:
        """A read-only store on an SQLite file that does not exist: nothing was tuned there yet."""
        return bool(self._sqlite_path and self.read_only and not os.path.exists(self._sqlite_path))

    def has_tables(self) -> bool:
        """Whether the autotune tables exist (and their schema is readable, else StoreError)."""
        return self._readable()

    def put(self, record: TunedRecord, precision: Precision | None = None) -> int:
        return self.put_many([record], [precision])[0]

    def put_many(self, records: list[TunedRecord],
                 precisions: list[Precision | None] | None = None) -> list[int]:
        """Validate every record, then write all of them (with what each reduced-precision record
        carries) in one transaction, or none. An int8 record without its quantized model is
        refused: the lookup could not apply it, and it would hide the records it outruns."""
        if self.read_only:
            raise StoreError(f"config store {self._shown_url} is open read-only; cannot put")
        precisions = precisions or [None] * len(records)
        rows = []
        for record, precision in zip(records, precisions, strict=True):
            checked = checked_record(dataclasses.asdict(record))
            if _is_int8(checked.config) and (precision is None or precision.quantized is None):
                raise RecordError(f"config {checked.config_id} is int8 but comes without its "
                                  "quantized model; only `autotune run --data` stores int8 configs")
            if _is_int8(checked.config) and precision.accuracy is None:
                raise RecordError(f"config {checked.config_id} is int8 but comes without the "
                                  "accuracy gate's figures; only `autotune run --data` stores int8 "
                                  "configs")
            problem = precision is not None and precision.accuracy is not None and \
                accuracy_problem(precision.accuracy)
            if problem:
                raise RecordError(f"config {checked.config_id}: {problem}; a config that fails "
                                  "the gate is never stored")
            values = {f.name: getattr(checked, f.name) for f in dataclasses.fields(TunedRecord)}
            values.update(median_ms=float(checked.latency["median_ms"]),
                          created_at=checked.created_at.replace(tzinfo=None))
            rows.append(_Record(**values))
        with self._session() as session:
            session.add_all(rows)
            session.flush()
            for row, precision in zip(rows, precisions):
                if precision is not None:
                    quantized = precision.quantized
                    session.add(_Precision(
                        record_id=row.id, accuracy=precision.accuracy,
                        engine=quantized.engine if quantized else None,
                        weights_digest=quantized.weights_digest if quantized else None,
                        model=_zipped(quantized.files) if quantized else None))
            return [row.id for row in rows]

    def precision(self, record_id: int, *, with_model: bool = True) -> Precision | None:
        """The accuracy figures (and, ``with_model``, the quantized model) a record carries."""
        from .quantization import QuantizedModel

        if not self._readable():
            return None
        with self._session() as session:
            if not inspect(session.connection()).has_table(_Precision.__tablename__):
                return None
            columns = [_Precision.accuracy, _Precision.engine, _Precision.weights_digest]
            row = session.execute(select(*columns, *([_Precision.model] if with_model else []))
                                  .where(_Precision.record_id == record_id)).first()
        if row is None:
            return None
        quantized = None
        if with_model and row.model is not None:
            try:
                files = _unzipped(row.model)
            except ValueError as exc:
                raise RecordError(f"a stored int8 model is damaged ({exc})") from exc
            quantized = QuantizedModel(row.engine, row.weights_digest, files)
        return Precision(row.accuracy, quantized)

    def claim(self, name: str, owner: str) -> bool:
        """True for exactly one caller per ``name``, across processes and hosts."""
        if self.read_only:
            raise StoreError(f"config store {self._shown_url} is open read-only; cannot claim")
        try:
            with self._session() as session:
                session.add(_Claim(name=name, owner=owner,
                                   created_at=datetime.now(timezone.utc).replace(tzinfo=None)))
            return True
        except StoreError as e:
            if isinstance(e.__cause__, IntegrityError):
                return False
            raise

    def release(self, name: str) -> None:
        """Give a claim back (its job did not complete), so that another caller can take it."""
        with self._session() as session:
            session.execute(delete(_Claim).where(_Claim.name == name))

    def take_over(self, name: str, lost_owner: str, owner: str) -> bool:
        """Move a claim whose owner is gone to ``owner``: True for exactly one caller."""
        if self.read_only:
            raise StoreError(f"config store {self._shown_url} is open read-only; cannot claim")
        with self._session() as session:
            moved = session.execute(update(_Claim).where(_Claim.name == name, _Claim.owner == lost_owner)
                                    .values(owner=owner))
            return moved.rowcount == 1

    def claim_owner(self, name: str) -> str | None:
        if not self._readable():
            return None
        with self._session() as session:
            return session.scalar(select(_Claim.owner).where(_Claim.name == name))

    def _first(self, *conditions, order=_BEST_FIRST, int8: bool = True,
               weights_digest: str | None = None) -> TunedRecord | None:
        if not self._readable():
            return None
        with self._session() as session:
            query = select(_Record).where(*conditions).order_by(*order)
            if int8 and weights_digest is None:
                row = session.scalars(query.limit(1)).first()
                return row.to_record() if row else None
            has_precision = inspect(session.connection()).has_table(_Precision.__tablename__)
            for row in session.scalars(query):
                if not _is_int8(row.config):
                    return row.to_record()
                if int8 and has_precision and weights_digest == session.scalar(
                        select(_Precision.weights_digest).where(_Precision.record_id == row.id)):
                    return row.to_record()
            return None

    def best(self, workload_key: str, hardware_key: str, *, int8: bool = True,
             weights_digest: str | None = None) -> TunedRecord | None:
        """``int8=False``: the best record that is not int8 (what `ls` shows for weights no int8
        record was calibrated for). ``weights_digest``: the best record that is not int8 or was
        calibrated for these weights (the lookup's choice when the best one is for other weights)."""
        return self._first(_Record.workload_key == workload_key,
                           _Record.hardware_key == hardware_key, int8=int8,
                           weights_digest=weights_digest)

    def nearest(self, family_key: str, hardware_key: str, batch_size: int) -> TunedRecord | None:
        """Never int8: a quantized model holds its own graph's shapes."""
        return self._first(
            _Record.family_key == family_key, _Record.hardware_key == hardware_key,
            _Record.batch_size != batch_size,  # also skips records without a batch size
            order=(func.abs(_Record.batch_size - batch_size), _Record.batch_size, *_BEST_FIRST),
            int8=False)

    def list(self, model_label: str | None = None,
             hardware_key: str | None = None) -> list[TunedRecord]:
        if not self._readable():
            return []
        filters = []
        if model_label is not None:
            filters.append(_Record.model_label == model_label)
        if hardware_key is not None:
            filters.append(_Record.hardware_key == hardware_key)
        rank = func.row_number().over(partition_by=(_Record.workload_key, _Record.hardware_key),
                                      order_by=_BEST_FIRST)
        ranked = select(_Record.id, rank.label("rank")).where(*filters).subquery()
        query = (select(_Record).join(ranked, _Record.id == ranked.c.id)
                 .where(ranked.c.rank == 1)
                 .order_by(_Record.created_at.desc(), _Record.id.desc()))
        with self._session() as session:
            return [row.to_record() for row in session.scalars(query)]

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "ConfigStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return f"ConfigStore({self._shown_url!r}{mode})"
