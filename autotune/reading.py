"""Opening study databases for reading while a tuner writes to them (dashboard and report).

A reader must never make a live tuner fail. optuna-dashboard issue 545: a dashboard opened on
the SQLite file of a running study made the study die with "database is locked". In SQLite's
default rollback-journal mode a reader's shared lock blocks the writer's commit, and the writer
gives up after its busy timeout; and a reader that writes (table creation, schema checks, the
dashboard's own edits) takes the write lock itself. So here:

* the tuner's file is in WAL mode (ConfigStore sets it when the tuner opens the database), where
  readers never block the writer, and the tuner waits up to 60 s for a lock;
* readers open SQLite files with ``mode=ro``: they cannot take the write lock at all;
* readers skip optuna's table creation and schema check, and wait for locks as long as the tuner.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from urllib.parse import quote

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from backend.store import default_storage_url, masked_url

from .errors import StudyError

LOCK_TIMEOUT_S = 60


def read_only_storage(url: str | None = None) -> optuna.storages.RDBStorage:
    """Optuna storage over ``url`` (default: the tuner's) that reads and never writes."""
    url = url or default_storage_url()
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StudyError(f"invalid storage URL {masked_url(url)!r}: {exc}") from None
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        path = os.path.abspath(parsed.database or "")
        if not parsed.database or not os.path.isfile(path):
            raise StudyError(f"no study database at {path or url!r}: run `autotune run` first "
                             "or pass --storage")
        uri = f"file:{quote(path)}?mode=ro"
        engine_kwargs["creator"] = lambda: sqlite3.connect(
            uri, uri=True, timeout=LOCK_TIMEOUT_S, check_same_thread=False)
        try:
            with contextlib.closing(engine_kwargs["creator"]()) as conn:
                has_tables = conn.execute(
                    "select 1 from sqlite_master where name = 'version_info'").fetchone()
        except sqlite3.Error as exc:
            raise StudyError(f"cannot read study database {path}: {exc}") from None
        if not has_tables:  # optuna would try to create its tables, which a reader cannot
            raise StudyError(f"{path} holds no optuna study yet: start `autotune run` first")
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                          skip_compatibility_check=True, skip_table_creation=True)
    except Exception as exc:  # driver missing, server unreachable, ...
        raise StudyError(f"cannot open study storage {parsed.render_as_string()!r}: {exc}") from None


def find_study(storage: optuna.storages.BaseStorage, *, study_name: str | None = None,
               model: str | None = None, batch_size: int | None = None) -> optuna.Study:
    """The study named ``study_name``, or the one study of ``model`` (at ``batch_size``)."""
    try:
        studies = storage.get_all_studies()
    except Exception as exc:  # e.g. a server database without optuna's tables
        raise StudyError(f"cannot list the studies in the storage: {exc}") from None
    names = ", ".join(s.study_name for s in studies) or "none"
    if study_name is None:
        matches = [s.study_name for s in studies
                   if (s.user_attrs.get("model") or {}).get("name") == model
                   and batch_size in (None, s.user_attrs["model"].get("batch_size"))]
        if len(matches) != 1:
            what = f"model {model!r}" + (f" at batch size {batch_size}" if batch_size else "")
            found = (f"{len(matches)} studies of {what}: {', '.join(matches)}; pick one with --study"
                     if matches else f"no study of {what}")
            raise StudyError(f"{found} (studies here: {names})")
        study_name = matches[0]
    elif study_name not in [s.study_name for s in studies]:
        raise StudyError(f"no study named {study_name!r} (studies here: {names})")
    return optuna.load_study(study_name=study_name, storage=storage)
