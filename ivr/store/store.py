"""The trail store: sessions and their events, written without making calls wait.

Every write (new session, trail events, latest engine state, session end) is
queued in memory and returns at once; one background writer task commits the
queue in batches (up to ``batch_size`` operations, or whatever arrived within
``linger`` seconds), many sessions per transaction. When the database is away
or busy (PostgreSQL restarting, SQLite locked by another writer) the writer
keeps the batch and retries with a capped exponential backoff, so nothing
appended is lost once the database is back.

Ordering. Each event gets its timestamp and its place in the session's order
when it is appended. Its final ``seq`` is ``offset + local``: ``local`` counts
the session's events appended through this store; ``offset`` is 0 for a
session this store created and is read from the database (``max(seq)``) for a
session continued from another process (the web face of a call that started on
another server). Should two processes append to one session at the same time,
the unique ``(session_id, seq)`` index rejects the clash and the writer re-reads
the offset, so events are never overwritten or lost.

Exactly once. A transaction whose outcome is unknown (the connection died
during the ``COMMIT``, e.g. ``pg_terminate_backend``) is retried only after
checking what it already wrote: sessions whose row exists and events whose
``(session_id, seq)`` row exists with the same kind and timestamp are not
written again, so a retry never duplicates an event.

Bounded memory. At most ``max_queue`` operations wait in memory. When the
database is away long enough to fill that, further operations are spilled to
an append-only JSON-lines file (``spill_path``, fsynced in batches) and
replayed into the database, in order, once it is back; while the file holds
operations, new ones go behind them, so each session's order is kept. A store
closed while the database is still away spills what it holds in memory too,
and the next store opened on the same ``spill_path`` replays the file first
(idempotently, as above). Without a ``spill_path``, operations beyond
``max_queue`` are refused: logged and counted in ``events_dropped``.

An operation the database refuses for good (events for a session that does not
exist, a value it cannot store) is isolated: the batch is retried session by
session, then operation by operation, and only the refused operation is dropped
(logged, and counted in ``events_dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from datetime import time as dtime
from pathlib import Path
from typing import Any, Literal, cast

from sqlalchemy import bindparam, func, insert, select, tuple_, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import models
from .engine import WRITE_OPTION, make_engine, normalize_url
from .migrations import migrate as run_migrations
from .models import events_table as EV
from .models import sessions_table as SE
from .summary import build_summary, person_reason

__all__ = ["TrailStore", "default_spill_path"]

log = logging.getLogger(__name__)

# Caller numbers that say nothing about who called: never link contacts by them.
ANONYMOUS_CALLERS = frozenset({"", "anonymous", "unknown", "restricted", "private", "unavailable"})


class _Refused(Exception):
    """The database refused operations for good (not worth retrying as they are)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _is_permanent(exc: Exception) -> bool:
    """Errors retrying cannot fix: constraint violations, bad values.

    Everything else (lost connections, locked database, timeouts, even a
    missing table while a database is restored) is worth retrying.
    """
    if isinstance(exc, IntegrityError | DataError):
        return True
    # A value the driver could not even send (not an error of the database).
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


# --------------------------------------------------------------------------- values


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-safe deep copy that both SQLite and PostgreSQL JSONB accept.

    Non-finite floats become None, NUL characters are removed (JSONB refuses
    them), tuples and sets become lists, dates ISO strings, anything else its
    ``str``. Copying at append time also protects the queue from later changes
    to the caller's dicts.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if depth > 32:
        return str(value)
    if isinstance(value, Mapping):
        return {_clean(str(k)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, bytes):
        return _clean(value.decode("utf-8", "replace"))
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _plain(to_dict(), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), depth + 1)
    return _clean(str(value))


def _clean(value: str) -> str:
    return value.replace("\x00", "")


def _clip(value: Any, length: int) -> str | None:
    """A string column value: NUL-free and no longer than the column."""
    if value is None:
        return None
    return _clean(str(value))[:length]


def _check_id(session_id: Any) -> str:
    """A session id as the store keeps it; a bad one is a caller bug, refused at once."""
    if not isinstance(session_id, str) or not session_id or len(session_id) > models.ID_LEN:
        raise ValueError(f"bad session id (1 to {models.ID_LEN} characters): {session_id!r}")
    return session_id


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no offset; the store writes UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    moment = _utc(value)
    return moment.isoformat() if moment else None


def _event_parts(item: Any) -> tuple[str, str | None, dict[str, Any]]:
    """``(kind, node, data)`` of an engine ``Event`` or a dict with those keys."""
    if isinstance(item, Mapping):
        kind, node, data = item.get("kind"), item.get("node"), item.get("data")
    else:
        kind = getattr(item, "kind", None)
        node = getattr(item, "node", None)
        data = getattr(item, "data", None)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"trail event without a kind: {item!r}")
    if data is None:
        data = {}
    elif not isinstance(data, Mapping):
        data = {"value": data}
    return kind, None if node is None else str(node), dict(data)


# --------------------------------------------------------------------------- queue


@dataclasses.dataclass(eq=False)
class _Live:
    """What the store tracks of a session it has operations for."""

    offset: int | None  # seq = offset + local; None: read max(seq) before writing
    next_local: int = 0
    pending: int = 0  # queued or in-flight operations
    last_ticket: int = 0
    ended: bool = False
    used: float = dataclasses.field(default_factory=time.monotonic)


OpKind = Literal["create", "event", "state", "end"]


@dataclasses.dataclass(eq=False)
class _Op:
    ticket: int
    kind: OpKind
    session_id: str
    live: _Live
    values: dict[str, Any]
    enqueued: float
    local: int = 0
    result: Any = None
    #: an earlier attempt may have committed it (replayed from a previous run)
    maybe_written: bool = False


def _by_session(ops: list[_Op]) -> list[list[_Op]]:
    groups: dict[str, list[_Op]] = {}
    for op in ops:
        groups.setdefault(op.session_id, []).append(op)
    return list(groups.values())


def default_spill_path(url: str | None) -> Path:
    """Where a store on ``url`` spills: ``<file>-spill.jsonl`` next to a SQLite
    database, ``var/trail-spill.jsonl`` otherwise."""
    from sqlalchemy.engine import make_url

    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).with_name(Path(parsed.database).name + "-spill.jsonl")
    return Path("var/trail-spill.jsonl")


class _Spill:
    """The append-only file operations go to when the in-memory queue is full.

    One JSON object per line. Appends are buffered and fsynced in batches (at
    most ``FSYNC_DELAY`` seconds after the first unsynced line, and before
    anything is read back). The file is emptied once every line in it is read
    back and written to the database.
    """

    FSYNC_DELAY = 0.05

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = uuid.uuid4().hex  # tells this run's lines from a previous run's
        self.pending = 0  # lines not yet read back
        self._out: Any = None
        self._read_pos = 0
        self._inherited_next = 0
        self._sync_handle: asyncio.TimerHandle | None = None
        self._lock: Any = None

    def open(self) -> int:
        """Count what a previous run left (taking the file if there is one); returns
        that count. Nothing is created until something is spilled."""
        if not self.path.exists():
            return 0
        self._claim()
        inherited = 0
        if self.path.exists():
            with self.path.open("rb") as f:
                inherited = sum(1 for line in f if line.endswith(b"\n"))
        self.pending = inherited
        return inherited

    def _claim(self) -> None:
        """Lock the file for this store (one store per file: a second one gets its
        own ``<name>.<pid>-<n>`` file)."""
        if self._lock is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        base, n = self.path, 0
        while True:
            lock = base.with_name(base.name + ".lock").open("a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                lock.close()
                n += 1
                base = self.path.with_name(f"{self.path.name}.{os.getpid()}-{n}")
        if base != self.path:
            log.warning("trail spill file %s is in use by another store; using %s", self.path, base)
        self.path, self._lock = base, lock

    def inherited_ticket(self) -> int:
        self._inherited_next -= 1
        return self._inherited_next  # below every real ticket: never "done" by mistake

    def append(self, record: dict[str, Any]) -> None:
        if self._out is None:
            self._claim()
            self._out = self.path.open("ab")
        self._out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self.pending += 1
        if self._sync_handle is None:
            self._sync_handle = asyncio.get_running_loop().call_later(self.FSYNC_DELAY, self.sync)

    def sync(self) -> None:
        if self._sync_handle is not None:
            self._sync_handle.cancel()
            self._sync_handle = None
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())

    def read(self, limit: int) -> list[dict[str, Any]]:
        """The next ``limit`` lines, oldest first."""
        self.sync()
        records: list[dict[str, Any]] = []
        with self.path.open("rb") as f:
            f.seek(self._read_pos)
            while len(records) < limit:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break  # end of file (or a line torn by a crash: not counted)
                self._read_pos = f.tell()
                self.pending -= 1
                try:
                    records.append(json.loads(line))
                except ValueError:
                    log.error("trail spill file %s: unreadable line skipped", self.path)
        if not records and self.pending:
            self.pending = 0  # the counted lines are gone (file removed under us)
        return records

    def drained(self) -> None:
        """Every line is read back and written: empty the file."""
        if self.pending or (self._read_pos == 0 and self._out is None):
            return
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._read_pos = 0

    def prepend(self, records: list[dict[str, Any]]) -> None:
        """Put ``records`` before the lines not read back yet (atomically)."""
        self.sync()
        self._claim()
        rest = b""
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._read_pos)
                rest = f.read()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            for record in records:
                f.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            f.write(rest)
            f.flush()
            os.fsync(f.fileno())
        self.close()
        os.replace(tmp, self.path)
        self._read_pos = 0
        self.pending += len(records)

    def close(self) -> None:
        if self._out is not None:
            self.sync()
            self._out.close()
            self._out = None

    def release(self) -> None:
        self.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


# --------------------------------------------------------------------------- store


class TrailStore:
    """Sessions and their trails in SQLite or PostgreSQL (see the module doc).

    Open with :meth:`open`; writes (:meth:`create_session`, :meth:`append`,
    :meth:`save_state`) return without touching the database, :meth:`flush` and
    :meth:`end_session` wait for the writer. Reads of one session first flush
    that session's queued writes, so a process always reads its own writes.

    Writer metrics, for the metrics exporter: ``events_written``,
    ``events_dropped``, ``batches_written``, ``write_errors``,
    ``last_write_latency`` (seconds of the last committed transaction),
    ``last_write_delay`` (seconds from append to commit of the oldest operation
    of that batch), ``last_error``, :attr:`queue_size`, ``events_spilled``
    (operations written to the spill file), ``events_replayed`` (operations
    read back from it) and :attr:`spill_size` (operations waiting in it).
    """

    #: Forget the bookkeeping of a session nobody wrote to for this long.
    IDLE_FORGET = 3600.0

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 500,
        linger: float = 0.05,
        max_backoff: float = 5.0,
        max_queue: int = 100_000,
        spill_path: str | os.PathLike[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_queue < batch_size:
            raise ValueError("max_queue must be at least batch_size")
        self.engine = engine
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self.batch_size = batch_size
        self.linger = linger
        self.max_backoff = max_backoff

        self.events_written = 0
        self.events_dropped = 0
        self.batches_written = 0
        self.write_errors = 0
        self.last_write_latency: float | None = None
        self.last_write_delay: float | None = None
        self.last_error: str | None = None
        self.max_queue = max_queue
        self.events_spilled = 0
        self.events_replayed = 0
        self.events_deduplicated = 0  # already written by an attempt whose outcome was unknown

        self._spill = _Spill(Path(spill_path)) if spill_path is not None else None
        self._spill_ends: dict[int, _Op] = {}  # spilled end ops: their caller awaits op.result
        self._inherited: dict[str, _Live] = {}  # sessions of spilled ops of a previous run
        self._queue: deque[_Op] = deque()
        self._inflight: list[_Op] = []
        self._live: dict[str, _Live] = {}
        self._ticket = 0  # last ticket handed out
        self._done = 0  # every ticket up to this one is written (or dropped)
        self._urgent_until = 0  # a flush waits for tickets up to this one
        self._poke = asyncio.Event()
        self._written = asyncio.Condition()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._failures = 0  # consecutive failed attempts
        self._last_sweep = time.monotonic()

    # ----------------------------------------------------------------- life

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        migrate: bool = True,
        sqlite_busy_timeout: float = 5.0,
        batch_size: int = 500,
        linger: float = 0.05,
        max_backoff: float = 5.0,
        max_queue: int = 100_000,
        spill_path: str | os.PathLike[str] | None = None,
        **engine_options: Any,
    ) -> TrailStore:
        """Connect (see :func:`normalize_url`), migrate to head, start the writer.

        ``engine_options`` go to :func:`make_engine` (e.g. ``connect_args``).
        Operations a previous store left in ``spill_path`` are written first.
        """
        engine = make_engine(url, sqlite_busy_timeout=sqlite_busy_timeout, **engine_options)
        try:
            if migrate:
                await run_migrations(engine)
        except BaseException:
            await engine.dispose()
            raise
        store = cls(engine, batch_size=batch_size, linger=linger, max_backoff=max_backoff,
                    max_queue=max_queue, spill_path=spill_path)
        store.start()
        return store

    def start(self) -> None:
        """Start the background writer (``open`` does it)."""
        if self._writer is None:
            if self._spill is not None:
                inherited = self._spill.open()
                if inherited:
                    log.warning("trail store: replaying %d operations spilled to %s by a previous run",
                                inherited, self._spill.path)
            self._writer = asyncio.get_running_loop().create_task(
                self._run(), name="ivr-trail-writer"
            )

    async def close(self, timeout: float | None = 30.0) -> None:
        """Write everything queued, stop the writer and close the connections.

        If the database stays unreachable for ``timeout`` seconds, what is still
        queued is given up (logged and counted in ``events_dropped``).
        """
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._poke.set()
        if self._writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)
            except TimeoutError:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
                held = [*self._inflight, *self._queue]
                if self._spill is not None:
                    # in front of what is spilled already: the next store writes them first
                    self._spill.prepend([self._record(op) for op in held])
                    log.error(
                        "trail store closed with the database unreachable: %d operations kept in %s "
                        "(%d in all), written by the next start",
                        len(held), self._spill.path, self._spill.pending)
                else:
                    lost = [op for op in held if op.kind == "event"]
                    self.events_dropped += len(lost)
                    log.error(
                        "trail store closed with the database unreachable: %d events not written",
                        len(lost),
                    )
        if self._spill is not None:
            self._spill.release()
        async with self._written:
            self._written.notify_all()
        await self.engine.dispose()

    async def __aenter__(self) -> TrailStore:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def queue_size(self) -> int:
        """Operations waiting in memory (including the batch being written); at most
        ``max_queue`` plus one batch."""
        return len(self._queue) + len(self._inflight)

    @property
    def spill_size(self) -> int:
        """Operations waiting in the spill file."""
        return self._spill.pending if self._spill is not None else 0

    # ----------------------------------------------------------------- spill

    def _record(self, op: _Op) -> dict[str, Any]:
        values = dict(op.values)
        dates = [k for k, v in values.items() if isinstance(v, datetime)]
        for k in dates:
            values[k] = values[k].isoformat()
        return {"p": self._spill.token if self._spill else "", "t": op.ticket, "k": op.kind,
                "s": op.session_id, "l": op.local, "o": op.live.offset, "v": values, "d": dates}

    def _spill_op(self, op: _Op) -> None:
        assert self._spill is not None
        self._spill.append(self._record(op))
        if op.kind == "end":
            self._spill_ends[op.ticket] = op
        self.events_spilled += 1
        if self._spill.pending == 1:
            log.warning("trail store: %d operations in memory; spilling to %s until the database "
                        "catches up", len(self._queue), self._spill.path)

    def _unspill(self, limit: int) -> None:
        """Move up to ``limit`` spilled operations (the oldest) into the queue."""
        assert self._spill is not None
        for rec in self._spill.read(limit):
            values = rec["v"]
            for k in rec.get("d", ()):
                values[k] = datetime.fromisoformat(values[k])
            sid = rec["s"]
            if rec["p"] == self._spill.token:
                ticket = rec["t"]
                op = self._spill_ends.pop(ticket, None)
                if op is None:
                    live = self._live.get(sid) or _Live(offset=rec["o"], pending=1)
                    op = _Op(ticket, rec["k"], sid, live, values, 0.0, rec["l"])
            else:  # a previous run's: its own bookkeeping, and it may be written already
                live = self._inherited.get(sid)
                if live is None:
                    live = self._inherited[sid] = _Live(offset=rec["o"])
                live.pending += 1
                ticket = self._spill.inherited_ticket()
                op = _Op(ticket, rec["k"], sid, live, values, 0.0, rec["l"], maybe_written=True)
            op.enqueued = time.monotonic() - self.linger
            self._queue.append(op)
            self.events_replayed += 1

    # ----------------------------------------------------------------- writes

    def _live_for(self, session_id: str, *, new: bool = False) -> _Live:
        live = self._live.get(session_id)
        if live is None:
            live = _Live(offset=0 if new else None)
            self._live[session_id] = live
        live.used = time.monotonic()
        return live

    def _enqueue(
        self, kind: OpKind, session_id: str, live: _Live, values: dict[str, Any], local: int = 0
    ) -> _Op:
        if self._closed:
            raise RuntimeError("the trail store is closed")
        if self._spill is None and len(self._queue) >= self.max_queue:
            if kind == "event":
                self.events_dropped += 1
            if self.events_dropped % 1000 == 1:
                log.error("trail store: %d operations waiting and no spill file; %s for session %s "
                          "refused (%d events refused so far)", len(self._queue), kind, session_id,
                          self.events_dropped)
            # refused, not queued: a waiter on it must not hang
            return _Op(0, kind, session_id, live, values, time.monotonic(), local)
        self._ticket += 1
        op = _Op(self._ticket, kind, session_id, live, values, time.monotonic(), local)
        live.pending += 1
        live.last_ticket = op.ticket
        if self._spill is not None and (self._spill.pending or len(self._queue) >= self.max_queue):
            self._spill_op(op)  # behind what is spilled already: order kept
            if self._spill.pending == 1:
                self._poke.set()
            return op
        self._queue.append(op)
        if len(self._queue) == 1 or len(self._queue) >= self.batch_size:
            self._poke.set()
        return op

    async def create_session(
        self,
        *,
        flow_id: str,
        flow_version: str,
        channel: str,
        caller: str | None = None,
        dialed: str | None = None,
        uniqueid: str | None = None,
        language: str | None = None,
        variables: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> str:
        """Record a new session and return its id (a uuid4 hex unless given, up to 64 characters).

        Returns at once; the row is written by the writer with the next batch.
        """
        for name, value in (
            ("flow_id", flow_id),
            ("flow_version", flow_version),
            ("channel", channel),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"create_session needs a non-empty {name}")
        sid = _check_id(session_id) if session_id is not None else uuid.uuid4().hex
        live = self._live_for(sid, new=True)
        values = {
            "id": sid,
            "flow_id": _clip(flow_id, models.FLOW_ID_LEN),
            "flow_version": _clip(flow_version, models.FLOW_VERSION_LEN),
            "channel": _clip(channel, models.CHANNEL_LEN),
            "caller": _clip(caller, models.NUMBER_LEN),
            "dialed": _clip(dialed, models.NUMBER_LEN),
            "uniqueid": _clip(uniqueid, models.UNIQUEID_LEN),
            "language": _clip(language, models.LANGUAGE_LEN),
            "started_at": datetime.now(UTC),
            "variables": _plain(dict(variables)) if variables is not None else None,
        }
        self._enqueue("create", sid, live, values)
        return sid

    def append(self, session_id: str, events: Iterable[Any] | Any, channel: str) -> int:
        """Queue trail events of a session; never waits. Returns how many were queued.

        ``events`` is one event or an iterable of them: engine ``Event`` objects
        or dicts with ``kind``, ``node`` and ``data``. Any kind is accepted.
        Timestamp and order are taken now; ``data`` is copied (JSON-safe).
        """
        _check_id(session_id)
        if isinstance(events, Mapping) or hasattr(events, "kind"):
            events = [events]
        parts = [_event_parts(item) for item in events]  # validate all before queueing any
        if not parts:
            return 0
        live = self._live_for(session_id)
        at = datetime.now(UTC)
        chan = _clip(channel, models.CHANNEL_LEN) or "unknown"
        for kind, node, data in parts:
            live.next_local += 1
            values = {
                "at": at,
                "channel": chan,
                "kind": _clip(kind, models.KIND_LEN),
                "node": _clip(node, models.NODE_LEN),
                "data": _plain(data),
            }
            self._enqueue("event", session_id, live, values, local=live.next_local)
        return len(parts)

    async def save_state(
        self,
        session_id: str,
        state: Mapping[str, Any],
        variables: Mapping[str, Any] | None = None,
        language: str | None = None,
    ) -> None:
        """Queue the session's latest engine state (and non-masked variables, language).

        Returns at once. Written after the events appended before it; when
        several are queued, the latest value of each field wins. ``flush`` waits
        for it like for events.
        """
        _check_id(session_id)
        values: dict[str, Any] = {"state": _plain(dict(state))}
        if variables is not None:
            values["variables"] = _plain(dict(variables))
        if language is not None:
            values["language"] = _clip(language, models.LANGUAGE_LEN)
        self._enqueue("state", session_id, self._live_for(session_id), values)

    async def end_session(
        self,
        session_id: str,
        *,
        outcome: str,
        node: str | None,
        summary: str | None = None,
        reason: str | None = None,
    ) -> str | None:
        """Close a session after all its events are written; returns its summary.

        ``summary`` defaults to :func:`build_summary` of the stored trail and
        ``reason`` to the reason found in the trail (transfer reason, or the
        caller asking for a person). Events appended later (an agent connecting)
        are still accepted.
        """
        live = self._live_for(_check_id(session_id))
        live.ended = True
        values = {
            "ended_at": datetime.now(UTC),
            "outcome": _clip(outcome, models.OUTCOME_LEN),
            "end_node": _clip(node, models.NODE_LEN),
            "summary": _clean(summary) if summary is not None else None,
            "reason": _clean(reason) if reason is not None else None,
        }
        op = self._enqueue("end", session_id, live, values)
        await self._wait_for(op.ticket)
        return cast(str | None, op.result)

    async def flush(self, session_id: str | None = None) -> None:
        """Wait until everything queued so far (or queued for ``session_id``) is written."""
        if session_id is None:
            target = self._ticket
        else:
            live = self._live.get(session_id)
            target = live.last_ticket if live is not None and live.pending else 0
        await self._wait_for(target)

    async def _wait_for(self, ticket: int) -> None:
        if self._done >= ticket:
            return
        if self._writer is None:
            raise RuntimeError("the trail store writer is not running (use TrailStore.open)")
        self._urgent_until = max(self._urgent_until, ticket)
        self._poke.set()
        async with self._written:
            await self._written.wait_for(lambda: self._done >= ticket or self._writer_gone())
        if self._done < ticket:
            raise RuntimeError("the trail store stopped before writing everything")

    def _writer_gone(self) -> bool:
        return self._writer is not None and self._writer.done()

    # ----------------------------------------------------------------- writer

    def _urgent(self) -> bool:
        return (
            self._closing or len(self._queue) >= self.batch_size or self._urgent_until > self._done
        )

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue and self._spill is not None and self._spill.pending:
                    self._unspill(self.batch_size)
                if not self._queue:
                    if self._spill is not None:
                        self._spill.drained()
                    if self._closing:
                        return
                    self._poke.clear()
                    await self._poke.wait()
                    continue
                # Linger a little so that one transaction carries many events.
                while not self._urgent():
                    delay = self._queue[0].enqueued + self.linger - time.monotonic()
                    if delay <= 0:
                        break
                    self._poke.clear()
                    try:
                        await asyncio.wait_for(self._poke.wait(), delay)
                    except TimeoutError:
                        break
                count = min(self.batch_size, len(self._queue))
                self._inflight = [self._queue.popleft() for _ in range(count)]
                await self._write_batch(self._inflight)
                self._complete(self._inflight)
                self._inflight = []
                async with self._written:
                    self._written.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("trail store writer stopped")
            raise
        finally:
            async with self._written:
                self._written.notify_all()

    def _complete(self, batch: list[_Op]) -> None:
        for op in batch:
            live = op.live
            live.pending -= 1
            if live.pending == 0 and live.ended and self._live.get(op.session_id) is live:
                del self._live[op.session_id]
        self._done = max(self._done, batch[-1].ticket)
        now = time.monotonic()
        if now - self._last_sweep > 60:
            self._last_sweep = now
            idle = [
                sid
                for sid, live in self._live.items()
                if live.pending == 0 and now - live.used > self.IDLE_FORGET
            ]
            for sid in idle:
                del self._live[sid]

    async def _write_batch(self, batch: list[_Op]) -> None:
        """Write a batch; isolate and drop only what the database refuses for good."""
        try:
            await self._commit(batch)
            return
        except _Refused as refused:
            log.warning("trail batch refused (%s); writing it session by session", refused)
        for group in _by_session(batch):
            try:
                await self._commit(group)
                continue
            except _Refused:
                pass
            for op in group:
                try:
                    await self._commit([op])
                except _Refused as refused:
                    if op.kind == "event":
                        self.events_dropped += 1
                    log.error(
                        "trail %s for session %s refused by the database, dropped: %s",
                        op.kind,
                        op.session_id,
                        refused,
                    )

    async def _commit(self, ops: list[_Op]) -> None:
        """Write ``ops`` in one transaction, retrying until the database takes them.

        Transient failures (connection lost, database locked, timeouts) are
        retried with a capped exponential backoff. An integrity error is retried
        once after re-reading the sessions' seq offsets (another process may
        have appended to the same session); after that, and for any other
        permanent error, :class:`_Refused` is raised.
        """
        offsets_reread = False
        # an earlier attempt may have committed before its connection died
        reconcile = any(op.maybe_written for op in ops)
        while True:
            started = time.monotonic()
            try:
                written, deduplicated = await self._write(ops, reconcile=reconcile)
            except Exception as exc:  # sorted below: transient or permanent
                if not _is_permanent(exc):
                    reconcile = True
                    await self._back_off(exc, len(ops))
                    continue
                if isinstance(exc, IntegrityError) and not reconcile:
                    reconcile = True
                    continue
                if isinstance(exc, IntegrityError) and not offsets_reread:
                    offsets_reread = True
                    for op in ops:
                        if op.kind == "event":
                            op.live.offset = None
                    continue
                raise _Refused(getattr(exc, "orig", None) or exc) from exc
            now = time.monotonic()
            if self._failures:
                log.warning("trail store writing again after %d failed attempts", self._failures)
                self._failures = 0
            self.events_written += written
            self.events_deduplicated += deduplicated
            self.batches_written += 1
            self.last_write_latency = now - started
            self.last_write_delay = now - min(op.enqueued for op in ops)
            return

    async def _back_off(self, exc: Exception, size: int) -> None:
        self._failures += 1
        self.write_errors += 1
        cause = getattr(exc, "orig", None) or exc  # the driver's error, without SQL and values
        self.last_error = f"{type(cause).__name__}: {cause}"
        delay = min(self.max_backoff, 0.05 * 2 ** min(self._failures - 1, 16))
        if self._failures == 1 or self._failures % 20 == 0:
            log.warning(
                "trail store cannot write (%s); keeping %d operations (+%d queued), retry in %.2fs",
                self.last_error,
                size,
                len(self._queue),
                delay,
            )
        await asyncio.sleep(delay)

    async def _write(self, ops: list[_Op], *, reconcile: bool = False) -> tuple[int, int]:
        """One transaction: new sessions, events, latest states, ends, in that order.

        With ``reconcile``, sessions and events an earlier attempt already
        committed are left out. Returns the number of events stored, and how many
        of them the earlier attempt had committed.
        """
        deduplicated = 0
        async with self._write_engine.begin() as conn:
            create_ops = [op for op in ops if op.kind == "create"]
            event_ops = [op for op in ops if op.kind == "event"]
            if reconcile:
                create_ops, event_ops, deduplicated = await self._not_yet_written(conn, create_ops, event_ops)
            creates = [op.values for op in create_ops]
            if creates:
                await conn.execute(insert(SE), creates)

            if event_ops:
                await self._resolve_offsets(conn, event_ops)
                rows = []
                for op in event_ops:
                    assert op.live.offset is not None
                    rows.append(
                        {**op.values, "session_id": op.session_id, "seq": op.live.offset + op.local}
                    )
                await conn.execute(insert(EV), rows)

            states: dict[str, dict[str, Any]] = {}
            for op in ops:
                if op.kind == "state":
                    states.setdefault(op.session_id, {}).update(op.values)
            by_fields: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for sid, values in states.items():
                fields = tuple(sorted(values))
                by_fields.setdefault(fields, []).append(
                    {"b_id": sid, **{f"b_{k}": v for k, v in values.items()}}
                )
            for fields, params in by_fields.items():
                stmt = (
                    update(SE)
                    .where(SE.c.id == bindparam("b_id"))
                    .values({name: bindparam(f"b_{name}") for name in fields})
                )
                await conn.execute(stmt, params)

            for op in ops:
                if op.kind == "end":
                    op.result = await self._end(conn, op)
        return len(event_ops) + deduplicated, deduplicated

    async def _not_yet_written(
        self, conn: AsyncConnection, create_ops: list[_Op], event_ops: list[_Op]
    ) -> tuple[list[_Op], list[_Op], int]:
        """Leave out what an attempt whose outcome is unknown already committed
        (and say how many events that was)."""
        if create_ops:
            ids = {op.session_id for op in create_ops}
            result = await conn.execute(select(SE.c.id).where(SE.c.id.in_(list(ids))))
            present = {row[0] for row in result.all()}
            create_ops = [op for op in create_ops if op.session_id not in present]
        found: set[tuple[str, int]] = set()
        known = [op for op in event_ops if op.live.offset is not None]
        if known:
            keys = {(op.session_id, op.live.offset + op.local): op for op in known}  # type: ignore[operator]
            key_list = list(keys)
            for start in range(0, len(key_list), 500):
                chunk = key_list[start:start + 500]
                result = await conn.execute(
                    select(EV.c.session_id, EV.c.seq, EV.c.kind, EV.c.at)
                    .where(tuple_(EV.c.session_id, EV.c.seq).in_(chunk)))
                for sid, seq, kind, at in result.all():
                    op = keys[(sid, seq)]
                    if kind == op.values["kind"] and _utc(at) == _utc(op.values["at"]):
                        found.add((sid, seq))  # ours, committed by the lost attempt
            if found:
                event_ops = [op for op in event_ops
                             if op.live.offset is None
                             or (op.session_id, op.live.offset + op.local) not in found]
        return create_ops, event_ops, len(found)

    async def _resolve_offsets(self, conn: AsyncConnection, event_ops: list[_Op]) -> None:
        """Set the seq offset of sessions that do not know it from the stored max(seq)."""
        first: dict[str, tuple[_Live, int]] = {}
        for op in event_ops:
            if op.live.offset is None:
                live, local = first.get(op.session_id, (op.live, op.local))
                first[op.session_id] = (live, min(local, op.local))
        if not first:
            return
        result = await conn.execute(
            select(EV.c.session_id, func.max(EV.c.seq))
            .where(EV.c.session_id.in_(list(first)))
            .group_by(EV.c.session_id)
        )
        stored = {sid: top for sid, top in result.all()}
        for sid, (live, local) in first.items():
            # Every earlier local event of this session is written already (FIFO).
            live.offset = (stored.get(sid) or 0) - (local - 1)

    async def _end(self, conn: AsyncConnection, op: _Op) -> str | None:
        values = dict(op.values)
        if values["summary"] is None or values["reason"] is None:
            result = await conn.execute(
                select(EV.c.kind, EV.c.node, EV.c.data)
                .where(EV.c.session_id == op.session_id)
                .order_by(EV.c.seq)
            )
            trail = [dict(row) for row in result.mappings()]
            if values["summary"] is None:
                values["summary"] = build_summary(trail)
            if values["reason"] is None:
                values["reason"] = person_reason(trail)
        await conn.execute(update(SE).where(SE.c.id == op.session_id).values(values))
        return cast(str | None, values["summary"])

    # ----------------------------------------------------------------- reads

    @staticmethod
    def _session_dict(row: Mapping[Any, Any], *, with_state: bool) -> dict[str, Any]:
        out = {
            "id": row["id"],
            "flow_id": row["flow_id"],
            "flow_version": row["flow_version"],
            "channel": row["channel"],
            "caller": row["caller"],
            "dialed": row["dialed"],
            "uniqueid": row["uniqueid"],
            "language": row["language"],
            "started_at": _iso(row["started_at"]),
            "ended_at": _iso(row["ended_at"]),
            "live": row["ended_at"] is None,
            "outcome": row["outcome"],
            "end_node": row["end_node"],
            "summary": row["summary"],
            "reason": row["reason"],
            "variables": row["variables"],
            "agent": row.get("agent"),
            "agent_at": _iso(row.get("agent_at")),
        }
        if with_state:
            out["state"] = row["state"]
        return out

    async def ping(self) -> None:
        """Raise if the database cannot be reached now (for readiness checks)."""
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The session as a dict (ISO timestamps, ``live``, ``state``), or None."""
        await self.flush(session_id)
        async with self.engine.connect() as conn:
            result = await conn.execute(select(SE).where(SE.c.id == session_id))
            row = result.mappings().first()
        return self._session_dict(row, with_state=True) if row else None

    async def events(self, session_id: str) -> list[dict[str, Any]]:
        """The session's trail in order: dicts with seq, at (ISO), channel, kind, node, data."""
        await self.flush(session_id)
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(EV.c.seq, EV.c.at, EV.c.channel, EV.c.kind, EV.c.node, EV.c.data)
                .where(EV.c.session_id == session_id)
                .order_by(EV.c.seq)
            )
            rows = result.mappings().all()
        return [
            {
                "seq": row["seq"],
                "at": _iso(row["at"]),
                "channel": row["channel"],
                "kind": row["kind"],
                "node": row["node"],
                "data": row["data"] if row["data"] is not None else {},
            }
            for row in rows
        ]

    async def list_sessions(
        self,
        *,
        caller: str | None = None,
        flow_id: str | None = None,
        live: bool | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Written sessions, newest first (without ``state``).

        ``live`` True: not ended; False: ended. ``since``: started at or after
        (a naive datetime is taken as UTC). Call :meth:`flush` first to include
        sessions queued by this process a moment ago.
        """
        query = select(*(c for c in SE.c if c.name != "state"))
        if caller is not None:
            query = query.where(SE.c.caller == caller)
        if flow_id is not None:
            query = query.where(SE.c.flow_id == flow_id)
        if live is True:
            query = query.where(SE.c.ended_at.is_(None))
        elif live is False:
            query = query.where(SE.c.ended_at.is_not(None))
        if since is not None:
            query = query.where(SE.c.started_at >= _utc(since))
        query = query.order_by(SE.c.started_at.desc(), SE.c.id).limit(max(0, limit))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._session_dict(row, with_state=False) for row in rows]

    async def previous_contacts(
        self, caller: str | None, *, exclude: str | None = None, limit: int = 10
    ) -> list[dict[str, Any]]:
        """Earlier sessions of the same caller number, newest first.

        Anonymous or withheld numbers link nobody: they give an empty list.
        """
        if caller is None or caller.strip().lower() in ANONYMOUS_CALLERS:
            return []
        query = select(*(c for c in SE.c if c.name != "state")).where(SE.c.caller == caller)
        if exclude is not None:
            query = query.where(SE.c.id != exclude)
        query = query.order_by(SE.c.started_at.desc(), SE.c.id).limit(max(0, limit))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self._session_dict(row, with_state=False) for row in rows]
