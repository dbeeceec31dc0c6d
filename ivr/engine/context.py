"""What a node sees while the engine steps it: state, variables, output buffers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ivr.engine.types import Action, Event, Expect, PromptOut
from ivr.flow import expr

if TYPE_CHECKING:  # pragma: no cover
    from ivr.flow.model import Flow, Node


class EngineError(Exception):
    """The engine was driven wrongly (advancing an ended session, unknown flow ...)."""


# ---- transitions a node returns ------------------------------------------------
@dataclass(frozen=True)
class Goto:
    node: str


@dataclass(frozen=True)
class Wait:
    expect: Expect


@dataclass(frozen=True)
class WaitAction:
    action: Action


@dataclass(frozen=True)
class End:
    outcome: str
    reason: str | None = None


Transition = Goto | Wait | WaitAction | End


class Ctx:
    """Per-step context. ``state`` is the engine state being built (a private copy)."""

    def __init__(self, engine: Any, flow: "Flow", state: dict[str, Any], now: dt.datetime):
        self.engine = engine
        self.flow = flow
        self.state = state
        self.now = now
        self.prompts: list[PromptOut] = []
        self.actions: list[Action] = []
        self.events: list[Event] = []

    # ---- basics
    @property
    def node_id(self) -> str:
        return self.state["node"]

    @property
    def lang(self) -> str:
        return self.state["lang"]

    @property
    def vars(self) -> dict[str, Any]:
        return self.state["vars"]

    def emit(self, kind: str, node: str | None = None, **data: Any) -> None:
        self.events.append(Event(kind, node if node is not None else self.state.get("node"), data))

    # ---- variables
    def set_var(self, name: str, value: Any, *, masked: bool = False, quiet: bool = False) -> None:
        self.vars[name] = value
        masked_names = self.state.setdefault("masked", [])
        if masked and name not in masked_names:
            masked_names.append(name)
        if not quiet:
            shown = expr.mask(value) if name in masked_names else value
            self.emit("var_set", name=name, value=shown)

    def is_masked(self, name: str) -> bool:
        return name in self.state.get("masked", ())

    def scope(self, *, masked_view: bool) -> dict[str, Any]:
        """Variables for templates (masked values hidden) or expressions (raw)."""
        out = dict(self.vars)
        if masked_view:
            for name in self.state.get("masked", ()):
                if name in out:
                    out[name] = expr.mask(out[name])
        out["lang"] = self.lang
        out["_currency"] = self.flow.settings.currency
        return out

    def render(self, text: str, **extra: Any) -> str:
        scope = self.scope(masked_view=True)
        scope.update(extra)
        return expr.render(text, scope)

    def evaluate(self, expression: Any, **extra: Any) -> Any:
        scope = self.scope(masked_view=False)
        scope.update(extra)
        return expr.evaluate(expression, scope)

    # ---- prompts
    def prompt_out(self, pid: str, *, barge_in: bool = True, **extra: Any) -> PromptOut | None:
        """A catalogue prompt rendered in the caller's language (None when unknown, or when its
        template fails: the error goes on the trail and the caller hears the rest)."""
        pdef = self.flow.prompts.get(pid)
        if pdef is None:
            return None
        texts = pdef.texts()
        raw = texts.get(self.lang) or texts.get(self.flow.default_language) or ""
        dynamic = expr.is_template(raw)
        try:
            text = self.render(raw, **extra) if dynamic else raw
        except expr.ExprError as exc:
            self.emit("error", where=f"prompt {pid}", message=str(exc))
            return None
        return PromptOut(pid, text, self.lang, pdef.recording, dynamic, barge_in)

    def play(self, prompt_ids: tuple[str, ...] | list[str], *, barge_in: bool = True, **extra: Any) -> None:
        """Present catalogue prompts; ``extra`` adds template variables (e.g. ``heard``)."""
        for pid in prompt_ids:
            out = self.prompt_out(pid, barge_in=barge_in, **extra)
            if out is not None:
                self.prompts.append(out)
                self.emit("prompt", id=pid, text=out.text, lang=self.lang)

    # ---- summary fragments
    def add_summary(self, node: "Node", **extra: Any) -> None:
        if not node.summary:
            return
        try:
            text = self.render(node.summary, **extra).strip()
        except expr.ExprError as exc:
            self.emit("error", where="summary", message=str(exc))
            return
        if text:
            self.emit("summary", text=text)

    # ---- why the caller ends up with a person (shown on the agent's screen pop)
    REASONS = {
        "asked": ("客户在“{where}”要求人工服务", "asked for a person at {where}"),
        "tries": ("在“{where}”多次输入无效", "could not get past {where}"),
        "lookup": ("“{where}”查询失败", "look-up {where} failed"),
        "flow": ("流程转人工（{where}）", "sent to a person by the flow ({where})"),
    }

    def set_reason(self, kind: str, node: "Node") -> None:
        lang = self.flow.summary_language
        where = self.flow.text(node.label, lang) if node.label else self.node_id
        zh, en = self.REASONS[kind]
        self.state["reason"] = (zh if lang.startswith("zh") else en).format(where=where)

    # ---- navigation helpers
    def push_history(self) -> None:
        hist = self.state.setdefault("history", [])
        if not hist or hist[-1] != self.node_id:
            hist.append(self.node_id)
            del hist[:-50]

    def reset_counters(self) -> None:
        self.state["attempt"] = 1
        self.state["noinput"] = 0
        self.state["nomatch"] = 0
