"""Trail store tests, on real databases.

Every database test runs on SQLite (a file under ``tmp_path``) and on
PostgreSQL: ``IVR_TEST_DATABASE_URL``, by default
``postgresql://postgres@127.0.0.1:5432/test``. Each PostgreSQL test gets its own
schema (``search_path``) and ``application_name``, dropped afterwards. When
PostgreSQL is unreachable its tests are skipped, unless the URL was given
explicitly or ``CI=true``: then they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url

from ivr.engine.types import Event
from ivr.store import TrailStore, build_summary, handoff, make_engine, migrate, normalize_url
from ivr.store.migrations import SCRIPT_LOCATION, current_revisions, head_revisions
from ivr.store.models import Base, events_table
import visual_ivr.models  # noqa: F401,E402  (the visual IVR's tables are on the same metadata)
from ivr.store.summary import person_reason

PG_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("IVR_TEST_DATABASE_URL") or PG_DEFAULT_URL
PG_REQUIRED = (
    bool(os.environ.get("IVR_TEST_DATABASE_URL")) or os.environ.get("CI", "").lower() == "true"
)


# --------------------------------------------------------------------------- fixtures


def _asyncpg_dsn(url: str) -> str:
    return (
        make_url(normalize_url(url))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


@functools.cache
def _pg_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None. Probed once, in its own thread and loop."""

    async def probe() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(PG_URL), timeout=3)
        await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result(timeout=10)
        except Exception as exc:  # any failure means unusable
            return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class Backend:
    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    schema: str | None = None
    app_name: str | None = None
    path: Path | None = None  # SQLite file

    async def pg(self) -> asyncpg.Connection:
        """A separate PostgreSQL connection on this test's schema."""
        assert self.schema
        return await asyncpg.connect(
            _asyncpg_dsn(self.url), server_settings={"search_path": self.schema}
        )


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "trail.db"
        yield Backend("sqlite", f"sqlite:///{path}", path=path)
        return

    problem = _pg_problem()
    if problem:
        where = make_url(normalize_url(PG_URL)).render_as_string(hide_password=True)
        message = f"PostgreSQL at {where} is unreachable ({problem})"
        if PG_REQUIRED:
            pytest.fail(message + "; IVR_TEST_DATABASE_URL or CI=true requires it")
        pytest.skip(message + "; set IVR_TEST_DATABASE_URL to run the PostgreSQL tests")

    schema = f"ivr_test_{uuid.uuid4().hex[:12]}"
    app_name = f"ivr-test-{schema}"
    admin = await asyncpg.connect(_asyncpg_dsn(PG_URL))
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield Backend(
            "postgresql",
            PG_URL,
            options={
                "connect_args": {
                    "server_settings": {"search_path": schema, "application_name": app_name}
                }
            },
            schema=schema,
            app_name=app_name,
        )
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


OpenStore = Callable[..., Awaitable[TrailStore]]


@pytest.fixture
async def open_store(backend: Backend) -> AsyncIterator[OpenStore]:
    """Open stores on the test database; all are closed at the end of the test."""
    stores: list[TrailStore] = []

    async def _open(**options: Any) -> TrailStore:
        store = await TrailStore.open(backend.url, **{**backend.options, **options})
        stores.append(store)
        return store

    yield _open
    for store in stores:
        await store.close(timeout=10)


@pytest.fixture
async def store(open_store: OpenStore) -> TrailStore:
    return await open_store()


async def count_events(backend: Backend, session_id: str | None = None) -> int:
    """Count stored events through a connection of its own (not the store's)."""
    engine = make_engine(backend.url, **backend.options)
    try:
        query = select(func.count()).select_from(events_table)
        if session_id is not None:
            query = query.where(events_table.c.session_id == session_id)
        async with engine.connect() as conn:
            return (await conn.execute(query)).scalar_one()
    finally:
        await engine.dispose()


async def new_session(store: TrailStore, caller: str | None = "+33611223321", **kw: Any) -> str:
    return await store.create_session(
        flow_id=kw.pop("flow_id", "hotline"),
        flow_version=kw.pop("flow_version", "abc123"),
        channel=kw.pop("channel", "voice"),
        caller=caller,
        **kw,
    )


# --------------------------------------------------------------------------- migrations


async def test_migrations_idempotent_and_match_models(backend: Backend) -> None:
    engine = make_engine(backend.url, **backend.options)
    try:
        assert await current_revisions(engine) == set()
        await migrate(engine)
        await migrate(engine)  # again: nothing to do, no error
        assert await current_revisions(engine) == head_revisions() != set()

        def check(sync_conn: Any) -> tuple[set[str], list[Any], set[str]]:
            tables = set(inspect(sync_conn).get_table_names())
            context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
            indexes = {ix["name"] for ix in inspect(sync_conn).get_indexes("events")}
            indexes |= {ix["name"] for ix in inspect(sync_conn).get_indexes("sessions")}
            return tables, compare_metadata(context, Base.metadata), indexes

        async with engine.connect() as conn:
            tables, diff, indexes = await conn.run_sync(check)
        assert {"sessions", "events", "alembic_version"} <= tables
        assert diff == [], f"models and migrations differ: {diff}"
        assert {
            "ix_events_session_id_seq",
            "ix_sessions_caller",
            "ix_sessions_flow_id_started_at",
        } <= indexes
    finally:
        await engine.dispose()
    # Opening stores migrates again, still idempotent.
    for _ in range(2):
        store = await TrailStore.open(backend.url, **backend.options)
        await store.close()


async def test_concurrent_migrations(backend: Backend) -> None:
    """Several servers starting at once on an empty database: one migrates, all succeed."""
    engines = [make_engine(backend.url, **backend.options) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        assert [await current_revisions(engine) for engine in engines] == [head_revisions()] * len(engines)
    finally:
        for engine in engines:
            await engine.dispose()


def test_migration_scripts_ship_with_the_package() -> None:
    assert (SCRIPT_LOCATION / "env.py").is_file()
    assert (SCRIPT_LOCATION / "versions" / "0001_initial.py").is_file()
    assert (SCRIPT_LOCATION / "script.py.mako").is_file()
    # Both directories are packages, so setuptools' find_packages ships their *.py.
    assert (SCRIPT_LOCATION / "__init__.py").is_file()
    assert (SCRIPT_LOCATION / "versions" / "__init__.py").is_file()


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "sqlite+aiosqlite:///./var/ivr.db"),
        ("sqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_normalize_url(given: str | None, expected: str) -> None:
    assert normalize_url(given) == expected


async def test_default_url_creates_var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = await TrailStore.open()
    try:
        sid = await new_session(store)
        await store.flush()
        assert (await store.get_session(sid)) is not None
    finally:
        await store.close()
    assert (tmp_path / "var" / "ivr.db").is_file()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/p.db", sqlite_busy_timeout=1.5)
    try:
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            busy = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
            fks = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
        assert (mode, busy, fks) == ("wal", 1500, 1)
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- lifecycle


async def test_session_lifecycle(store: TrailStore) -> None:
    sid = await new_session(
        store, dialed="3000", uniqueid="1712345678.42", language="en", variables={"vip": False}
    )
    assert len(sid) == 32
    session = await store.get_session(sid)
    assert session is not None
    assert session["live"] is True and session["outcome"] is None and session["ended_at"] is None
    assert (session["flow_id"], session["flow_version"], session["channel"]) == (
        "hotline",
        "abc123",
        "voice",
    )
    assert (session["caller"], session["dialed"], session["uniqueid"]) == (
        "+33611223321",
        "3000",
        "1712345678.42",
    )
    assert session["variables"] == {"vip": False}
    assert session["state"] is None
    started = datetime.fromisoformat(session["started_at"])
    assert started.tzinfo is not None and abs(datetime.now(UTC) - started) < timedelta(minutes=1)

    store.append(
        sid,
        [
            Event("session_start", "main", {"flow": "hotline"}),
            Event("node_enter", "main"),
            Event("summary", "verify", {"text": "Verified account ****3321"}),
        ],
        "voice",
    )
    await store.save_state(
        sid, {"node": "menu", "vars": {"last4": "3321"}}, {"last4": "3321"}, "fr"
    )
    store.append(
        sid, {"kind": "choice", "node": "menu", "data": {"key": "2", "label": "Payments"}}, "web"
    )
    await store.save_state(sid, {"node": "pay"})  # variables and language untouched

    session = await store.get_session(sid)
    assert session is not None
    assert session["state"] == {"node": "pay"}
    assert session["variables"] == {"last4": "3321"}
    assert session["language"] == "fr"
    assert session["live"] is True

    summary = await store.end_session(sid, outcome="completed", node="bye")
    assert summary == "Verified account ****3321"
    session = await store.get_session(sid)
    assert session is not None
    assert session["live"] is False
    assert (session["outcome"], session["end_node"], session["summary"]) == (
        "completed",
        "bye",
        summary,
    )
    assert session["reason"] is None
    assert datetime.fromisoformat(session["ended_at"]) >= started

    events = await store.events(sid)
    assert [(e["seq"], e["kind"], e["channel"]) for e in events] == [
        (1, "session_start", "voice"),
        (2, "node_enter", "voice"),
        (3, "summary", "voice"),
        (4, "choice", "web"),
    ]
    assert events[3]["node"] == "menu" and events[3]["data"] == {"key": "2", "label": "Payments"}
    assert events[1]["data"] == {}
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in events)

    # An agent connecting after the transfer still lands on the trail.
    store.append(sid, [Event("agent_connect", None, {"agent": "alice"})], "agent")
    events = await store.events(sid)
    assert events[-1]["seq"] == 5 and events[-1]["kind"] == "agent_connect"

    await store.ping()
    assert await store.get_session("0" * 32) is None
    assert await store.events("0" * 32) == []


async def test_append_rejects_events_without_kind(store: TrailStore) -> None:
    sid = await new_session(store)
    with pytest.raises(ValueError):
        store.append(sid, [Event("prompt", "a"), {"node": "x"}], "voice")
    await store.flush()
    assert await store.events(sid) == []  # nothing of the refused batch was queued
    with pytest.raises(ValueError):
        await store.create_session(flow_id="", flow_version="v", channel="voice")
    with pytest.raises(ValueError):
        store.append("x" * 65, [Event("prompt", "a")], "voice")
    with pytest.raises(ValueError):
        await new_session(store, session_id="")


async def test_append_order_2000_events_50_concurrent_sessions(
    store: TrailStore, backend: Backend
) -> None:
    per_session = 40
    rng = random.Random(7)
    sids = [await new_session(store, caller=f"+3361000{i:04d}") for i in range(50)]

    async def caller(sid: str, n: int) -> None:
        for i in range(per_session):
            event = Event(
                rng.choice(["prompt", "input", "node_enter"]), f"n{i}", {"i": i, "who": n}
            )
            store.append(sid, [event], "voice")
            await asyncio.sleep(rng.random() * 0.004)

    await asyncio.gather(*(caller(sid, n) for n, sid in enumerate(sids)))
    await store.flush()

    assert store.events_written == 2000
    assert store.events_dropped == 0
    assert 1 < store.batches_written < 500, "events should be written in batches"
    assert store.last_write_latency is not None and store.last_write_delay is not None
    assert store.queue_size == 0
    # append is a plain function: it cannot wait on the database (its speed is
    # measured by bench/agi_load.py, not by a timed test)
    assert not asyncio.iscoroutinefunction(TrailStore.append)
    assert await count_events(backend) == 2000
    for n, sid in enumerate(sids):
        events = await store.events(sid)
        assert [e["seq"] for e in events] == list(range(1, per_session + 1))
        assert [e["data"] for e in events] == [{"i": i, "who": n} for i in range(per_session)]
        moments = [datetime.fromisoformat(e["at"]) for e in events]
        assert moments == sorted(moments)


async def test_flush(open_store: OpenStore, backend: Backend) -> None:
    # A long linger: nothing is written unless someone flushes.
    store = await open_store(linger=30.0)
    one, two = await new_session(store), await new_session(store)
    store.append(one, [Event("prompt", "a", {"n": n}) for n in range(5)], "voice")
    store.append(two, [Event("prompt", "b", {"n": n}) for n in range(3)], "sim")
    await asyncio.sleep(0.2)
    assert await count_events(backend) == 0
    assert store.queue_size == 10  # 2 sessions + 8 events

    await store.flush(one)
    assert await count_events(backend, one) == 5

    store.append(two, [Event("hangup", "b")], "sim")
    await store.flush()
    assert await count_events(backend, two) == 4
    assert store.queue_size == 0
    await store.flush()  # nothing queued: returns at once
    await store.flush("f" * 32)  # unknown session: nothing to wait for


async def test_close_writes_what_is_queued(open_store: OpenStore, backend: Backend) -> None:
    store = await open_store(linger=30.0)
    sid = await new_session(store)
    store.append(sid, [Event("prompt", "a", {"n": n}) for n in range(7)], "voice")
    await store.close()
    with pytest.raises(RuntimeError):
        store.append(sid, [Event("prompt", "a")], "voice")
    assert await count_events(backend, sid) == 7


async def test_end_session_summary_and_reason(store: TrailStore) -> None:
    sid = await new_session(store)
    store.append(sid, BRIEF_TRAIL, "voice")
    summary = await store.end_session(sid, outcome="transfer", node="to_agent")
    expected = (
        "Verified account ****3321 · checked balance (-35.20) · "
        "tried to pay, card declined · asked for a person"
    )
    assert summary == expected
    session = await store.get_session(sid)
    assert session is not None
    assert (session["summary"], session["reason"], session["outcome"]) == (
        expected,
        "asked for a person",
        "transfer",
    )

    other = await new_session(store)
    store.append(other, [Event("transfer", "q", {"reason": "lost card"})], "voice")
    summary = await store.end_session(
        other, outcome="transfer", node="q", summary="Custom", reason="VIP"
    )
    assert summary == "Custom"
    session = await store.get_session(other)
    assert session is not None
    assert (session["summary"], session["reason"]) == ("Custom", "VIP")


async def test_reads(store: TrailStore) -> None:
    alice, bob = "+33600000001", "+33600000002"
    ids: list[str] = []
    for caller, flow in [
        (alice, "hotline"),
        (bob, "hotline"),
        (alice, "sales"),
        (alice, "hotline"),
    ]:
        ids.append(await new_session(store, caller=caller, flow_id=flow))
        await asyncio.sleep(0.002)  # distinct start times
    before_last = datetime.now(UTC)
    await asyncio.sleep(0.002)
    ids.append(await new_session(store, caller="anonymous"))
    store.append(ids[0], [Event("summary", "x", {"text": "Paid a bill"})], "voice")
    await store.end_session(ids[0], outcome="completed", node="bye")
    await store.end_session(ids[2], outcome="hangup", node="menu")
    await store.flush()

    def idset(rows: list[dict[str, Any]]) -> list[str]:
        return [r["id"] for r in rows]

    assert idset(await store.list_sessions()) == ids[::-1]
    assert idset(await store.list_sessions(caller=alice)) == [ids[3], ids[2], ids[0]]
    assert idset(await store.list_sessions(flow_id="hotline")) == [ids[4], ids[3], ids[1], ids[0]]
    assert idset(await store.list_sessions(live=True)) == [ids[4], ids[3], ids[1]]
    assert idset(await store.list_sessions(live=False)) == [ids[2], ids[0]]
    assert idset(await store.list_sessions(since=before_last)) == [ids[4]]
    naive = before_last.replace(tzinfo=None)  # taken as UTC
    assert idset(await store.list_sessions(since=naive)) == [ids[4]]
    assert idset(await store.list_sessions(caller=alice, flow_id="hotline", live=True)) == [ids[3]]
    assert idset(await store.list_sessions(limit=2)) == [ids[4], ids[3]]
    rows = await store.list_sessions(caller=alice, live=False)
    assert "state" not in rows[0]
    assert rows[-1]["summary"] == "Paid a bill" and rows[-1]["live"] is False

    previous = await store.previous_contacts(alice, exclude=ids[3])
    assert idset(previous) == [ids[2], ids[0]]
    assert previous[1]["summary"] == "Paid a bill"
    assert idset(await store.previous_contacts(alice, exclude=ids[3], limit=1)) == [ids[2]]
    assert await store.previous_contacts("anonymous") == []
    assert await store.previous_contacts(None) == []
    assert await store.previous_contacts("+1999") == []


async def test_session_continued_from_another_process(open_store: OpenStore) -> None:
    """Two stores (two servers) append to one session: nothing clashes or vanishes."""
    voice = await open_store()
    web = await open_store()
    sid = await new_session(voice)
    voice.append(sid, [Event("prompt", "a", {"n": n}) for n in (1, 2, 3)], "voice")
    await voice.flush()

    web.append(sid, [Event("choice", "menu", {"n": n}) for n in (4, 5)], "web")
    await web.save_state(sid, {"node": "web"})
    await web.flush()
    # The voice store still believes the session is its own (offset 0): its next
    # seqs clash with the web store's, and must be moved after them.
    voice.append(sid, [Event("prompt", "b", {"n": n}) for n in (6, 7)], "voice")
    await voice.flush()
    web.append(sid, [Event("tap", "menu", {"n": 8})], "web")
    await web.flush()

    events = await voice.events(sid)
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert [e["data"]["n"] for e in events] == list(range(1, 9))
    assert [e["channel"] for e in events] == ["voice"] * 3 + ["web"] * 2 + ["voice"] * 2 + ["web"]
    assert voice.events_dropped == web.events_dropped == 0
    session = await web.get_session(sid)
    assert session is not None and session["state"] == {"node": "web"}


async def test_refused_events_do_not_block_others(open_store: OpenStore, backend: Backend) -> None:
    store = await open_store(linger=30.0)
    good = await new_session(store)
    store.append(good, [Event("prompt", "a", {"n": 1})], "voice")
    store.append("no-such-session", [Event("prompt", "a"), Event("prompt", "b")], "voice")
    store.append(good, [Event("prompt", "a", {"n": 2})], "voice")
    await store.flush()
    assert [e["data"] for e in await store.events(good)] == [{"n": 1}, {"n": 2}]
    assert store.events_dropped == 2
    assert await count_events(backend) == 2
    # The writer goes on as usual.
    store.append(good, [Event("prompt", "a", {"n": 3})], "voice")
    await store.flush()
    assert len(await store.events(good)) == 3


async def test_event_data_is_copied_and_made_json_safe(store: TrailStore) -> None:
    sid = await new_session(store, caller="+33\x00611")
    data: dict[str, Any] = {
        "nan": float("nan"),
        "when": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "pair": (1, 2),
        "text": "spoken\x00text",
        "nested": {3: {"set": {"x"}}},
        "obj": object,
    }
    store.append(sid, [Event("speech", "ask", data), Event("x" * 100, "n" * 300, None)], "voice")  # type: ignore[arg-type]
    data["text"] = "changed after append"
    events = await store.events(sid)
    assert events[0]["data"] == {
        "nan": None,
        "when": "2024-05-01T12:00:00+00:00",
        "pair": [1, 2],
        "text": "spokentext",
        "nested": {"3": {"set": ["x"]}},
        "obj": "<class 'object'>",
    }
    assert (
        events[1]["kind"] == "x" * 64 and events[1]["node"] == "n" * 128 and events[1]["data"] == {}
    )
    session = await store.get_session(sid)
    assert session is not None and session["caller"] == "+33611"


# --------------------------------------------------------------------------- outage


async def test_writer_survives_database_outage(open_store: OpenStore, backend: Backend) -> None:
    """The database goes away mid-stream; appends never block; no event is lost."""
    store = await open_store(sqlite_busy_timeout=0.05, linger=0.01, max_backoff=0.2)
    sessions = [await new_session(store, caller=f"+3362000{i:04d}") for i in range(20)]
    await store.flush()
    rounds = 50
    appended_in_outage = 0
    outage_started = asyncio.Event()
    outage_over = asyncio.Event()

    async def produce() -> None:
        nonlocal appended_in_outage
        for r in range(rounds):
            for sid in sessions:
                store.append(sid, [Event("input", "menu", {"r": r})], "voice")
                if outage_started.is_set() and not outage_over.is_set():
                    appended_in_outage += 1
            if r == 10:
                outage_started.set()
            if r == 35:
                await outage_over.wait()  # keep appending across the recovery too
            await asyncio.sleep(0.02)

    producer = asyncio.create_task(produce())
    await outage_started.wait()
    errors_before = store.write_errors

    if backend.name == "sqlite":
        assert backend.path is not None
        locker = sqlite3.connect(backend.path, timeout=5, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")  # every other writer now gets "database is locked"
            written_before = locker.execute("SELECT count(*) FROM events").fetchone()[0]
            deadline = time.monotonic() + 10
            while store.write_errors < errors_before + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            written_during = (
                locker.execute("SELECT count(*) FROM events").fetchone()[0] - written_before
            )
            locker.execute("COMMIT")
        finally:
            locker.close()
    else:
        # Hold the events table, wait for the store's writer to block on it,
        # then kill every connection of the store (PostgreSQL restart, failover).
        holder = await backend.pg()
        killer = await backend.pg()
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            written_before = await holder.fetchval("SELECT count(*) FROM events")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                waiting = await killer.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    backend.app_name,
                )
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting, "the store's writer never reached the locked table"
            for _ in range(3):  # also kill the reconnections
                await killer.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = $1",
                    backend.app_name,
                )
                await asyncio.sleep(0.15)
            written_during = await holder.fetchval("SELECT count(*) FROM events") - written_before
            await transaction.rollback()
        finally:
            await holder.close()
            await killer.close()

    outage_over.set()
    await producer
    await store.flush()

    assert store.write_errors > errors_before, "the outage was not noticed"
    assert store.last_error
    assert written_during == 0
    # calls went on appending while nothing could be written
    assert appended_in_outage >= 10 * len(sessions)
    assert store.events_dropped == 0
    assert await count_events(backend) == rounds * len(sessions)
    for sid in sessions:
        events = await store.events(sid)
        assert [e["seq"] for e in events] == list(range(1, rounds + 1))
        assert [e["data"]["r"] for e in events] == list(range(rounds))


# --------------------------------------------------------------------------- summary


def ev(kind: str, node: str | None = None, **data: Any) -> dict[str, Any]:
    return {"kind": kind, "node": node, "data": data}


BRIEF_TRAIL = [
    Event("session_start", "main"),
    Event("prompt", "welcome", {"text": "Welcome"}),
    Event("summary", "verify", {"text": "Verified account ****3321"}),
    Event("choice", "menu", {"key": "1", "label": "Balance"}),
    Event("lookup", "balance", {"name": "balance", "ok": True, "status": 200}),
    Event("summary", "balance", {"text": "checked balance (-35.20)"}),
    Event("choice", "menu", {"key": "2", "label": "Pay"}),
    Event("summary", "pay", {"text": "tried to pay, card declined"}),
    Event("global_key", "pay", {"key": "0", "meaning": "agent"}),
    Event("transfer", "to_agent", {"queue": "support"}),
]


def test_summary_uses_designer_fragments() -> None:
    assert build_summary(BRIEF_TRAIL) == (
        "Verified account ****3321 · checked balance (-35.20) · "
        "tried to pay, card declined · asked for a person"
    )


def test_summary_falls_back_to_choices_and_counts_failures() -> None:
    trail = [
        ev("choice", "menu", key="1", label="Billing"),
        ev("noinput", "pay"),
        ev("noinput", "pay"),
        ev("nomatch", "pay"),
        ev("choice", "billing", key="3", label="Pay a bill"),
        ev("lookup", "card", name="card_check", ok=False, status="timeout"),
        ev("transfer", "q", reason="payment failed"),
    ]
    assert build_summary(trail) == (
        "Billing · Pay a bill · look-up card_check failed · "
        "2 no-input / 1 no-match · payment failed"
    )


def test_summary_deduplicates_and_counts_alone() -> None:
    trail = [
        ev("summary", "v", text="Verified account ****3321"),
        ev("summary", "v", text="  verified account   ****3321 "),
        ev("choice", "m", label="ignored when there are fragments"),
        ev("lookup", "l", name="crm", ok=False),
        ev("lookup", "l", name="crm", ok=False),
        ev("lookup", "l", name="crm", ok=True),
        ev("nomatch", "m"),
    ]
    assert build_summary(trail) == "Verified account ****3321 · look-up crm failed · 1 no-match"
    assert build_summary([ev("noinput"), ev("noinput"), ev("noinput")]) == "3 no-input"
    assert build_summary([]) == ""
    assert build_summary([ev("session_start"), ev("prompt", text="hi")]) == ""


def test_summary_reason() -> None:
    # A transfer's reason wins over the agent key; a reason already said is not repeated.
    trail = [
        ev("global_key", "m", meaning="agent"),
        ev("transfer", "q", reason="card declined twice"),
    ]
    assert build_summary(trail) == "card declined twice"
    assert person_reason(trail) == "card declined twice"
    trail = [ev("summary", "m", text="Asked for a person"), ev("global_key", "m", meaning="agent")]
    assert build_summary(trail) == "Asked for a person"
    assert person_reason([ev("global_key", "m", meaning="repeat")]) is None
    assert build_summary([ev("global_key", "m", meaning="repeat")]) == ""


def test_summary_truncates_the_middle() -> None:
    trail = [ev("summary", text=f"step {i:02d} done with some detail") for i in range(1, 13)]
    trail.append(ev("transfer", reason="wants a refund"))
    assert build_summary(trail) == (
        "step 01 done with some detail · step 02 done with some detail · "
        "step 03 done with some detail · … · step 11 done with some detail · "
        "step 12 done with some detail · wants a refund"
    )
    long = build_summary([ev("summary", text="x" * 150), ev("transfer", reason="y" * 150)])
    assert long == "x" * 100 + "…" + "y" * 99
    assert len(long) == 200
    assert build_summary([ev("summary", text="ab" * 20)], limit=11) == "ababa…babab"


def test_handoff() -> None:
    session = {"id": "s1", "caller": "+331", "language": "fr", "summary": None, "reason": None}
    pop = handoff(session, BRIEF_TRAIL)
    assert pop["session_id"] == "s1" and pop["caller"] == "+331" and pop["language"] == "fr"
    assert pop["summary"] == build_summary(BRIEF_TRAIL)
    assert pop["reason"] == "asked for a person"
    assert pop["events"][2] == {
        "kind": "summary",
        "node": "verify",
        "data": {"text": "Verified account ****3321"},
    }
    assert len(pop["events"]) == len(BRIEF_TRAIL)
    stored = handoff({**session, "summary": "Stored", "reason": "VIP"}, [])
    assert (stored["summary"], stored["reason"], stored["events"]) == ("Stored", "VIP", [])


def test_summary_speaks_the_agents_language() -> None:
    trail = [
        {"kind": "session_start", "node": "welcome", "data": {"lang": "en-US", "agent_lang": "zh-CN"}},
        {"kind": "summary", "node": "v", "data": {"text": "已验证账户 ****0001"}},
        {"kind": "lookup", "node": "balance", "data": {"name": "balance", "ok": False, "status": 500}},
        {"kind": "noinput", "node": "main", "data": {}},
        {"kind": "nomatch", "node": "main", "data": {}},
        {"kind": "nomatch", "node": "main", "data": {}},
        {"kind": "global_key", "node": "main", "data": {"meaning": "agent"}},
    ]
    assert build_summary(trail) == "已验证账户 ****0001 · balance查询失败 · 1次无输入 / 2次输入有误 · 客户要求人工服务"
    trail[0]["data"]["agent_lang"] = "en-US"
    assert build_summary(trail) == ("已验证账户 ****0001 · look-up balance failed · 1 no-input / 2 no-match · "
                                    "asked for a person")
