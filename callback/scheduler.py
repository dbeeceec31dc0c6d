"""The callback scheduler: one per ``ivr serve``; dials due requests through AMI.

Every ``poll_interval`` (or at once when a request arrives) it looks for due
requests, asks Asterisk (``QueueStatus``) which of their queues have a free
member, and claims at most that many requests per queue:

- PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE`` in one
  transaction, so schedulers on several servers never take the same row;
- SQLite: the same statements in a ``BEGIN IMMEDIATE`` transaction (one writer
  at a time), the ``UPDATE`` guarded by ``status = 'pending'``.

A claim is a lease (``claimed_by``, ``lease_until``) renewed while the call is
placed; a request whose lease ran out (its scheduler died) is claimed again.

Dialling (``Originate`` with ``Async``, outcome from ``OriginateResponse``):

- ``customer_first``: ``Local/<number>@ivr-callback-out``; when the customer
  answers, the dialplan (``ivr-callback,customer``) puts them in the queue
  with the session's variables, so the agent who answers gets the same screen
  pop as for an inbound call (AMI ``AgentConnect``);
- ``agent_first``: a free member's interface is dialled first; its desk pops
  before the phone rings; once the agent answers, the dialplan
  (``ivr-callback,agent``) dials the customer and reports the dial status
  with ``UserEvent(IvrCallbackDial)``.

Outcomes and hang-up causes go on the session's trail (``callback_attempt``,
``callback_result``). Busy / no answer / failed: retried after
``retry_interval`` until ``max_attempts``; then the request fails with the
reason.

Never lost, never rung twice. Each Originate carries a fresh ChannelId, also
passed as the inherited variable ``IVR_CALLBACK_DIAL`` and stored in the
request (``call_uniqueid``) before it is sent; the callback dialplan notes in
Asterisk's database (AstDB ``ivr-callback/<id>``) that it rings the customer
(``DIALLING``), then the ``DIALSTATUS`` (``ANSWER`` once they are in the
queue). When the AMI link drops during an Originate, or a scheduler reclaims
a request whose previous scheduler died mid-dial, the outcome is unknown: the
scheduler waits for the link and reads the note back (``DBGet``; Asterisk does
not replay the events missed meanwhile). No note, twice ``ORIGINATE_SETTLE``
apart: the customer was not rung;
the request goes back to pending (the attempt is not counted) and is dialled
again. A note: the attempt happened and ends with the noted status, exactly as
if the ``OriginateResponse`` had arrived (``DIALLING`` for longer than the
dial timeout: outcome ``unknown``, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from ivr import names
from ivr.ami import AmiActionError, AmiActionTimeout, AmiDisconnected
from ivr.engine.types import Event
from ivr.flow import expr
from ivr.store.engine import WRITE_OPTION
from ivr.store.models import sessions_table as SE
from ivr.store.models_handoff import callbacks_table as CB

log = logging.getLogger("callback.scheduler")

SUCCESS = "answered"
#: Seconds to wait before retrying when AMI failed us (the outcome is unknown).
AMI_RETRY_DELAY = 2.0
#: Seconds between reads of a dial's AstDB note while it says DIALLING.
NOTE_POLL = 1.0
#: No note yet: read once more after this long before concluding the customer
#: was not rung (an Originate Asterisk accepted may take a moment to start).
ORIGINATE_SETTLE = 2.0
DIAL_STATUS = {"ANSWER": "answered", "BUSY": "busy", "NOANSWER": "noanswer", "CONGESTION": "congestion",
               "CHANUNAVAIL": "unavailable", "CANCEL": "cancelled", "DONTCALL": "refused", "TORTURE": "refused"}


def _now() -> datetime:
    return datetime.now(UTC)


def free_members(status: Any) -> list[Any]:
    """Members that could take a call now: logged in, not paused, not busy."""
    return [m for m in status.members if not m.paused and m.status in (0, 1) and not m.in_call]


class CallbackScheduler:
    def __init__(self, store: Any, ami: Any, *, server_id: str, handoff: Any = None,
                 poll_interval: float = 2.0, lease: float = 120.0, concurrency: int = 10,
                 dial_timeout: float = 30.0, caller_id: str | None = None):
        self.store = store
        self.ami = ami
        self.server_id = server_id
        self.handoff = handoff
        self.poll_interval = poll_interval
        self.lease = lease
        self.concurrency = concurrency
        self.dial_timeout = dial_timeout
        self.caller_id = caller_id
        self._write = store.engine.execution_options(**{WRITE_OPTION: True})
        # SQLite's busy handler is not fair: many dial tasks of one process
        # queueing for the write lock can starve past busy_timeout. One writer
        # per process at a time keeps the wait short (PostgreSQL needs none).
        self._serialize = store.engine.dialect.name == "sqlite"
        self._db_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dials: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._hangups: dict[str, asyncio.Future[Any]] = {}
        self._dial_events: dict[str, asyncio.Future[Any]] = {}
        self._unsubscribe: list[Any] = []
        #: counters for metrics and tests
        self.claimed = 0
        self.dialled = 0

    # ---- life
    def start(self) -> None:
        self._unsubscribe = [self.ami.on_event("Hangup", self._on_hangup),
                             self.ami.on_event("UserEvent", self._on_user_event)]
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"callbacks-{self.server_id}")

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._dials:  # let calls being placed report; the leases cover the rest
            await asyncio.wait(list(self._dials), timeout=grace)
            for task in list(self._dials):
                task.cancel()
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    @contextlib.asynccontextmanager
    async def _writing(self) -> Any:
        if not self._serialize:
            async with self._write.begin() as conn:
                yield conn
            return
        async with self._db_lock:
            async with self._write.begin() as conn:
                yield conn

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._dials)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the scheduler must survive a bad round (database away ...)
                log.exception("callback round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            self._wake.clear()

    # ---- one round
    def _due(self, now: datetime) -> Any:
        return or_(and_(CB.c.status == "pending", CB.c.due_at <= now),
                   and_(CB.c.status == "dialling", CB.c.lease_until < now))

    async def run_once(self) -> int:
        """Claim and start dialling what is due and can be served now; return how many."""
        if self._stopping or self.ami.state != "connected":
            return 0
        room = self.concurrency - len(self._dials)
        if room <= 0:
            return 0
        now = _now()
        async with self.store.engine.connect() as conn:
            due = select(CB.c.queue).where(self._due(now)).distinct()
            queues = [r[0] for r in (await conn.execute(due)).all()]
        started = 0
        for queue in queues:
            if room - started <= 0:
                break
            try:
                status = await self.ami.queue_status(queue, timeout=5.0)
            except (AmiDisconnected, AmiActionTimeout, AmiActionError) as exc:
                log.warning("QueueStatus %s: %s", queue, exc)
                continue
            free = free_members(status)
            if not free:
                continue
            rows = await self.claim(queue, min(len(free), room - started))
            for i, row in enumerate(rows):
                member = free[i % len(free)]
                task = asyncio.get_running_loop().create_task(self._dial(row, member.location, member.name))
                self._dials.add(task)
                task.add_done_callback(self._dials.discard)
                started += 1
        return started

    async def claim(self, queue: str, limit: int) -> list[dict[str, Any]]:
        """Take up to ``limit`` due requests of ``queue`` for this scheduler."""
        if limit <= 0:
            return []
        now = _now()
        async with self._writing() as conn:
            candidates = (await conn.execute(
                select(CB.c.id, CB.c.status, CB.c.claimed_by)
                .where(CB.c.queue == queue, self._due(now))
                .order_by(CB.c.priority.desc(), CB.c.due_at, CB.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True))).all()
            if not candidates:
                return []
            ids = [c.id for c in candidates]
            previous = {c.id: c.claimed_by for c in candidates if c.status == "dialling"}
            await conn.execute(
                update(CB).where(CB.c.id.in_(ids), self._due(now)).values(
                    status="dialling", claimed_by=self.server_id, lease_until=now + timedelta(seconds=self.lease),
                    attempts=CB.c.attempts + 1, updated_at=now))
            rows = (await conn.execute(select(CB).where(CB.c.id.in_(ids), CB.c.claimed_by == self.server_id,
                                                        CB.c.status == "dialling"))).mappings().all()
        out = []
        for row in rows:
            item = dict(row)
            item["reclaimed_from"] = previous.get(row["id"])
            out.append(item)
        self.claimed += len(out)
        return out

    # ---- one call
    def _trail(self, row: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
        self.store.append(row["session_id"], [Event(kind, None, {"id": row["id"], **data})], "callback")

    async def _renew(self, request_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            async with self._writing() as conn:
                await conn.execute(update(CB).where(CB.c.id == request_id, CB.c.claimed_by == self.server_id,
                                                    CB.c.status == "dialling").values(
                    lease_until=_now() + timedelta(seconds=self.lease)))

    async def _session_vars(self, session_id: str) -> dict[str, str]:
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(SE.c.summary, SE.c.reason, SE.c.language).where(
                SE.c.id == session_id))).first()
        if row is None:
            return {}
        return {"summary": row.summary or "", "reason": row.reason or "", "language": row.language or ""}

    async def _dial(self, row: dict[str, Any], member_location: str, member_name: str) -> None:
        request_id = row["id"]
        renew = asyncio.get_running_loop().create_task(self._renew(request_id))
        attempt = row["attempts"]
        channel_id = f"cb-{uuid.uuid4().hex[:24]}"
        mode = row["mode"]
        started = time.monotonic()
        try:
            if row.get("reclaimed_from") and row.get("call_uniqueid"):
                # the previous scheduler died mid-dial: did its call ring the customer?
                verdict = await self._read_back(row["call_uniqueid"])
                if verdict is not None:
                    await self._finish(row, verdict, None, cause=None, recount=True,
                                       note=f"attempt of {row['reclaimed_from']}, which stopped mid-dial; "
                                            "outcome read back from Asterisk")
                    return
            session = await self._session_vars(row["session_id"])
            from ivr.handoff.core import normalize_interface

            agent_interface = normalize_interface(member_location) if mode == "agent_first" else None
            async with self._writing() as conn:
                await conn.execute(update(CB).where(CB.c.id == request_id, CB.c.claimed_by == self.server_id).values(
                    call_uniqueid=channel_id, agent_interface=agent_interface))
            self._trail(row, "callback_attempt", {
                "attempt": attempt, "of": row["max_attempts"], "mode": mode, "queue": row["queue"],
                "number": expr.mask(row["number"]), "slot": "asap" if row["asap"] else str(row["due_at"]),
                "agent": agent_interface, "reclaimed_from": row.get("reclaimed_from"), "server": self.server_id})
            variables = {
                names.INHERIT + names.VAR_SESSION: row["session_id"],
                names.INHERIT + names.VAR_CALLBACK: request_id,
                names.INHERIT + names.VAR_SUMMARY: session.get("summary", "")[:500],
                names.INHERIT + names.VAR_REASON: (row["reason"] or session.get("reason", ""))[:200],
                names.INHERIT + names.VAR_LANGUAGE: row["language"] or session.get("language", ""),
                names.VAR_CALLBACK_QUEUE: row["queue"],
                names.VAR_CALLBACK_PRIO: str(int(row["priority"] or 0)),
                names.VAR_CALLBACK_NUMBER: row["number"],
                names.INHERIT + names.VAR_CALLBACK_DIAL: channel_id,
            }
            if mode == "agent_first":
                if self.handoff is not None:
                    await self.handoff.offer(row["session_id"], agent_interface, kind="callback", queue=row["queue"],
                                             agent=member_name)
                channel, exten = member_location, names.EXTEN_CALLBACK_AGENT
            else:
                channel, exten = f"Local/{row['number']}@{names.CONTEXT_CALLBACK_OUT}", names.EXTEN_CALLBACK_CUSTOMER
            hangup = asyncio.get_running_loop().create_future()
            self._hangups[channel_id] = hangup
            dial_event = asyncio.get_running_loop().create_future()
            self._dial_events[request_id] = dial_event
            self.dialled += 1
            try:
                result = await self.ami.originate_and_wait(
                    channel, context=names.CONTEXT_CALLBACK, exten=exten, variables=variables,
                    caller_id=self.caller_id, timeout_ms=int(self.dial_timeout * 1000), channel_id=channel_id)
            except (AmiDisconnected, AmiActionTimeout) as exc:
                why = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, AmiDisconnected) and not exc.sent:
                    await self._ami_lost(row, why)  # it never left: nothing was dialled
                    return
                verdict = await self._read_back(channel_id)
                if verdict is None:
                    await self._ami_lost(row, why + "; Asterisk has no note of the dial")
                else:
                    await self._finish(row, verdict, None, cause=None,
                                       seconds=round(time.monotonic() - started, 2),
                                       note=f"{why}; outcome read back from Asterisk")
                return
            except AmiActionError as exc:
                await self._finish(row, "failed", f"Asterisk refused the Originate: {exc}", cause=None)
                return
            outcome = result.outcome
            cause = None
            if not result.answered:
                with contextlib.suppress(TimeoutError):
                    cause = await asyncio.wait_for(asyncio.shield(hangup), 0.5)
            elif mode == "agent_first":
                if self.handoff is not None:
                    await self.handoff.connect(row["session_id"], interface=agent_interface, agent=member_name,
                                               queue=row["queue"], via="Originate", kind="callback")
                try:
                    status = await asyncio.wait_for(dial_event, self.dial_timeout + 10)
                    outcome = DIAL_STATUS.get(status.upper(), status.lower() or "unknown")
                except TimeoutError:
                    outcome = "unknown"
            await self._finish(row, outcome, None, cause=cause, seconds=round(time.monotonic() - started, 2))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or the database: the lease brings the request back
            log.exception("callback %s: dialling failed", request_id)
            with contextlib.suppress(Exception):
                await self._ami_lost(row, f"{type(exc).__name__}: {exc}")
        finally:
            renew.cancel()
            self._hangups.pop(channel_id, None)
            self._dial_events.pop(request_id, None)

    async def _read_back(self, dial_id: str) -> str | None:
        """What the dialplan noted for one dial, once the AMI link is back: an
        outcome (``answered``, ``busy`` …, ``unknown``), or None if the customer
        was not rung. Waits for the link (the lease is renewed meanwhile)."""
        key = "".join(ch for ch in dial_id if ch.isalnum() or ch == "-")
        deadline = time.monotonic() + self.dial_timeout + 10
        settled = False
        while True:
            try:
                await self.ami.wait_connected(None)
                note = await self.ami.db_get(names.ASTDB_CALLBACK, key, timeout=5.0)
            except (AmiDisconnected, AmiActionTimeout) as exc:
                log.info("callback dial %s: cannot read its note yet (%s)", dial_id, exc)
                await asyncio.sleep(NOTE_POLL)
                continue
            if note is None:
                if settled:
                    return None
                settled = True
                await asyncio.sleep(ORIGINATE_SETTLE)
                continue
            if note.upper() != "DIALLING":
                return DIAL_STATUS.get(note.upper(), note.lower() or "unknown")
            if time.monotonic() > deadline:
                return "unknown"
            await asyncio.sleep(NOTE_POLL)  # still ringing (or talking, agent-first)

    def _on_hangup(self, event: Any) -> None:
        waiter = self._hangups.get(str(event.get("Uniqueid", "")))
        if waiter is not None and not waiter.done():
            waiter.set_result({"cause": _int(event.get("Cause")), "cause_txt": str(event.get("Cause-txt", ""))})

    def _on_user_event(self, event: Any) -> None:
        if str(event.get("UserEvent", "")) != names.USEREVENT_CALLBACK_DIAL:
            return
        waiter = self._dial_events.get(str(event.get("Request", "")))
        if waiter is not None and not waiter.done():
            waiter.set_result(str(event.get("DialStatus", "")))

    async def _ami_lost(self, row: dict[str, Any], why: str) -> None:
        """AMI failed mid-attempt: the outcome is unknown; back to pending, attempt not counted."""
        now = _now()
        retry_at = now + timedelta(seconds=min(AMI_RETRY_DELAY, row["retry_interval"]))
        async with self._writing() as conn:
            result = await conn.execute(update(CB).where(
                CB.c.id == row["id"], CB.c.claimed_by == self.server_id, CB.c.status == "dialling").values(
                status="pending", claimed_by=None, lease_until=None, due_at=retry_at, updated_at=now,
                attempts=CB.c.attempts - 1, last_outcome="ami_lost", last_reason=why[:500]))
        if result.rowcount:
            self._trail(row, "callback_result", {"outcome": "ami_lost", "reason": why[:300], "attempt": row["attempts"],
                                                 "status": "pending", "retry_at": retry_at.isoformat()})
            log.warning("callback %s: %s; will retry", row["id"], why)

    async def _finish(self, row: dict[str, Any], outcome: str, reason: str | None, *, cause: Any,
                      seconds: float | None = None, note: str | None = None, recount: bool = False) -> None:
        """Record an attempt's outcome. ``recount``: it is the previous claim's
        attempt (read back), so this claim's count is taken back."""
        now = _now()
        attempts, limit = row["attempts"] - (1 if recount else 0), row["max_attempts"]
        data: dict[str, Any] = {"outcome": outcome, "attempt": attempts}
        if note:
            data["note"] = note
        if cause:
            data.update(cause=cause.get("cause"), cause_txt=cause.get("cause_txt"))
        if seconds is not None:
            data["seconds"] = seconds
        if outcome == SUCCESS:
            values: dict[str, Any] = {"status": "done", "open_number": None, "closed_by": self.server_id}
            data["status"] = "done"
        elif attempts >= limit:
            reason = reason or f"{outcome} on attempt {attempts}; attempt limit ({limit}) reached"
            values = {"status": "failed", "open_number": None, "closed_by": self.server_id}
            data.update(status="failed", reason=reason)
        else:
            retry_at = now + timedelta(seconds=row["retry_interval"])
            values = {"status": "pending", "due_at": retry_at}
            data.update(status="pending", retry_at=retry_at.isoformat(), reason=reason or outcome)
        values.update(claimed_by=None if values["status"] == "pending" else self.server_id, lease_until=None,
                      updated_at=now, last_outcome=outcome[:32], last_reason=(reason or outcome)[:500])
        if recount:
            values["attempts"] = CB.c.attempts - 1
        async with self._writing() as conn:
            result = await conn.execute(update(CB).where(
                CB.c.id == row["id"], CB.c.claimed_by == self.server_id, CB.c.status == "dialling").values(values))
        if not result.rowcount:  # cancelled meanwhile, or our lease ran out and another server took it
            data["note"] = "request changed meanwhile (cancelled or reclaimed); not updated"
        self._trail(row, "callback_result", data)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
