"""The ``callback`` node: take a callback request, as soon as possible or at a
slot the caller picks within business hours.

The node is pure engine logic: it renders the request and asks the face's
runtime to store it (action ``callback``, carried out by
:mod:`callback.actions` with :func:`callback.api.request_callback`).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator

from ivr.engine.context import Ctx, End, Goto, Transition, WaitAction
from ivr.engine.types import Action, Choice, Expect, Input
from ivr.flow import expr
from ivr.flow.model import NodeId, PromptSpec, Text, register_node
from ivr.flow.nodes import HolidayDates, InputNode, TimeZoneName, WeeklySchedule

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_ZH = "一二三四五六日"
_WEEKDAY_EN = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
ASAP_LABEL = {"zh": "尽快回电", "en": "as soon as possible"}


def slot_label(at: dt.datetime, now: dt.datetime, lang: str) -> str:
    """``今天 14:00`` / ``today at 14:00``, ``明天``/``tomorrow``, then weekday and date."""
    days = (at.date() - now.date()).days
    hm = at.strftime("%H:%M")
    if lang.startswith("zh"):
        day = "今天" if days == 0 else "明天" if days == 1 else f"{at.month}月{at.day}日（周{_WEEKDAY_ZH[at.weekday()]}）"
        return f"{day}{hm}"
    day = "today" if days == 0 else "tomorrow" if days == 1 else (
        f"{_WEEKDAY_EN[at.weekday()]} {at.day} {_MONTH_EN[at.month - 1]}")
    return f"{day} at {hm}"


def business_slots(now: dt.datetime, tz: str, schedule: dict[str, list[str]], holidays: list[str], *,
                   slot_minutes: int, count: int, lead_minutes: int = 15) -> list[dt.datetime]:
    """The next ``count`` slot starts (aware, in ``tz``) that lie wholly in an
    opening span, on a boundary of ``slot_minutes`` from the span start, at
    least ``lead_minutes`` from now. Looks up to 14 days ahead."""
    zone = ZoneInfo(tz)
    local_now = now.astimezone(zone)
    earliest = local_now + dt.timedelta(minutes=lead_minutes)
    out: list[dt.datetime] = []
    for offset in range(15):
        day = (local_now + dt.timedelta(days=offset)).date()
        if day.isoformat() in holidays:
            continue
        for span in sorted(schedule.get(_DAYS[day.weekday()], [])):
            start_s, end_s = span.split("-")
            start = dt.datetime.combine(day, dt.time(int(start_s[:2]) % 24, int(start_s[3:])), zone)
            end = (dt.datetime.combine(day, dt.time(0, 0), zone) + dt.timedelta(days=1)) if end_s == "24:00" else \
                dt.datetime.combine(day, dt.time(int(end_s[:2]), int(end_s[3:])), zone)
            at = start
            while at + dt.timedelta(minutes=slot_minutes) <= end:
                if at >= earliest:
                    out.append(at)
                    if len(out) >= count:
                        return out
                at += dt.timedelta(minutes=slot_minutes)
    return out


def clean_number(text: str) -> str | None:
    """Digits with an optional leading ``+`` (spaces, dashes, dots, brackets dropped); None if unusable."""
    raw = re.sub(r"[\s\-().]", "", str(text or ""))
    if not re.fullmatch(r"\+?[0-9]{3,20}", raw):
        return None
    return raw


@register_node
class CallbackNode(InputNode):
    """Store a callback request (``asap``, or a slot the caller picks), then go on."""

    type: Literal["callback"] = "callback"
    queue: str = Field(description="queue whose agents call back (template)")
    number: str = Field("{{ caller }}", description="number to call back (template); digits and a leading +")
    when: Literal["asap", "choose"] = Field("asap", description="asap, or let the caller choose a slot")
    prompt: PromptSpec | None = Field(None, description="with `when: choose`: the question, listing the slots "
                                                        "(a template over `callback_slots`)")
    timezone: TimeZoneName = Field("Asia/Shanghai", description="time zone of `schedule`")
    schedule: WeeklySchedule | None = Field(
        None, description="business hours, day -> 'HH:MM-HH:MM' spans (needed for `when: choose`)")
    holidays: HolidayDates = Field(default_factory=list, description="ISO dates without slots")
    slot_minutes: int = Field(60, ge=15, le=240, description="length of a slot")
    slots: int = Field(3, ge=1, le=8, description="slots offered after 'as soon as possible' (keys 2, 3 ...)")
    mode: Literal["customer_first", "agent_first"] = Field(
        "customer_first", description="dial the customer first (then queue), or an agent first (then the customer)")
    priority: Any = Field(0, description="queue priority of the callback: a number or an expression")
    max_attempts: int | None = Field(None, ge=1, le=20, description="dial attempts (default: server setting)")
    retry_interval: int | None = Field(None, ge=1, le=86400, description="seconds between attempts (default: server "
                                                                         "setting)")
    reason: Text | None = Field(None, description="why the caller wants a person (template, shown on the pop)")
    confirm: PromptSpec | None = Field(None, description="said once the request is stored (template over "
                                                         "`callback_when`)")
    next: NodeId

    target_fields: ClassVar = ("next",)
    template_fields: ClassVar = ("summary", "queue", "number", "reason")
    prompt_fields: ClassVar = ("prompt", "prompts", "noinput_prompt", "nomatch_prompt", "confirm")

    @model_validator(mode="after")
    def _choose_needs(self) -> "CallbackNode":
        if self.when == "choose" and (not self.prompt or not self.schedule):
            raise ValueError("`when: choose` needs a `prompt` (listing the slots) and a `schedule`")
        return self

    def expressions(self):
        if isinstance(self.priority, str):
            yield "priority", self.priority

    # ---- slots
    def _slots(self, ctx: Ctx) -> list[dict[str, Any]]:
        lang = ctx.lang
        asap = ASAP_LABEL["zh" if lang.startswith("zh") else "en"]
        out: list[dict[str, Any]] = [{"key": "1", "at": None, "label": asap}]
        starts = business_slots(ctx.now, self.timezone, dict(self.schedule or {}), self.holidays,
                                slot_minutes=self.slot_minutes, count=self.slots)
        local_now = ctx.now.astimezone(ZoneInfo(self.timezone))
        for i, at in enumerate(starts, start=2):
            out.append({"key": str(i), "at": at.astimezone(dt.timezone.utc).isoformat(),
                        "label": slot_label(at, local_now, lang)})
        return out

    def enter(self, ctx: Ctx) -> Transition:
        if self.when == "asap":
            return self._request(ctx, None)
        ctx.set_var("callback_slots", self._slots(ctx), quiet=True)
        return super().enter(ctx)

    def expect(self, ctx: Ctx) -> Expect:
        slots = ctx.vars.get("callback_slots") or []
        choices = tuple(Choice(s["key"], s["label"]) for s in slots)
        return Expect("choice", ctx.node_id, timeout=self.timeout_for(ctx), choices=choices,
                      global_keys=tuple(k for k in self.active_global_keys(ctx) if k not in {c.key for c in choices}),
                      attempt=ctx.state.get("attempt", 1))

    def global_meaning(self, ctx: Ctx, value: str) -> str | None:
        if any(s.get("key") == value for s in ctx.vars.get("callback_slots") or []):
            return None
        return super().global_meaning(ctx, value)

    def handle(self, ctx: Ctx, inp: Input) -> Transition:
        value = inp.value if isinstance(inp.value, str) else None
        for slot in ctx.vars.get("callback_slots") or []:
            if slot["key"] == value:
                ctx.emit("choice", key=value, label=slot["label"], mode=inp.mode)
                return self._request(ctx, slot["at"])
        return self.no_match(ctx, "not a slot", value)

    # ---- the request
    def _request(self, ctx: Ctx, at: str | None) -> Transition:
        raw = ctx.scope(masked_view=False)
        try:
            number = clean_number(expr.render(self.number, raw))
            queue = expr.render(self.queue, raw).strip()
            priority = int(ctx.evaluate(self.priority) or 0)
        except (expr.ExprError, TypeError, ValueError) as exc:
            ctx.emit("callback_requested", ok=False, reason=f"template: {exc}")
            return self._refused(ctx)
        if not number or not queue:
            ctx.emit("callback_requested", ok=False, reason="no usable number" if not number else "no queue")
            return self._refused(ctx)
        if self.reason:
            ctx.state["reason"] = ctx.render(ctx.flow.text(self.reason, ctx.flow.summary_language))
        elif not ctx.state.get("reason"):
            ctx.set_reason("flow", self)
        params = {"number": number, "when": at or "asap", "queue": queue, "language": ctx.lang,
                  "reason": ctx.state.get("reason"), "mode": self.mode, "priority": priority,
                  "max_attempts": self.max_attempts, "retry_interval": self.retry_interval, "node": ctx.node_id}
        return WaitAction(Action("callback", params, await_result=True))

    def _refused(self, ctx: Ctx) -> Transition:
        target = self.failure or ctx.flow.settings.failure
        return Goto(target) if target else End("failed", "callback refused")

    def on_input(self, ctx: Ctx, inp: Input) -> Transition:
        if inp.mode != "result":
            return super().on_input(ctx, inp)
        result = inp.value if isinstance(inp.value, dict) else {}
        if not result.get("id"):
            ctx.emit("error", where="callback", message=str(result.get("error") or "request not stored"))
            return self._refused(ctx)
        when = result.get("when") or "asap"
        label = ASAP_LABEL["zh" if ctx.lang.startswith("zh") else "en"]
        for slot in ctx.vars.get("callback_slots") or []:
            if slot.get("at") == when:
                label = slot["label"]
        ctx.set_var("callback_id", result["id"], quiet=True)
        ctx.set_var("callback_when", label, quiet=True)
        ctx.add_summary(self, callback_when=label)
        ctx.play(ctx.flow.prompt_ids(ctx.node_id, "confirm"), barge_in=False)
        return Goto(self.next)
