"""Database URLs and engines for the trail store, SQLite or PostgreSQL."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["DEFAULT_URL", "WRITE_OPTION", "make_engine", "normalize_url"]

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///./var/ivr.db"

#: Execution option marking a connection that will write. On SQLite its
#: transactions start with ``BEGIN IMMEDIATE``: the write lock is taken up front
#: (waiting up to ``busy_timeout``) rather than on the first write, where a
#: reader-turned-writer could fail at once when another process wrote meanwhile.
WRITE_OPTION = "ivr_write"


def normalize_url(url: str | URL | None = None) -> str:
    """The async SQLAlchemy URL for a user-facing database URL.

    ``None`` -> ``sqlite+aiosqlite:///./var/ivr.db``; ``sqlite:///path`` ->
    ``sqlite+aiosqlite:///path``; ``postgresql://`` and ``postgres://`` ->
    ``postgresql+asyncpg://``. A URL naming its driver is kept as it is.
    """
    parsed = make_url(url if url is not None else DEFAULT_URL)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if not driver:
        driver = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}.get(backend, "")
    drivername = f"{backend}+{driver}" if driver else backend
    return parsed.set(drivername=drivername).render_as_string(hide_password=False)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into ``base``, dicts recursively (for ``connect_args``)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def make_engine(
    url: str | URL | None = None, *, sqlite_busy_timeout: float = 5.0, **options: Any
) -> AsyncEngine:
    """An async engine for the trail store, with the settings each backend wants.

    SQLite: WAL journal (set on the file here), ``busy_timeout`` (seconds),
    foreign keys on, real
    transactions (DDL included, so migrations are atomic; see
    :data:`WRITE_OPTION`), the parent directory of the file created.
    PostgreSQL: a small pool that checks connections before use and recycles
    them, connect and command timeouts, ``application_name`` ``ivr-trail``.
    ``options`` go to ``create_async_engine``, merged into those defaults
    (``connect_args`` key by key, e.g. ``server_settings``).
    """
    target = make_url(normalize_url(url))
    backend = target.get_backend_name()
    defaults: dict[str, Any] = {}
    if backend == "sqlite":
        database = target.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            _enable_wal(path, timeout=sqlite_busy_timeout)
        defaults = {"connect_args": {"timeout": sqlite_busy_timeout}}
    elif backend == "postgresql":
        defaults = {
            "pool_size": 5,
            "max_overflow": 10,
            "pool_timeout": 30,
            "pool_recycle": 1800,
            "pool_pre_ping": True,
            "connect_args": {
                "timeout": 10,
                "command_timeout": 60,
                "server_settings": {"application_name": "ivr-trail"},
            },
        }
    engine = create_async_engine(target, **_merge(defaults, options))
    if backend == "sqlite":
        _configure_sqlite(engine, busy_ms=int(sqlite_busy_timeout * 1000))
    return engine


def _enable_wal(path: Path, *, timeout: float) -> None:
    """Switch the database file to WAL (a setting kept in the file), once, at start-up.

    Done here, not on every connection: two connections switching a new file at
    the same moment deadlock, and SQLite then fails one at once instead of
    waiting. Here the loser simply tries again.
    """
    deadline = time.monotonic() + max(timeout, 1.0)
    while True:
        try:
            with closing(sqlite3.connect(path, timeout=timeout)) as conn:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("SQLite database %s stays in %s journal mode", path, mode)
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _configure_sqlite(engine: AsyncEngine, *, busy_ms: int) -> None:
    # The recipe of SQLAlchemy's SQLite dialect documentation: take transaction
    # control away from the driver and emit BEGIN ourselves.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
