"""Callback requests: the API every face uses (voice ``callback`` node, the
visual IVR, the agent desk, ``POST /api/callbacks``).

A request is stored with the session it came from (``callbacks.session_id``),
so the trail travels with it: the agent who takes the callback sees the whole
contact. One open request per number: asking again updates the open one (the
unique index on ``open_number`` enforces it, also between servers).

``app`` is the server's :class:`ivr.server.App`, or any object with a
``store`` (a :class:`ivr.store.TrailStore`) and optionally ``config`` (default
attempts and interval) and ``callbacks`` (the scheduler, woken on new requests).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ivr.engine.types import Event
from ivr.flow import expr
from ivr.store.engine import WRITE_OPTION
from ivr.store.models import sessions_table as SE
from ivr.store.models_handoff import callbacks_table as CB

from .nodes import clean_number

__all__ = ["CallbackError", "OPEN", "cancel_callback", "get_callback", "list_callbacks", "request_callback"]

log = logging.getLogger("callback")

OPEN = ("pending", "dialling")
MODES = ("customer_first", "agent_first")
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_AHEAD = timedelta(days=30)


class CallbackError(ValueError):
    """A request that cannot be stored (bad number, queue, time, unknown session ...)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _setting(app: Any, name: str, default: Any) -> Any:
    config = getattr(app, "config", None)
    return getattr(config, name, default) if config is not None else default


def public(row: Any) -> dict[str, Any]:
    """A stored request as the API shows it."""
    due = _utc(row["due_at"])
    return {
        "id": row["id"],
        "session_id": row["session_id"],
        "number": row["number"],
        "when": "asap" if row["asap"] else (due.isoformat() if due else None),
        "due_at": due.isoformat() if due else None,
        "queue": row["queue"],
        "status": row["status"],
        "mode": row["mode"],
        "language": row["language"],
        "reason": row["reason"],
        "channel": row["channel"],
        "priority": row["priority"],
        "attempts": row["attempts"],
        "max_attempts": row["max_attempts"],
        "retry_interval": row["retry_interval"],
        "last_outcome": row["last_outcome"],
        "last_reason": row["last_reason"],
        "agent_interface": row["agent_interface"],
        "created_at": _utc(row["created_at"]).isoformat() if row["created_at"] else None,
        "updated_at": _utc(row["updated_at"]).isoformat() if row["updated_at"] else None,
        "closed_by": row["closed_by"],
    }


def _short(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in ("id", "number", "when", "queue", "status")}


async def request_callback(app: Any, session_id: str, *, number: str, when: Literal["asap"] | datetime | str,
                           queue: str, language: str, reason: str | None, channel: str,
                           mode: str = "customer_first", priority: int = 0, max_attempts: int | None = None,
                           retry_interval: int | None = None, node: str | None = None,
                           by: str | None = None) -> dict[str, Any]:
    """Store a callback request for ``session_id``; return ``{"id", "number", "when", "queue", "status"}``.

    ``when`` is ``"asap"`` or a datetime (naive = UTC; an ISO string is
    accepted too) within the next 30 days. If ``number`` already has an open
    request, that one is updated (same id) and becomes ``pending`` again
    unless it is being dialled right now. Raises :class:`CallbackError` for a
    bad number, queue, time, mode or an unknown session. A
    ``callback_requested`` event goes on the session's trail.
    """
    clean = clean_number(number)
    if clean is None:
        raise CallbackError(f"{number!r} is not a phone number")
    if not isinstance(queue, str) or not _QUEUE_RE.match(queue):
        raise CallbackError(f"{queue!r} is not a queue name (letters, digits, - _ .)")
    if mode not in MODES:
        raise CallbackError(f"mode must be one of {', '.join(MODES)}")
    now = _now()
    if isinstance(when, str) and when != "asap":
        try:
            when = datetime.fromisoformat(when)
        except ValueError:
            raise CallbackError(f"when must be 'asap' or an ISO date and time, not {when!r}") from None
    if when == "asap":
        asap, due = True, now
    elif isinstance(when, datetime):
        asap, due = False, _utc(when)
        assert due is not None
        if due < now - timedelta(minutes=5):
            raise CallbackError("that time has passed")
        if due > now + MAX_AHEAD:
            raise CallbackError("callbacks can be booked at most 30 days ahead")
    else:
        raise CallbackError("when must be 'asap' or a datetime")
    attempts = int(max_attempts or _setting(app, "callback_max_attempts", 3))
    interval = int(retry_interval or _setting(app, "callback_retry_interval", 300))
    if not 1 <= attempts <= 20 or not 1 <= interval <= 86400:
        raise CallbackError("max_attempts must be 1..20 and retry_interval 1..86400 seconds")
    store = app.store
    if not isinstance(session_id, str) or not session_id or len(session_id) > 64:
        raise CallbackError("a session id is needed")
    await store.flush(session_id)  # the session row may still be queued in this process
    values = {
        "session_id": session_id, "number": clean, "open_number": clean, "queue": queue,
        "language": (language or None) and str(language)[:16], "reason": (reason or None) and str(reason)[:1000],
        "channel": str(channel or "voice")[:32], "mode": mode, "priority": int(priority or 0), "asap": asap,
        "due_at": due, "max_attempts": attempts, "retry_interval": interval, "updated_at": now,
    }
    write = store.engine.execution_options(**{WRITE_OPTION: True})
    for attempt in range(3):
        try:
            async with write.begin() as conn:
                if (await conn.execute(select(SE.c.id).where(SE.c.id == session_id))).first() is None:
                    raise CallbackError(f"no session {session_id!r}")
                existing = (await conn.execute(
                    select(CB).where(CB.c.open_number == clean).with_for_update())).mappings().first()
                if existing is not None:
                    request_id = existing["id"]
                    changes = dict(values)
                    if existing["status"] == "pending":
                        changes.update(attempts=0, last_outcome=None, last_reason=None)
                    else:  # being dialled now: keep the claim, the new details apply to later attempts
                        changes.pop("due_at")
                    await conn.execute(update(CB).where(CB.c.id == request_id).values(changes))
                    updated = True
                else:
                    request_id = uuid.uuid4().hex
                    await conn.execute(insert(CB).values(id=request_id, status="pending", attempts=0,
                                                         created_at=now, **values))
                    updated = False
                row = (await conn.execute(select(CB).where(CB.c.id == request_id))).mappings().one()
            break
        except IntegrityError:
            if attempt == 2:
                raise
            continue  # another server opened one for this number meanwhile: update that one
    data = public(row)
    store.append(session_id, [Event("callback_requested", node, {
        "id": request_id, "slot": data["when"], "queue": queue, "number": expr.mask(clean), "mode": mode,
        "channel": values["channel"], "updated": updated, "reason": values["reason"],
        **({"by": str(by)[:64]} if by else {})})], values["channel"])
    scheduler = getattr(app, "callbacks", None)
    if scheduler is not None:
        scheduler.wake()
    log.info("callback %s %s for session %s (%s, queue %s)", request_id, "updated" if updated else "requested",
             session_id, data["when"], queue)
    return _short(data)


async def cancel_callback(app: Any, request_id: str, *, by: str) -> bool:
    """Cancel an open request; False when there is none with that id (or it is closed).

    A call being dialled right now goes on, but the request is not retried.
    """
    store = app.store
    write = store.engine.execution_options(**{WRITE_OPTION: True})
    async with write.begin() as conn:
        row = (await conn.execute(select(CB.c.session_id, CB.c.status, CB.c.channel).where(
            CB.c.id == str(request_id)).with_for_update())).first()
        if row is None or row.status not in OPEN:
            return False
        await conn.execute(update(CB).where(CB.c.id == str(request_id)).values(
            status="cancelled", open_number=None, closed_by=str(by)[:64], updated_at=_now(),
            last_outcome="cancelled", last_reason=f"cancelled by {str(by)[:64]}"))
    store.append(row.session_id, [Event("callback_result", None, {
        "id": request_id, "outcome": "cancelled", "by": str(by)[:64], "status": "cancelled"})], row.channel)
    return True


async def get_callback(app: Any, request_id: str) -> dict[str, Any] | None:
    """The request as a dict (see :func:`public`), or None."""
    async with app.store.engine.connect() as conn:
        row = (await conn.execute(select(CB).where(CB.c.id == str(request_id)))).mappings().first()
    return public(row) if row else None


async def list_callbacks(app: Any, *, session_id: str | None = None, status: str | None = None,
                         limit: int = 100) -> list[dict[str, Any]]:
    query = select(CB).order_by(CB.c.created_at.desc()).limit(limit)
    if session_id is not None:
        query = query.where(CB.c.session_id == session_id)
    if status is not None:
        query = query.where(CB.c.status == status)
    async with app.store.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [public(r) for r in rows]
