"""The step machine. Pure: no I/O, no clocks except the ``now`` it is given.

``start(flow, context)`` and ``advance(state, input)`` return a :class:`Turn`:
what to present, what the face must do, what to wait for, and the trail events
of this step. The state is plain JSON data, so it can be stored and continued
on another face or another server.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any, Callable, Mapping

from ivr.engine.context import Ctx, End, EngineError, Goto, Transition, Wait, WaitAction
from ivr.engine.types import Input, Turn
from ivr.flow import expr
from ivr.flow.model import Flow

STATE_VERSION = 1
MAX_STEPS = 200  # nodes visited in one step without waiting: a runaway guard

FlowResolver = Callable[[str, str | None], Flow]


class Engine:
    """Runs flows. ``resolver(flow_id, version)`` finds flows for subflows and
    for states that name a version (``None`` = the current one)."""

    def __init__(self, resolver: FlowResolver | Mapping[str, Flow]):
        if isinstance(resolver, Mapping):
            flows = resolver

            def _resolve(flow_id: str, version: str | None) -> Flow:
                try:
                    flow = flows[flow_id]
                except KeyError:
                    raise EngineError(f"unknown flow {flow_id!r}") from None
                if version is not None and flow.version != version:
                    raise EngineError(f"flow {flow_id!r} version {version} is not loaded")
                return flow

            self.resolve: FlowResolver = _resolve
        else:
            self.resolve = resolver

    # ------------------------------------------------------------------ public
    def start(self, flow: Flow, context: Mapping[str, Any] | None = None, *, now: dt.datetime | None = None) -> Turn:
        """Begin a session of ``flow``. ``context`` may hold ``session_id``,
        ``lang``, ``caller``, ``dialed``, ``channel`` and ``vars``."""
        context = dict(context or {})
        lang = context.get("lang")
        if lang not in flow.languages:
            lang = _match_language(lang, flow.languages) or flow.default_language
        variables = {k: v for k, v in (context.get("vars") or {}).items()}
        for key in ("caller", "dialed", "channel"):
            if context.get(key) is not None:
                variables.setdefault(key, context[key])
        state: dict[str, Any] = {
            "v": STATE_VERSION,
            "session_id": context.get("session_id") or uuid.uuid4().hex,
            "flow": flow.id,
            "version": flow.version,
            "stack": [],
            "node": flow.start,
            "lang": lang,
            "vars": variables,
            "masked": [],
            "history": [],
            "attempt": 1,
            "noinput": 0,
            "nomatch": 0,
            "status": "running",
            "waiting": None,
            "outcome": None,
            "reason": None,
        }
        ctx = Ctx(self, flow, state, now or _utcnow())
        ctx.emit("session_start", node=flow.start, flow=flow.id, version=flow.version, lang=lang,
                 channel=context.get("channel"), agent_lang=flow.summary_language)
        return self._run(ctx, Goto(flow.start))

    def advance(self, state: Mapping[str, Any], inp: Input, *, now: dt.datetime | None = None) -> Turn:
        """Feed one input (caller input or an action result) to a waiting session."""
        if state.get("status") == "ended":
            raise EngineError("the session has ended")
        if state.get("v") != STATE_VERSION:
            raise EngineError(f"state version {state.get('v')} is not supported")
        st = _copy_state(state)
        flow = self.resolve(st["flow"], st["version"])
        ctx = Ctx(self, flow, st, now or _utcnow())
        node = flow.nodes.get(st["node"])
        if node is None:
            raise EngineError(f"node {st['node']!r} is not in flow {flow.id} {flow.version}")
        if inp.mode == "hangup":
            ctx.emit("hangup", reason=inp.value or "caller")
            # "moved": the server itself moved the live call (e.g. into a queue
            # from the visual IVR); that is not the caller hanging up.
            outcome = "moved" if inp.value == "moved" else "hangup"
            if st.get("talked_to_person") and outcome == "hangup":
                outcome = "transfer"  # hung up after the agent, e.g. during the survey
            return self._finish(ctx, End(outcome, str(inp.value or "caller")))
        waiting = st.get("waiting")
        if waiting == "result" and inp.mode != "result":
            raise EngineError(f"node {node.type} {st['node']!r} waits for an action result, not {inp.mode}")
        if waiting == "input" and inp.mode == "result":
            raise EngineError(f"node {st['node']!r} waits for caller input, not an action result")
        if inp.mode != "result":
            ctx.emit("input", **_input_event(inp, masked=_input_masked(node)))
        st["waiting"] = None
        return self._run(ctx, node.on_input(ctx, inp))

    def resume(self, state: Mapping[str, Any], *, node: str | None = None, now: dt.datetime | None = None) -> Turn:
        """Continue a session on another face (or after an agent pushed a page):
        re-enter ``node`` (default: the node the state is at) as if the flow had
        just gone there. A ``resume`` event records the jump."""
        if state.get("v") != STATE_VERSION:
            raise EngineError(f"state version {state.get('v')} is not supported")
        st = _copy_state(state)
        flow = self.resolve(st["flow"], st["version"])
        target = node or st["node"]
        if target not in flow.nodes:
            raise EngineError(f"node {target!r} is not in flow {flow.id} {flow.version}")
        st.update(status="running", waiting=None, outcome=None)
        ctx = Ctx(self, flow, st, now or _utcnow())
        ctx.emit("resume", node=target, previous=state.get("node"))
        return self._run(ctx, Goto(target))

    def finish(self, state: Mapping[str, Any], outcome: str, reason: str | None = None, *,
               now: dt.datetime | None = None) -> Turn:
        """End a session from outside the flow (the caller booked a callback on
        the visual IVR, say): the same ``session_end`` as a flow ending."""
        if state.get("status") == "ended":
            raise EngineError("the session has ended")
        st = _copy_state(state)
        flow = self.resolve(st["flow"], st["version"])
        ctx = Ctx(self, flow, st, now or _utcnow())
        if reason:
            st["reason"] = reason
        return self._finish(ctx, End(outcome, reason))

    # ---------------------------------------------------------------- subflows
    def enter_subflow(self, ctx: Ctx, flow_id: str, return_to: str) -> Transition:
        sub = self.resolve(flow_id, None)
        ctx.state["stack"].append({
            "flow": ctx.state["flow"],
            "version": ctx.state["version"],
            "return_to": return_to,
            "history": ctx.state.get("history", []),
        })
        ctx.state.update(flow=sub.id, version=sub.version, history=[])
        ctx.flow = sub
        ctx.emit("subflow", flow=sub.id, version=sub.version)
        return Goto(sub.start)

    def leave_subflow(self, ctx: Ctx) -> Transition:
        if not ctx.state["stack"]:
            return End("completed")
        frame = ctx.state["stack"].pop()
        ctx.flow = self.resolve(frame["flow"], frame["version"])
        ctx.state.update(flow=frame["flow"], version=frame["version"], history=frame["history"])
        ctx.emit("subflow_return", flow=frame["flow"])
        return Goto(frame["return_to"])

    # ---------------------------------------------------------------- internals
    def _run(self, ctx: Ctx, transition: Transition) -> Turn:
        steps = 0
        while isinstance(transition, Goto):
            steps += 1
            if steps > MAX_STEPS:
                ctx.emit("error", where="engine", message=f"more than {MAX_STEPS} nodes without waiting")
                return self._finish(ctx, End("error", "runaway flow"))
            node = ctx.flow.nodes.get(transition.node)
            if node is None:
                ctx.emit("error", where="engine", message=f"no node {transition.node!r}")
                return self._finish(ctx, End("error", f"no node {transition.node}"))
            ctx.state["node"] = transition.node
            ctx.emit("node_enter", type=node.type)
            try:
                transition = node.enter(ctx)
            except expr.ExprError as exc:
                ctx.emit("error", where=node.type, message=str(exc))
                return self._finish(ctx, End("error", str(exc)))
        if isinstance(transition, Wait):
            ctx.state["status"] = "waiting"
            ctx.state["waiting"] = "input"
            return Turn(ctx.state, ctx.prompts, transition.expect, ctx.actions, ctx.events)
        if isinstance(transition, WaitAction):
            ctx.state["status"] = "waiting"
            ctx.state["waiting"] = "result"
            ctx.actions.append(transition.action)
            return Turn(ctx.state, ctx.prompts, None, ctx.actions, ctx.events)
        return self._finish(ctx, transition)

    def _finish(self, ctx: Ctx, end: End) -> Turn:
        ctx.state["status"] = "ended"
        ctx.state["waiting"] = None
        ctx.state["outcome"] = end.outcome
        if end.reason and not ctx.state.get("reason"):
            ctx.state["reason"] = end.reason
        from ivr.engine.types import Action

        if end.outcome != "hangup":
            ctx.actions.append(Action("hangup", {"outcome": end.outcome}))
        ctx.emit("session_end", outcome=end.outcome, reason=end.reason)
        return Turn(ctx.state, ctx.prompts, None, ctx.actions, ctx.events)


def _copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A private copy of the parts a step may change.

    Nodes replace variable values rather than mutate them, so copying the
    containers is enough; a deep copy of look-up results on every step would
    cost more than the rest of the step.
    """
    st = dict(state)
    st["vars"] = dict(state.get("vars") or {})
    st["masked"] = list(state.get("masked") or [])
    st["history"] = list(state.get("history") or [])
    st["stack"] = [dict(frame) for frame in state.get("stack") or []]
    return st


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _match_language(lang: Any, languages: tuple[str, ...]) -> str | None:
    if not isinstance(lang, str) or not lang:
        return None
    prefix = lang.lower().replace("_", "-").split("-")[0]
    for candidate in languages:
        if candidate.lower().split("-")[0] == prefix:
            return candidate
    return None


def _input_masked(node: Any) -> bool:
    return bool(getattr(node, "mask", False))


def _input_event(inp: Input, *, masked: bool) -> dict[str, Any]:
    value = inp.value
    utterance = inp.utterance
    if masked and value is not None:
        value = expr.mask(value)
        utterance = expr.mask(utterance) if utterance else utterance
    return {"mode": inp.mode, "value": value, "confidence": inp.confidence, "utterance": utterance}


def public_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state with masked variables hidden: what may be stored or shown."""
    out = copy.deepcopy(dict(state))
    for name in out.get("masked", ()):
        if name in out.get("vars", {}):
            out["vars"][name] = expr.mask(out["vars"][name])
    return out


def start(flow: Flow, context: Mapping[str, Any] | None = None, *, now: dt.datetime | None = None) -> Turn:
    """Start ``flow`` with an engine that knows only this flow."""
    return Engine({flow.id: flow}).start(flow, context, now=now)


def advance(flow: Flow, state: Mapping[str, Any], inp: Input, *, now: dt.datetime | None = None) -> Turn:
    return Engine({flow.id: flow}).advance(state, inp, now=now)
