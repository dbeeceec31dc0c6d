"""Who answered: AMI events to the trail, offers to desks, queue waits.

One :class:`Handoff` per server (``app.handoff``). It

- watches AMI for ``AgentConnect`` (a queue call reached a member) and
  ``BridgeEnter`` (a direct dial was answered). When the call belongs to this
  server (a live FastAGI call here, or a callback this server dialled) it
  records an ``agent_connect`` event on the trail, sets the session's
  ``agent``/``agent_at`` fields, stores a desk offer for the interface and
  publishes a pop on the desk bus, which every server forwards to the desks of
  that interface (and to supervisors);
- estimates a caller's place and wait in a queue from AMI ``QueueStatus``
  before they join it (``queue_wait`` event, and the announcement the voice
  face plays).

Only the owning server records an event, so with several servers on one
Asterisk each connection is seen by all of them and written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update

from ivr.engine.types import Event, PromptOut
from ivr.flow import expr
from ivr.store.engine import WRITE_OPTION
from ivr.store.models import sessions_table as SE
from ivr.store.models_handoff import callbacks_table as CB
from ivr.store.models_handoff import offers_table as OF

from .bus import Bus

log = logging.getLogger("ivr.handoff")

_CHANNEL_SUFFIX = re.compile(r"^(?P<base>.+?)-[0-9a-f]{8}(;[12])?$")


def normalize_interface(value: str | None) -> str:
    """``Local/agent1@agents/n`` -> ``Local/agent1@agents``; ``PJSIP/1001`` unchanged."""
    text = (value or "").strip()
    if text.lower().startswith("local/") and text.count("/") >= 2:
        text = text.rsplit("/", 1)[0]  # Local channel options (/n, /m ...)
    return text


def interface_of_channel(channel: str | None) -> str:
    """The interface a channel was created on: ``PJSIP/1001-0000001a`` -> ``PJSIP/1001``,
    ``Local/agent1@agents-00000008;1`` -> ``Local/agent1@agents``."""
    text = (channel or "").strip()
    match = _CHANNEL_SUFFIX.match(text)
    return match.group("base") if match else text


def same_interface(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and normalize_interface(a).lower() == normalize_interface(b).lower()


def _chan_variables(event: Any, header: str = "ChanVariable") -> dict[str, str]:
    """``ChanVariable: NAME=value`` headers (manager.conf ``channelvars``)."""
    raw = event.get(header)
    values = raw if isinstance(raw, list) else ([raw] if raw else [])
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = str(item).partition("=")
        if sep:
            out[name.strip()] = value
    return out


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# ------------------------------------------------------------------ queue waits

WAIT_TEXT = {
    "zh": ("您是下一位，{wait}请稍候。", "您前面还有{ahead}位客户，{wait}", "预计等待约{minutes}分钟。",
           "如需改为回电，请随时按{key}。"),
    "en": ("You are next in line. {wait}", "There are {ahead} callers ahead of you. {wait}",
           "The expected wait is about {minutes} minutes.", "To be called back instead, press {key} at any time."),
}


def wait_prompt(flow: Any, lang: str, info: dict[str, Any], *, offer_key: str | None) -> PromptOut | None:
    """The announcement before joining a queue: the flow's ``queue_wait`` prompt
    (a template over ``position``, ``ahead``, ``wait_minutes``, ``callback_key``)
    when it has one, else a built-in text in the caller's language."""
    scope = {
        "position": info.get("position"),
        "ahead": info.get("ahead"),
        "wait_minutes": info.get("wait_minutes"),
        "callback_key": offer_key or "",
        "lang": lang,
    }
    pdef = flow.prompts.get("queue_wait") if flow is not None else None
    if pdef is not None:
        texts = pdef.texts()
        raw = texts.get(lang) or texts.get(flow.default_language) or ""
        try:
            text = expr.render(raw, scope)
        except expr.ExprError as exc:
            log.warning("prompt queue_wait does not render: %s", exc)
            return None
        return PromptOut("queue_wait", text, lang, getattr(pdef, "recording", None), True, True) if text else None
    first, many, wait_tpl, offer = WAIT_TEXT["zh" if lang.startswith("zh") else "en"]
    minutes = info.get("wait_minutes")
    wait = wait_tpl.format(minutes=minutes) if minutes else ""
    text = (first if not info.get("ahead") else many).format(ahead=info.get("ahead"), wait=wait).strip()
    if offer_key:
        text = f"{text} {offer.format(key=offer_key)}".strip() if not lang.startswith("zh") else text + offer.format(
            key=offer_key)
    return PromptOut("queue_wait", text, lang, None, True, True)


def estimate_wait(status: Any, priority: int) -> dict[str, Any]:
    """Place and expected wait from a :class:`ivr.ami.QueueStatus`.

    Callers already waiting with the same or a higher priority are served
    first. The wait is the queue's average hold time, or talk time x callers
    ahead / agents logged in, whichever is larger (an estimate, like
    Asterisk's own ``announce-holdtime``).
    """
    ahead = sum(1 for e in status.entries if e.priority >= priority)
    members = [m for m in status.members if m.status not in (4, 5)]  # 4 invalid, 5 unavailable
    active = [m for m in members if not m.paused]
    free = [m for m in active if m.status in (0, 1) and not m.in_call]
    params = status.params
    holdtime = params.holdtime if params else 0
    talktime = params.talktime if params else 0
    if free and ahead < len(free):
        seconds = 0
    else:
        per_agent = (talktime * (ahead + 1) / len(active)) if active and talktime else 0
        seconds = int(max(holdtime, per_agent))
    return {
        "queue": status.queue,
        "position": ahead + 1,
        "ahead": ahead,
        "expected_wait": seconds if active else None,
        "wait_minutes": max(1, round(seconds / 60)) if seconds else None,
        "agents": len(active),
        "free": len(free),
    }


# ---------------------------------------------------------------------- handoff

class Handoff:
    """Per-server handoff state; see the module documentation."""

    def __init__(self, app: Any, bus: Bus, *, server_id: str | None = None):
        self.app = app
        self.bus = bus
        self.server_id = server_id or f"ivr-{uuid.uuid4().hex[:12]}"
        self._write = app.store.engine.execution_options(**{WRITE_OPTION: True})
        self._transfers: dict[str, dict[str, Any]] = {}   # session id -> current transfer
        self._connected: dict[str, float] = {}            # session id -> monotonic time of last connect
        self._bridges: dict[str, dict[str, str]] = {}      # bridge id -> {uniqueid: channel}
        # queue transfers that ended while AMI was down, not yet resolved: session id -> transfer
        self._unresolved: dict[str, dict[str, Any]] = {}
        self._unsubscribe: list[Any] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: measured: AMI event received -> pop published (seconds), last 100
        self.pop_latencies: list[float] = []

    # ---- life
    async def start(self) -> None:
        await self.bus.start()
        ami = self.app.ami
        if ami is not None:
            self._unsubscribe += [
                ami.on_event("AgentConnect", self._on_agent_connect),
                ami.on_event("BridgeEnter", self._on_bridge_enter),
                ami.on_event("BridgeLeave", self._on_bridge_leave),
                ami.on_event("BridgeDestroy", self._on_bridge_destroy),
                ami.on_state_change(self._on_ami_state),
            ]

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.bus.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the voice face's transfer
    def transfer_started(self, session_id: str, params: dict[str, Any]) -> None:
        call = self.app.live_calls.get(session_id)
        ami = self.app.ami
        self._transfers[session_id] = {"queue": params.get("queue"), "extension": params.get("extension"),
                                       "at": time.monotonic(), "channel": getattr(call, "channel", None),
                                       "outage": ami is not None and ami.state != "connected"}

    def transfer_ended(self, session_id: str) -> None:
        transfer = self._transfers.pop(session_id, None)
        if transfer and transfer.get("outage") and transfer.get("queue") and not self._answered(session_id, transfer):
            transfer["ended"] = True
            if self.app.ami is not None and self.app.ami.state == "connected":
                self._spawn(self._recover_one(session_id, transfer))
            else:
                self._unresolved[session_id] = transfer
                if len(self._unresolved) > 5000:  # a very long outage: the oldest stay unknown
                    del self._unresolved[next(iter(self._unresolved))]

    # ---- AMI outages: who answered while the link was down
    def _answered(self, session_id: str, transfer: dict[str, Any]) -> bool:
        return self._connected.get(session_id, -1e9) >= transfer["at"]

    def _on_ami_state(self, state: Any) -> None:
        """AgentConnect events sent while the link is down are lost (Asterisk does
        not replay them). Mark the queue transfers that span an outage; when the
        link is back, ask Asterisk who answered them."""
        if state != "connected":
            for transfer in self._transfers.values():
                transfer["outage"] = True
            return
        for sid, transfer in [*self._transfers.items(), *self._unresolved.items()]:
            if transfer.get("outage") and transfer.get("queue") and not self._answered(sid, transfer):
                self._spawn(self._recover_one(sid, transfer))
        self._unresolved.clear()

    async def _recover_one(self, session_id: str, transfer: dict[str, Any]) -> None:
        """Read ``MEMBERINTERFACE``/``MEMBERNAME``, which Queue() sets on the caller's
        channel when a member answers; record the connection (and pop the desk)
        or, when the channel is gone, that who answered is unknown."""
        from ivr.ami import AmiActionError, AmiError

        channel = transfer.get("channel")
        reason = None
        interface = name = ""
        if not channel:
            reason = "the AMI link was down during the queue call and the caller's channel is not known"
        else:
            try:
                interface = await self.app.ami.getvar(channel, "MEMBERINTERFACE")
                name = await self.app.ami.getvar(channel, "MEMBERNAME") if interface else ""
            except AmiActionError as exc:
                reason = (f"the AMI link was down during the queue call and the call had ended when it "
                          f"returned ({exc.message}): who answered, if anyone, is unknown")
            except AmiError as exc:  # the link dropped again: try at the next reconnect
                log.warning("session %s: cannot ask who answered yet: %s", session_id, exc)
                if transfer.get("ended"):
                    self._unresolved[session_id] = transfer
                return
        if self._answered(session_id, transfer):
            return  # AgentConnect arrived meanwhile
        if interface:
            transfer["recovered"] = True
            await self.connect(session_id, interface=normalize_interface(interface), agent=name or interface,
                               queue=transfer.get("queue"), via="MEMBERINTERFACE",
                               extra={"note": "AMI link was down when the agent answered; read from the "
                                              "caller's channel when it returned"})
        elif reason:
            self.record(session_id, "agent_unknown", None, {"queue": transfer.get("queue"), "reason": reason})

    def record(self, session_id: str, kind: str, node: str | None, data: dict[str, Any],
               channel: str = "voice") -> None:
        self.app.store.append(session_id, [Event(kind, node, data)], channel)

    async def queue_wait(self, session_id: str, node: str | None, queue: str, priority: int) -> dict[str, Any] | None:
        """Place and expected wait for a caller about to join ``queue`` (None without AMI)."""
        ami = self.app.ami
        if ami is None or ami.state != "connected":
            return None
        try:
            status = await ami.queue_status(queue, timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - no estimate is better than no call
            log.warning("QueueStatus %s failed: %s", queue, exc)
            return None
        info = estimate_wait(status, priority)
        self.record(session_id, "queue_wait", node, info)
        return info

    # ---- who owns a call
    def _live_session(self, uniqueid: str | None, channel: str | None) -> str | None:
        for sid, call in list(self.app.live_calls.items()):
            if (uniqueid and call.uniqueid == uniqueid) or (channel and call.channel == channel):
                return sid
        return None

    async def _callback_session(self, uniqueid: str | None, request_id: str | None) -> str | None:
        """A callback call this server placed (by the uniqueid it gave the channel)."""
        if not uniqueid and not request_id:
            return None
        query = select(CB.c.session_id).where(CB.c.claimed_by == self.server_id)
        query = query.where(CB.c.call_uniqueid == uniqueid) if uniqueid else query.where(CB.c.id == request_id)
        async with self.app.store.engine.connect() as conn:
            row = (await conn.execute(query.limit(1))).first()
        return row.session_id if row else None

    async def owned_session(self, event: Any, prefix: str = "") -> str | None:
        uniqueid = str(event.get(f"{prefix}Uniqueid", "") or "") or None
        channel = str(event.get(f"{prefix}Channel", "") or "") or None
        sid = self._live_session(uniqueid, channel)
        if sid:
            return sid
        variables = _chan_variables(event, f"{prefix}ChanVariable" if prefix else "ChanVariable")
        return await self._callback_session(uniqueid, variables.get("IVR_CALLBACK"))

    # ---- AMI events
    async def _on_agent_connect(self, event: Any) -> None:
        received = time.perf_counter()
        sid = await self.owned_session(event)
        if sid is None:
            return
        transfer = self._transfers.get(sid)
        if transfer and transfer.get("recovered"):
            return  # already read back after an AMI outage
        interface = normalize_interface(str(event.get("Interface", ""))) or interface_of_channel(
            str(event.get("DestChannel", "")))
        await self.connect(sid, interface=interface, agent=str(event.get("MemberName", "") or interface),
                           queue=str(event.get("Queue", "") or "") or None, via="AgentConnect",
                           extra={"hold_time": _int(event.get("HoldTime")), "ring_time": _int(event.get("RingTime")),
                                  "agent_channel": str(event.get("DestChannel", "") or "")},
                           received=received)

    def _on_bridge_leave(self, event: Any) -> None:
        members = self._bridges.get(str(event.get("BridgeUniqueid", "")))
        if members is not None:
            members.pop(str(event.get("Uniqueid", "")), None)

    def _on_bridge_destroy(self, event: Any) -> None:
        self._bridges.pop(str(event.get("BridgeUniqueid", "")), None)

    async def _on_bridge_enter(self, event: Any) -> None:
        received = time.perf_counter()
        bridge = str(event.get("BridgeUniqueid", ""))
        members = self._bridges.setdefault(bridge, {})
        members[str(event.get("Uniqueid", ""))] = str(event.get("Channel", ""))
        if len(self._bridges) > 5000:  # bridges whose destroy we missed
            for key in list(self._bridges)[:1000]:
                del self._bridges[key]
        if len(members) < 2:
            return
        for uniqueid, channel in list(members.items()):
            sid = self._live_session(uniqueid, channel)
            if sid is None:
                continue
            transfer = self._transfers.get(sid)
            if not transfer or transfer.get("queue"):
                return  # queue calls are reported by AgentConnect
            if time.monotonic() - self._connected.get(sid, -1e9) < 30:
                return
            other = [ch for uid, ch in members.items() if uid != uniqueid]
            if not other:
                return
            interface = interface_of_channel(other[0])
            await self.connect(sid, interface=interface, agent=interface, queue=None, via="BridgeEnter",
                               extra={"agent_channel": other[0]}, received=received)
            return

    # ---- recording a connection
    async def connect(self, session_id: str, *, interface: str, agent: str | None, queue: str | None, via: str,
                      extra: dict[str, Any] | None = None, kind: str = "connect",
                      received: float | None = None) -> None:
        """Record that ``session_id`` reached a person at ``interface`` and pop their desk."""
        now = datetime.now(UTC)
        self._connected[session_id] = time.monotonic()
        data = {"agent": agent or interface, "interface": interface, "queue": queue, "at": _iso(now), "via": via,
                **{k: v for k, v in (extra or {}).items() if v not in (None, "")}}
        self.record(session_id, "agent_connect", None, data, channel="voice")
        async with self._write.begin() as conn:
            await conn.execute(update(SE).where(SE.c.id == session_id).values(agent=(agent or interface)[:128],
                                                                             agent_at=now))
        await self.offer(session_id, interface, kind=kind, queue=queue, agent=agent, at=now, received=received)

    async def offer(self, session_id: str, interface: str, *, kind: str, queue: str | None = None,
                    agent: str | None = None, at: datetime | None = None, received: float | None = None) -> None:
        """Store that ``session_id`` is offered to ``interface`` and publish the pop."""
        at = at or datetime.now(UTC)
        interface = normalize_interface(interface)
        # the trail must be readable by whichever server the agent's desk is on,
        # and the session's row must exist before an offer refers to it
        await self.app.store.flush(session_id)
        async with self._write.begin() as conn:
            await conn.execute(insert(OF).values(session_id=session_id, interface=interface[:128], kind=kind,
                                                 queue=(queue or None), agent=(agent or None), at=at))
        message = {"type": "pop", "session_id": session_id, "interface": interface, "kind": kind,
                   "queue": queue, "agent": agent, "at": _iso(at), "server": self.server_id}
        try:
            await self.bus.publish(message)
        except Exception:
            log.exception("could not publish the pop of session %s", session_id)
            return
        if received is not None:
            self.pop_latencies.append(time.perf_counter() - received)
            del self.pop_latencies[:-100]

    async def publish(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self.bus.publish({**message, "server": self.server_id})


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


async def offered_to(engine: Any, session_id: str, interface: str | None) -> bool:
    """Was ``session_id`` ever offered to ``interface``?"""
    if not interface:
        return False
    async with engine.connect() as conn:
        rows = (await conn.execute(select(OF.c.interface).where(OF.c.session_id == session_id))).all()
    return any(same_interface(row.interface, interface) for row in rows)


async def offers_for(engine: Any, interface: str | None, *, limit: int = 20) -> list[dict[str, Any]]:
    """Latest offers to ``interface`` (any interface when None), newest first."""
    query = select(OF).order_by(OF.c.at.desc(), OF.c.id.desc()).limit(limit)
    if interface is not None:
        query = query.where(OF.c.interface == normalize_interface(interface))
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [dict(r) for r in rows]
