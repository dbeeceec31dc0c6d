"""The call driver shared by every face: engine turns in, face I/O out, trail kept.

A face (voice over FastAGI, web, terminal simulator) implements :class:`Face`:
present prompts and collect one input, carry out a transfer, end the call.
The driver runs the engine, performs look-ups, writes every event to the trail
and ends the session cleanly whatever happens: a hang-up is a normal end, and
an unexpected error sends the caller somewhere safe.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from ivr import metrics
from ivr.engine import Action, Engine, EngineError, Event, Expect, Input, PromptOut, Turn, public_state
from ivr.flow.model import Flow
from ivr.logs import bind_call, log_trail_events
from ivr.store.summary import build_summary

log = logging.getLogger("ivr.session")
T = TypeVar("T")


class CallerGone(Exception):
    """Raised by a face when the caller hung up (or the call was moved away)."""

    def __init__(self, reason: str = "caller"):
        super().__init__(reason)
        self.reason = reason


class FaceBroken(Exception):
    """Raised by a face whose link broke under it: the peer sent garbage, or no
    reply came in time. Not a bug in the flow or the server: the session ends
    ``error`` with this message as its reason, logged as a warning (no
    traceback), and the face's ``finish`` still runs."""


class Face(Protocol):
    channel: str

    async def collect(self, prompts: list[PromptOut], expect: Expect) -> Input:
        """Present prompts (with barge-in) and return one input (or ``Input.noinput()``)."""

    async def present(self, prompts: list[PromptOut]) -> None:
        """Present prompts that need no answer."""

    async def transfer(self, params: dict[str, Any], session: "SessionInfo") -> dict[str, Any]:
        """Hand the caller to a person; return ``{"status": answered|continue|failed|...}``."""

    async def finish(self, outcome: str, session: "SessionInfo") -> None:
        """End the call on this face (hang up, close the page ...)."""


ActionHandler = Callable[["CallDriver", Face, "SessionInfo", dict[str, Any]], Awaitable["dict[str, Any] | Handover"]]
ACTION_HANDLERS: dict[str, ActionHandler] = {}


def register_action(kind: str) -> Callable[[ActionHandler], ActionHandler]:
    """Other packages add actions (send an SMS, book a callback ...) by name."""

    def deco(fn: ActionHandler) -> ActionHandler:
        if kind in ACTION_HANDLERS and ACTION_HANDLERS[kind] is not fn:
            raise ValueError(f"action {kind!r} is already registered")
        ACTION_HANDLERS[kind] = fn
        return fn

    return deco


@dataclass
class Handover:
    """What an action handler returns when the session went on on another face
    meanwhile (the caller continued on the visual IVR while the call waited):
    the driver carries on from ``turn``, whose events are on the trail already,
    and then ends the call with ``gone`` (e.g. ``"moved"``) if it is set."""

    turn: Turn
    gone: str | None = None


@dataclass
class SessionInfo:
    id: str
    flow: Flow
    channel: str
    caller: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    #: merged into the data of every event the driver records for this face
    #: (the visual IVR tags a page's steps with the link they happened on)
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return build_summary(self.events)


@dataclass
class CallResult:
    session_id: str
    outcome: str
    node: str | None
    variables: dict[str, Any]
    summary: str
    reason: str | None
    trail: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "outcome": self.outcome,
            "node": self.node,
            "variables": self.variables,
            "summary": self.summary,
            "reason": self.reason,
            "trail": self.trail,
        }


def _uncancel() -> None:
    """This task handles the cancellation it got (asyncio.timeout keeps working)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _to_the_end(aw: Awaitable[T], *, absorb: bool = False) -> T:
    """Await ``aw`` to its end even if this task is cancelled meanwhile (the
    server stopping): then re-raise the cancellation afterwards, or with
    ``absorb`` just go on."""
    inner = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
            break
        except asyncio.CancelledError:
            if inner.cancelled():
                raise
            if inner.done():
                result = inner.result()
                break
            cancelled = True
            _uncancel()
    if cancelled and not absorb:
        raise asyncio.CancelledError
    return result


class CallDriver:
    """Runs sessions. ``store`` is a TrailStore (or None for no persistence),
    ``lookups`` a LookupRunner, ``backend_url`` the base for relative look-up URLs."""

    def __init__(self, engine: Engine, store: Any, lookups: Any, *, backend_url: str | None = None,
                 clock: Callable[[], Any] | None = None):
        self.engine = engine
        self.store = store
        self.lookups = lookups
        self.backend_url = (backend_url or "").rstrip("/")
        self.clock = clock

    def _now(self) -> Any:
        return self.clock() if self.clock else None

    def _record(self, info: SessionInfo, turn: Turn, channel: str) -> None:
        info.state = turn.state
        if not turn.events:
            return
        events = turn.events
        if info.tags:
            events = [Event(e.kind, e.node, {**e.data, **info.tags}) for e in events]
        dicts = [e.to_dict() for e in events]
        for d in dicts:
            d["channel"] = channel
        info.events.extend(dicts)
        log_trail_events(dicts, channel)
        if self.store is not None:
            self.store.append(info.id, events, channel)

    async def run(self, face: Face, flow: Flow, context: dict[str, Any]) -> CallResult:
        bind_call(uniqueid=context.get("uniqueid"), session_id=context.get("session_id"))
        turn = self.engine.start(flow, context, now=self._now())
        bind_call(session_id=turn.state["session_id"])
        info = SessionInfo(turn.state["session_id"], flow, face.channel, context.get("caller"))
        if self.store is not None:
            try:
                await _to_the_end(self.store.create_session(
                    session_id=info.id, flow_id=flow.id, flow_version=flow.version, channel=face.channel,
                    caller=context.get("caller"), dialed=context.get("dialed"), uniqueid=context.get("uniqueid"),
                    language=turn.state["lang"], variables=public_state(turn.state)["vars"],
                ))
            except asyncio.CancelledError:  # the server stopping: the session exists, so end it
                _uncancel()
                self._record(info, turn, face.channel)
                self._stopped(face, info, turn)
                return await self._end(face, info, turn)
        self._record(info, turn, face.channel)
        return await self.drive(face, info, turn)

    async def drive(self, face: Face, info: SessionInfo, turn: Turn) -> CallResult:
        """Step the engine until the session ends, however it ends."""
        bind_call(session_id=info.id)  # log lines of this task name the session
        try:
            while not turn.ended:
                try:
                    nxt = await self._next_input(face, info, turn)
                except CallerGone as gone:
                    nxt = Input.hangup(gone.reason)
                if isinstance(nxt, Handover):
                    # another face advanced the session meanwhile (its events are
                    # on the trail already): carry on from where it got to
                    turn = nxt.turn
                    info.state = turn.state
                    if nxt.gone is None or turn.ended:
                        continue
                    nxt = Input.hangup(nxt.gone)
                turn = self.engine.advance(turn.state, nxt, now=self._now())
                self._record(info, turn, face.channel)
            if turn.outcome not in ("hangup", "moved"):
                try:
                    if turn.prompts:
                        await face.present(turn.prompts)
                except CallerGone:
                    pass
        except asyncio.CancelledError:
            _uncancel()
            self._stopped(face, info, turn)
        except FaceBroken as exc:
            log.warning("session %s: %s link lost at node %s: %s", info.id, face.channel, turn.state.get("node"), exc)
            self._fail(face, info, turn, "face", str(exc))
        except Exception as exc:  # the server survives any one call's failure
            log.exception("session %s failed at node %s", info.id, turn.state.get("node"))
            self._fail(face, info, turn, "driver", f"{type(exc).__name__}: {exc}")
        return await self._end(face, info, turn)

    async def _end(self, face: Face, info: SessionInfo, turn: Turn) -> CallResult:
        """Finish the face and write the end of the session, to the end even
        when the server stops meanwhile: a trail is never left half-written."""
        outcome = turn.state.get("outcome") or "error"
        try:
            await _to_the_end(face.finish(outcome, info), absorb=True)
        except Exception:
            log.exception("session %s: face failed to finish", info.id)
        metrics.SESSIONS.labels(channel=face.channel, outcome=outcome).inc()
        summary = build_summary(info.events)
        state = public_state(turn.state)
        if self.store is not None:
            await _to_the_end(self.store.save_state(info.id, state, variables=state["vars"], language=state["lang"]),
                              absorb=True)
            await _to_the_end(self.store.end_session(info.id, outcome=outcome, node=state.get("node"),
                                                     summary=summary, reason=state.get("reason")), absorb=True)
        return CallResult(info.id, outcome, state.get("node"), state["vars"], summary, state.get("reason"),
                          info.events)

    def _stopped(self, face: Face, info: SessionInfo, turn: Turn) -> None:
        """The server is stopping and its grace is over: the session ends
        ``error`` (reason: the server stopped), so the face hands the caller to
        the safe destination (the dialplan's fallback) instead of cutting the call."""
        log.warning("session %s: server stopping, call handed back at node %s", info.id, turn.state.get("node"))
        self._fail(face, info, turn, "shutdown", "server stopped before the call ended")

    def _fail(self, face: Face, info: SessionInfo, turn: Turn, where: str, message: str) -> None:
        """End a session that broke: an ``error`` event, then ``session_end``
        (outcome ``error``) so the trail is complete; a lost link is the reason."""
        if turn.ended:  # failed presenting the last prompts: the session ended as the flow said
            return
        node = turn.state.get("node")
        if where != "driver":  # the link or the server, not the flow: that is why it ended
            turn.state["reason"] = message[:200]
        events = [Event("error", node, {"where": where, "message": message}),
                  Event("session_end", node, {"outcome": "error", "reason": turn.state.get("reason")})]
        dicts = [{**e.to_dict(), "channel": face.channel} for e in events]
        info.events.extend(dicts)
        log_trail_events(dicts, face.channel)
        if self.store is not None:
            self.store.append(info.id, events, face.channel)
        turn.state["status"] = "ended"
        turn.state["outcome"] = "error"

    async def _next_input(self, face: Face, info: SessionInfo, turn: Turn) -> "Input | Handover":
        if turn.expect is not None:
            return await face.collect(turn.prompts, turn.expect)
        if turn.prompts:
            await face.present(turn.prompts)
        pending = [a for a in turn.actions if a.await_result]
        if not pending:
            raise EngineError(f"engine waits at {turn.state.get('node')} with nothing to wait for")
        return await self.perform(face, info, turn, pending[0])

    async def perform(self, face: Face, info: SessionInfo, turn: Turn, action: Action) -> "Input | Handover":
        """Carry out one action the engine waits for; its result as an input
        (or a :class:`Handover` when the session went on elsewhere)."""
        if action.kind == "lookup":
            params = dict(action.params)
            if params["url"].startswith("/"):
                params["url"] = self.backend_url + params["url"]
            return Input.result(await self.lookups.run(params))
        if action.kind == "transfer":
            if self.store is not None:
                await self.store.flush(info.id)
                await self.store.save_state(info.id, public_state(turn.state))
            params = dict(action.params, session_id=info.id, summary=info.summary)
            return Input.result(await face.transfer(params, info))
        handler = ACTION_HANDLERS.get(action.kind)
        if handler is None:
            raise EngineError(f"no handler for action {action.kind!r}")
        result = await handler(self, face, info, dict(action.params))
        if isinstance(result, Handover):
            return result
        return Input.result(result)

    # ---- step-wise driving (request/response faces such as the web pages)
    async def step(self, face: Face, info: SessionInfo, turn: Turn, inp: Input, *,
                   stop_at: tuple[str, ...] = ("transfer",)) -> Turn:
        """Advance a waiting session by one caller input, then carry out the
        actions that follow until it waits for the caller again, ends, or waits
        for an action named in ``stop_at`` (left to the caller of ``step``).

        Prompts of the intermediate turns go to ``face.present``; events are
        recorded on the trail with ``face.channel``, as in :meth:`drive`.
        """
        turn = self.engine.advance(turn.state, inp, now=self._now())
        self._record(info, turn, face.channel)
        return await self.settle(face, info, turn, stop_at=stop_at)

    async def settle(self, face: Face, info: SessionInfo, turn: Turn, *,
                     stop_at: tuple[str, ...] = ("transfer",)) -> Turn:
        """Carry out pending actions of ``turn`` (see :meth:`step`)."""
        while not turn.ended and turn.expect is None:
            pending = [a for a in turn.actions if a.await_result]
            if not pending:
                raise EngineError(f"engine waits at {turn.state.get('node')} with nothing to wait for")
            if pending[0].kind in stop_at:
                return turn
            if turn.prompts:
                await face.present(turn.prompts)
            result = await self.perform(face, info, turn, pending[0])
            if isinstance(result, Handover):
                raise EngineError(f"action {pending[0].kind!r} handed the session over during a step")
            turn = self.engine.advance(turn.state, result, now=self._now())
            self._record(info, turn, face.channel)
        return turn

    def record(self, info: SessionInfo, turn: Turn, channel: str) -> None:
        """Put a turn computed outside the driver (``Engine.resume`` ...) on the trail."""
        self._record(info, turn, channel)
