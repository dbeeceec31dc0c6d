"""The visual IVR's side of a session: links, SMS, the web steps, the call on hold.

One :class:`WebSession` per link that was opened (or is about to be). The web
face is request/response: each tap advances the engine one step through
:meth:`ivr.session.CallDriver.step`, which performs look-ups and records the
events on the session's trail with channel ``web``, exactly as the voice face
would.

While a caller who got the link from a call is on screen, the call waits in
:meth:`VisualHub.hold` (hold music, ``WAIT FOR DIGIT`` in slices). It hands
the session back to the voice face (a :class:`~ivr.session.Handover` with the
web's latest turn) when the page reaches a person or an end, when the page is
abandoned (no tap for the node's ``hold_timeout``), or when the caller presses
a key on the phone. When the page moved the call into a queue by AMI, the hold
ends with the ``moved`` hang-up, not "caller hung up".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from ivr import names
from ivr.agi.protocol import AgiError, AgiHangup
from ivr.engine import EngineError, Event, Input, PromptOut, Turn, public_state
from ivr.engine.context import Ctx
from ivr.flow import expr
from ivr.flow.model import Flow
from ivr.flow.nodes import InputDigitsNode, LookupNode, TransferNode
from ivr.session import CallDriver, CallerGone, Handover, SessionInfo
from ivr.store.summary import build_summary
from visual_ivr import callbacks, push
from visual_ivr.links import LinkStore, load_secret
from visual_ivr.nodes import ON_SCREEN, OfferVisualNode
from visual_ivr.phone import classify, mask_number
from visual_ivr.sms import Limits, SmsService, make_gateway

log = logging.getLogger("visual_ivr")

DEFAULT_SMS = {
    "zh": "【{{ service }}】请点击链接继续办理：{{ link }}（{{ minutes }}分钟内有效）",
    "en": "{{ service }}: continue here: {{ link }} (valid for {{ minutes }} minutes)",
}


class WebFace:
    """The face the driver steps for the pages: it only gathers what to show."""

    channel = "web"

    def __init__(self) -> None:
        self.shown: list[PromptOut] = []

    async def present(self, prompts: list[PromptOut]) -> None:
        self.shown.extend(prompts)

    async def collect(self, prompts, expect):  # pragma: no cover - the pages never wait inside the driver
        raise RuntimeError("the web face is driven step by step")

    async def transfer(self, params, session):  # pragma: no cover - steps stop at transfers
        raise RuntimeError("the web face does not transfer calls itself")

    async def finish(self, outcome: str, session: SessionInfo) -> None:
        return None


@dataclass
class WebSession:
    link_id: str
    session_id: str
    mode: str  # "call": texted from a call that holds meanwhile; "push": sent by an agent
    page_node: str
    language: str | None
    number: str | None = None
    offer_node: str | None = None
    voice_state: dict[str, Any] | None = None
    info: SessionInfo | None = None
    turn: Turn | None = None
    shown: list[PromptOut] = field(default_factory=list)
    step_events: list[dict[str, Any]] = field(default_factory=list)
    flash: str | None = None
    last_activity: float = field(default_factory=time.monotonic)
    holding: bool = False
    handback: str | None = None      # why the voice face must take over: ended, transfer
    back_on_phone: bool = False      # the call took the session back: the page is closed
    finished: str | None = None      # ended on screen: completed, callback, moved ...
    callback: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class VisualHub:
    def __init__(self, app: Any):
        self.app = app
        cfg = app.config
        self.engine = app.engine
        self.driver: CallDriver = app.driver
        self.store = app.store
        self.secret = load_secret(cfg)
        self.links = LinkStore(app.store.engine, self.secret, ttl=cfg.visual_link_ttl)
        self.sms = SmsService(app.store.engine, make_gateway(cfg), Limits(
            cfg.sms_limit_per_number, cfg.sms_limit_per_session, cfg.sms_limit_per_hour), sender=cfg.sms_sender)
        self.poll = cfg.visual_hold_poll
        self.sessions: dict[str, WebSession] = {}   # by link id
        self.calls: dict[str, WebSession] = {}      # by session id: the page of a call on hold
        self._tasks: set[asyncio.Task[Any]] = set()  # desk notifications in flight

    # ------------------------------------------------------------ helpers
    @property
    def public_url(self) -> str:
        cfg = self.app.config
        return (cfg.public_url or f"http://{cfg.http_host}:{cfg.http_port}").rstrip("/")

    def _now(self) -> dt.datetime | None:
        return self.driver.clock() if self.driver.clock else None

    def flow_of(self, state: dict[str, Any]) -> Flow:
        try:
            return self.app.registry.get(state["flow"], state.get("version"))
        except EngineError:
            return self.app.registry.get(state["flow"])

    def _append(self, session_id: str, kind: str, node: str | None, data: dict[str, Any], channel: str,
                info: SessionInfo | None = None) -> None:
        if info is not None and channel == "web" and info.tags:
            data = {**data, **info.tags}
        event = Event(kind, node, data)
        self.store.append(session_id, [event], channel)
        if info is not None:
            info.events.append({**event.to_dict(), "channel": channel})

    def voice_live(self, session_id: str) -> bool:
        return session_id in self.app.live_calls

    def _render_sms(self, template: str, state: dict[str, Any], link: str) -> str:
        scope = dict(public_state(state).get("vars") or {})
        scope.update(link=link, lang=state.get("lang"), service=self.app.config.visual_service_number,
                     minutes=int(self.app.config.visual_link_ttl // 60))
        return expr.render(template, scope).strip()

    # ------------------------------------------------------------ texting a link
    async def send_link(self, session_id: str, *, to: str, state: dict[str, Any], page: str, kind: str,
                        template: str, created_by: str, channel: str, node: str | None,
                        info: SessionInfo | None = None) -> tuple[dict[str, Any], WebSession | None]:
        self._purge()
        await self.store.flush(session_id)  # the link refers to the session row
        token, link = await self.links.issue(session_id, kind=kind, node=page, language=state.get("lang"),
                                             to_masked=mask_number(to), created_by=created_by)
        url = f"{self.public_url}/v/{token}"
        try:
            text = self._render_sms(template, state, url)
        except expr.ExprError as exc:
            log.error("session %s: text message template failed: %s", session_id, exc)
            text = self._render_sms(DEFAULT_SMS["zh" if str(state.get("lang", "")).startswith("zh") else "en"],
                                    state, url)
        outcome = await self.sms.send(to, text, session_id=session_id, language=state.get("lang"),
                                      link_id=link.id, secret=token)
        self._append(session_id, "sms", node, {**outcome.event(to), "link": link.id, "purpose": kind},
                     channel, info)
        if outcome.status != "sent":
            await self.links.end(link.id, f"sms {outcome.status}")
            return {"status": outcome.status, "reason": outcome.reason, "link": link.id}, None
        ws = WebSession(link.id, session_id, kind, page, state.get("lang"), number=to)
        self.sessions[link.id] = ws
        return {"status": "sent", "reason": None, "link": link.id, "expires_at": link.expires_at.isoformat()}, ws

    async def send_link_from_call(self, driver: CallDriver, face: Any, info: SessionInfo,
                                  params: dict[str, Any]) -> dict[str, Any]:
        """The ``visual_link`` action: text the caller, remember the call's state for the page."""
        result, ws = await self.send_link(
            info.id, to=str(params.get("to") or ""), state=info.state, page=str(params["page"]), kind="call",
            template=str(params.get("sms") or ""), created_by="flow", channel=face.channel,
            node=params.get("node"), info=info)
        if ws is not None:
            ws.offer_node = params.get("node")
            ws.voice_state = dict(info.state)  # the full state: masked values stay usable on screen
            old = self.calls.get(info.id)
            if old is not None and old is not ws:
                old.back_on_phone = True
            self.calls[info.id] = ws
        return {"kind": "link", **{k: v for k, v in result.items() if k in ("status", "reason")}}

    async def push(self, session_id: str, *, node: str, agent: str, number: str | None = None,
                   language: str | None = None) -> tuple[int, dict[str, Any]]:
        """An agent sends the caller a page of the flow (a guide or an open page,
        see :func:`visual_ivr.push.sendable`) by text."""
        session = await self.store.get_session(session_id)
        if session is None:
            return 404, {"error": "no such session"}
        flow = push.flow_of(self.app, session)
        why = push.refusal(session, flow, number)
        if why in ("no_flow", "no_state", "too_old"):
            return 409, {"error": push.REASONS[why][0], "reason": why, "reason_text": push.reason_text(why)}
        assert flow is not None
        pages = [p["node"] for p in push.sendable(flow)]
        if node not in pages:
            return 400, {"error": f"node {node!r} of flow {flow.id} cannot be sent; one of: {', '.join(pages)}"}
        line = classify(number or session.get("caller"), push.region_of(flow))
        if why == "not_mobile" or not line.e164:
            return 400, {"error": f"the number is not a mobile ({line.kind})", "reason": "not_mobile",
                         "reason_text": push.reason_text("not_mobile")}
        state = session["state"]
        lang = language if language in flow.languages else state.get("lang")
        state = {**state, "lang": lang}
        offer = next((n for n in flow.nodes.values() if isinstance(n, OfferVisualNode)), None)
        template = flow.text(offer.sms, lang) if offer else DEFAULT_SMS["zh" if lang.startswith("zh") else "en"]
        self._append(session_id, "web_push", node, {"agent": agent, "node": node,
                                                    "type": flow.nodes[node].type}, "web")
        result, ws = await self.send_link(session_id, to=line.e164, state=state, page=node, kind="push",
                                          template=template, created_by=agent[:64], channel="web", node=node)
        self.notify(session_id, result["link"])
        code = {"sent": 201, "refused": 429}.get(result["status"], 502)
        sms = {"to": mask_number(line.e164), **result}
        if result["status"] != "sent":
            sms["reason_text"] = push.reason_text(result.get("reason") or "failed")
        return code, {"sms": sms, "label": push.node_label(flow, node)}

    def notify(self, session_id: str, link_id: str) -> None:
        """Tell the desks (on every server, over the desk bus) that a pushed page
        changed: sent, opened, a step. In the background: pages never wait for it."""
        handoff = getattr(self.app, "handoff", None)
        if handoff is None:
            return
        task = asyncio.get_running_loop().create_task(self._notify(handoff, session_id, link_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self, handoff: Any, session_id: str, link_id: str) -> None:
        try:
            await self.store.flush(session_id)  # the desk's server reads the trail from the database
            await handoff.publish({"type": "visual_push", "session_id": session_id, "link": link_id})
        except Exception:  # noqa: BLE001 - the desk's fallback refresh catches up
            log.exception("session %s: could not tell the desks about pushed link %s", session_id, link_id)

    def _purge(self) -> None:
        """Forget pages nobody used for a long while (their links have expired)."""
        horizon = time.monotonic() - 2 * max(self.links.ttl, 3600)
        for link_id, ws in list(self.sessions.items()):
            if not ws.holding and ws.last_activity < horizon:
                del self.sessions[link_id]
                if self.calls.get(ws.session_id) is ws:
                    del self.calls[ws.session_id]

    # ------------------------------------------------------------ the call on hold
    async def hold(self, driver: CallDriver, face: Any, info: SessionInfo,
                   params: dict[str, Any]) -> "dict[str, Any] | Handover":
        ws = self.calls.get(info.id)
        chan = getattr(face, "chan", None)
        if ws is None or chan is None:
            return {"kind": "hold", "status": "unsupported"}
        timeout = float(params.get("timeout") or 180)
        ws.holding = True
        ws.last_activity = time.monotonic()
        reason = "abandoned"
        try:
            await chan.exec("StartMusicOnHold", str(params.get("music") or "default"))
            while True:
                if ws.handback:
                    reason = ws.handback
                    break
                idle = time.monotonic() - ws.last_activity
                if idle >= timeout:
                    break
                key = await chan.wait_for_digit(max(100, int(min(self.poll, timeout - idle) * 1000)))
                if key:
                    reason = "key"
                    break
        except (AgiHangup, CallerGone):
            return await self._left_hold(ws, face)
        finally:
            if not chan.hung_up and not chan.closed:
                try:
                    await chan.exec("StopMusicOnHold")
                except AgiError:
                    pass
        if chan.hung_up:
            # the caller hung up as the music stopped: the call ends here, on
            # the hold, not at whatever the flow would have gone on to
            return await self._left_hold(ws, face)
        async with ws.lock:  # no page step runs while the call takes the session back
            ws.holding = False
            if reason in ("abandoned", "key"):
                ws.back_on_phone = True
                await self.links.end(ws.link_id, "back on phone")
            if ws.turn is None:
                return {"kind": "hold", "status": reason, "opened": False}
            node = ws.turn.state.get("node")
            self._append(info.id, "visual_back", node, {"reason": reason, "outcome": ws.finished}, face.channel,
                         info)
            return Handover(self._voice_turn(ws))

    async def _left_hold(self, ws: WebSession, face: Any) -> Handover:
        """The caller is gone while on hold: the page's session, or CallerGone."""
        ws.holding = False
        gone = "moved" if getattr(face, "moved", False) else "caller"
        async with ws.lock:
            if ws.turn is not None:
                # the session ends where the page got to; a page still in
                # use goes on without the call
                return Handover(self._voice_turn(ws), gone=gone)
            if gone == "moved":  # pragma: no cover - moving needs an opened page
                return Handover(self._offer_turn(ws), gone=gone)
        raise CallerGone("caller") from None

    def _offer_turn(self, ws: WebSession) -> Turn:
        state = dict(ws.voice_state or {})
        return Turn(state)

    def _voice_turn(self, ws: WebSession) -> Turn:
        assert ws.turn is not None
        t = ws.turn
        state = dict(t.state)
        state.pop(ON_SCREEN, None)
        prompts = list(t.prompts)
        if t.ended and not prompts and ws.offer_node:
            prompts = self._prompts(state, ws.offer_node, "goodbye_prompt")
        return Turn(state, prompts, t.expect, list(t.actions), [])

    def _prompts(self, state: dict[str, Any], node_id: str, field_name: str) -> list[PromptOut]:
        flow = self.flow_of(state)
        ctx = Ctx(self.engine, flow, dict(state, vars=dict(state.get("vars") or {})), self._now()
                  or dt.datetime.now(dt.timezone.utc))
        ctx.play(flow.prompt_ids(node_id, field_name), barge_in=False)
        return ctx.prompts

    # ------------------------------------------------------------ the pages' steps
    async def open(self, ws: WebSession) -> None:
        """The first view of a link: continue the session at the link's node."""
        if ws.turn is not None:
            return
        if ws.mode == "call" and ws.voice_state is not None:
            base = dict(ws.voice_state)
        else:
            session = await self.store.get_session(ws.session_id)
            if session is None or not session.get("state"):
                raise EngineError("the session has no state")
            base = dict(session["state"])
        base[ON_SCREEN] = True
        if ws.language:
            base["lang"] = ws.language
        flow = self.flow_of(base)
        ws.info = SessionInfo(ws.session_id, flow, "web", caller=(base.get("vars") or {}).get("caller"),
                              tags={"link": ws.link_id})  # each web event says which link it happened on
        self._append(ws.session_id, "web_open", ws.page_node, {"link": ws.link_id, "mode": ws.mode,
                                                               "call_live": self.voice_live(ws.session_id)},
                     "web", ws.info)
        await self._advance(ws, resume=ws.page_node, base=base)

    async def _advance(self, ws: WebSession, inp: Input | None = None, *, resume: str | None = None,
                       base: dict[str, Any] | None = None) -> None:
        assert ws.info is not None
        face = WebFace()
        before = len(ws.info.events)
        if resume is not None:
            state = base if base is not None else ws.turn.state  # type: ignore[union-attr]
            turn = self.engine.resume(state, node=resume, now=self._now())
            self.driver.record(ws.info, turn, "web")
            turn = await self.driver.settle(face, ws.info, turn)
        else:
            assert ws.turn is not None and inp is not None
            turn = await self.driver.step(face, ws.info, ws.turn, inp)
        ws.turn = turn
        ws.shown = face.shown + list(turn.prompts)
        ws.step_events = ws.info.events[before:]
        await self._after(ws)

    async def _after(self, ws: WebSession) -> None:
        turn = ws.turn
        assert turn is not None
        ws.last_activity = time.monotonic()
        if ws.mode == "push":
            self.notify(ws.session_id, ws.link_id)
        if turn.ended:
            ws.finished = ws.finished or turn.outcome or "completed"
        call_mode = ws.mode == "call" and self.calls.get(ws.session_id) is ws
        if call_mode and ws.holding:
            if turn.ended:
                ws.handback = "ended"
            elif self.pending(turn) == "transfer":
                ws.handback = "transfer"
        owns_state = (call_mode and not ws.back_on_phone) or not self.voice_live(ws.session_id)
        if owns_state:
            state = public_state(turn.state)
            state.pop(ON_SCREEN, None)
            await self.store.save_state(ws.session_id, state, variables=state["vars"], language=state["lang"])
        if turn.ended:
            await self.links.end(ws.link_id, turn.outcome or "completed")
            if not self.voice_live(ws.session_id) and owns_state:
                assert ws.info is not None
                events = await self.store.events(ws.session_id)
                await self.store.end_session(ws.session_id, outcome=turn.outcome or "completed",
                                             node=turn.state.get("node"), summary=build_summary(events),
                                             reason=turn.state.get("reason"))

    @staticmethod
    def pending(turn: Turn) -> str | None:
        if turn.ended or turn.expect is not None:
            return None
        waiting = [a for a in turn.actions if a.await_result]
        return waiting[0].kind if waiting else None

    async def tap(self, ws: WebSession, value: str) -> None:
        await self._advance(ws, Input.tap(value))

    async def enter_text(self, ws: WebSession, value: str) -> str | None:
        """Digits typed on the page: checked like on the phone before the engine
        sees them; returns the reason when they are not valid (shown inline)."""
        assert ws.turn is not None and ws.info is not None
        flow = self.flow_of(ws.turn.state)
        node = flow.nodes.get(ws.turn.state["node"])
        if isinstance(node, InputDigitsNode):
            value = value.strip().replace(" ", "")
            if node.star_as_x:
                value = value.replace("*", "X").replace("x", "X")
            reason = node.validate_value(value)
            if reason:
                shown = expr.mask(value) if node.mask else value
                self._append(ws.session_id, "input_invalid", ws.turn.state["node"],
                             {"reason": reason, "value": shown, "mode": "text"}, "web", ws.info)
                if ws.mode == "push":
                    self.notify(ws.session_id, ws.link_id)
                return reason
        await self._advance(ws, Input("text", value))
        return None

    async def back(self, ws: WebSession) -> None:
        assert ws.turn is not None
        flow = self.flow_of(ws.turn.state)
        node = flow.nodes.get(ws.turn.state["node"])
        keys = getattr(node, "active_global_keys", None)
        active = keys(_FakeCtx(flow)) if keys else {}
        back_key = next((k for k, v in active.items() if v == "back"), None)
        if back_key is not None and ws.turn.expect is not None:
            await self._advance(ws, Input.tap(back_key))
            return
        history = list(ws.turn.state.get("history") or [])
        if history and history[-1] == ws.turn.state["node"]:
            history.pop()
        if not history:
            return
        target = history.pop()
        state = dict(ws.turn.state, history=history)
        await self._advance(ws, resume=target, base=state)

    # ------------------------------------------------------------ a person
    def person_target(self, state: dict[str, Any]) -> dict[str, Any]:
        """Queue, priority and reason for "talk to a person", from the flow's own
        way to a person (the transfer node behind its global keys)."""
        flow = self.flow_of(state)
        now = self._now() or dt.datetime.now(dt.timezone.utc)
        ctx = Ctx(self.engine, flow, dict(state, vars=dict(state.get("vars") or {})), now)
        queue, priority, target = None, 0, None
        for start in flow.settings.global_keys.values():
            found = _find_transfer(flow, start)
            if found is not None:
                target, transfer = start, found
                try:
                    queue = ctx.render(transfer.queue).strip() if transfer.queue else None
                    priority = int(ctx.evaluate(transfer.priority) or 0)
                except (expr.ExprError, TypeError, ValueError):
                    pass
                break
        here = flow.nodes.get(state.get("node", ""))
        if here is not None:
            ctx.set_reason("asked", here)
        return {"queue": queue or self.app.config.fallback_queue, "priority": priority, "node": target,
                "reason": ctx.state.get("reason")}

    def can_connect(self, ws: WebSession) -> bool:
        return ws.mode == "call" and ws.holding and not ws.back_on_phone and self.voice_live(ws.session_id)

    async def connect_now(self, ws: WebSession) -> bool:
        """Put the caller's live call through to a person now."""
        assert ws.turn is not None
        live = self.app.live_calls.get(ws.session_id)
        if live is None or not self.can_connect(ws):
            return False
        target = self.person_target(ws.turn.state)
        ami = self.app.ami
        if ami is not None and live.channel:
            events = await self.store.events(ws.session_id)
            summary = build_summary(events)
            live.face.moved = True
            try:
                chan = live.channel
                await ami.setvar(chan, names.VAR_QUEUE, target["queue"])
                await ami.setvar(chan, names.VAR_PRIO, str(target["priority"]))
                await ami.setvar(chan, names.INHERIT + names.VAR_SESSION, ws.session_id)
                await ami.setvar(chan, names.INHERIT + names.VAR_SUMMARY, summary[:500])
                await ami.setvar(chan, names.INHERIT + names.VAR_REASON, str(target["reason"] or "")[:200])
                await ami.setvar(chan, names.INHERIT + names.VAR_LANGUAGE, str(ws.turn.state.get("lang") or ""))
                await ami.redirect(chan, names.CONTEXT_QUEUE, "s", 1)
            except Exception as exc:  # noqa: BLE001 - AMI down, channel gone: offer a callback instead
                live.face.moved = False
                log.warning("session %s: could not move the call to %s: %s", ws.session_id, target["queue"], exc)
                self._append(ws.session_id, "moved", ws.turn.state.get("node"), {
                    "queue": target["queue"], "ok": False, "error": type(exc).__name__}, "web", ws.info)
                return False
            self._append(ws.session_id, "moved", ws.turn.state.get("node"), {
                "queue": target["queue"], "priority": target["priority"], "ok": True, "via": "ami",
                "reason": target["reason"]}, "web", ws.info)
            ws.finished = "moved"
            await self.links.end(ws.link_id, "moved")
            return True
        if target["node"] is None:
            return False
        # No AMI link: the flow's own way to a person, and the call follows.
        await self._advance(ws, resume=target["node"])
        return True

    def callback_slots(self, now: dt.datetime | None = None, count: int = 6) -> list[dt.datetime]:
        cfg = self.app.config
        tz = ZoneInfo(cfg.visual_timezone)
        start_s, _, end_s = cfg.visual_callback_hours.partition("-")
        open_h, close_h = int(start_s.split(":")[0]), int(end_s.split(":")[0])
        local = (now or dt.datetime.now(dt.timezone.utc)).astimezone(tz)
        slot = local.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        out: list[dt.datetime] = []
        while len(out) < count:
            if open_h <= slot.hour < close_h:
                out.append(slot)
            slot += dt.timedelta(hours=1)
        return out

    async def request_callback(self, ws: WebSession, when: "str | dt.datetime") -> dict[str, Any] | None:
        assert ws.turn is not None and ws.info is not None
        state = ws.turn.state
        target = self.person_target(state)
        number = ws.number or (state.get("vars") or {}).get("caller") or ""
        try:
            request = await callbacks.request_callback(
                self.app, ws.session_id, number=number, when=when, queue=target["queue"],
                language=state.get("lang") or "", reason=target["reason"], channel="web")
        except ValueError as exc:  # refused by the callback service (bad time, number ...)
            log.warning("session %s: callback refused: %s", ws.session_id, exc)
            ws.flash = "callback_failed"
            return None
        ws.callback = {**request, "when": request.get("when") or (when if isinstance(when, str) else
                                                                  when.isoformat())}
        if not ws.turn.ended:
            turn = self.engine.finish(state, "callback", reason=target["reason"], now=self._now())
            self.driver.record(ws.info, turn, "web")
            ws.turn = turn
            ws.shown = []
            ws.step_events = []
            ws.finished = "callback"
            await self._after(ws)
        return request

    async def cancel_callback(self, ws: WebSession) -> bool:
        if not ws.callback:
            return False
        ok = await callbacks.cancel_callback(self.app, str(ws.callback.get("id")), by="caller")
        if ok:
            ws.callback = {**ws.callback, "status": "cancelled"}
        return ok

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sms.close()


class _FakeCtx:
    """Just enough of a Ctx for ``InputNode.active_global_keys``."""

    def __init__(self, flow: Flow):
        self.flow = flow


def _find_transfer(flow: Flow, start: str, depth: int = 0) -> TransferNode | None:
    node = flow.nodes.get(start)
    if node is None or depth > 6:
        return None
    if isinstance(node, TransferNode):
        return node
    if node.waits_for_input or isinstance(node, LookupNode):
        return None
    for _, target in node.targets():
        found = _find_transfer(flow, target, depth + 1)
        if found is not None:
            return found
    return None
