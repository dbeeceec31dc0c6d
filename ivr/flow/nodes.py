"""The built-in node types. Each is a small class: its fields and its behaviour."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from ivr.engine.context import Ctx, End, Goto, Transition, Wait, WaitAction
from ivr.engine.types import Action, Choice, Expect, Input
from ivr.flow import expr
from ivr.flow.checksums import CHECKSUMS
from ivr.flow.listen import SPEECH_PROMPT_FIELDS, Listening
from ivr.flow.model import (
    Key,
    Node,
    NodeId,
    PromptSpec,
    Seconds,
    Strict,
    Text,
    VarName,
    register_node,
)


def _leads_to_person(ctx: Ctx, target: str, depth: int = 0) -> bool:
    """Does ``target`` lead to a transfer without caller input (e.g. an hours check first)?"""
    node = ctx.flow.nodes.get(target)
    if node is None or depth > 5:
        return False
    if node.type == "transfer":
        return True
    if node.waits_for_input:
        return False
    return any(_leads_to_person(ctx, t, depth + 1) for _, t in node.targets())


# --------------------------------------------------------------------------- say
@register_node
class SayNode(Node):
    """Play or show prompts, then go on."""

    type: Literal["say"] = "say"
    prompt: PromptSpec
    next: NodeId
    barge_in: bool = Field(True, description="a key ends the prompt early")
    target_fields: ClassVar = ("next",)
    prompt_fields: ClassVar = ("prompt",)

    def enter(self, ctx: Ctx) -> Transition:
        ctx.play(ctx.flow.prompt_ids(ctx.node_id), barge_in=self.barge_in)
        ctx.add_summary(self)
        return Goto(self.next)


# ------------------------------------------------------------ input base (VoiceXML)
class InputNode(Node):
    """Shared form-loop semantics: tries, timeout, per-attempt prompts, exits."""

    prompt: PromptSpec
    prompts: list[PromptSpec] | None = Field(None, description="prompt per attempt (the last one repeats)")
    tries: int | None = Field(None, ge=1, le=10, description="attempts (default: settings.tries)")
    timeout: Seconds | None = Field(None, description="seconds to wait (default: settings.timeout)")
    noinput: NodeId | None = Field(None, description="node to go to on silence (default: re-prompt)")
    nomatch: NodeId | None = Field(None, description="node to go to on a wrong answer (default: re-prompt)")
    failure: NodeId | None = Field(None, description="node when tries are exhausted (default: settings.failure)")
    noinput_prompt: PromptSpec | None = None
    nomatch_prompt: PromptSpec | None = None
    global_keys: bool | list[Key] = Field(True, description="flow-level keys active here: all, none or a list")

    waits_for_input: ClassVar = True
    prompt_fields: ClassVar = ("prompt", "prompts", "noinput_prompt", "nomatch_prompt")

    def targets(self):
        yield from super().targets()
        for name in ("noinput", "nomatch", "failure"):
            value = getattr(self, name)
            if value:
                yield name, value

    # -- helpers
    def tries_for(self, ctx: Ctx) -> int:
        return self.tries or ctx.flow.settings.tries

    def timeout_for(self, ctx: Ctx) -> float:
        return self.timeout or ctx.flow.settings.timeout

    def active_global_keys(self, ctx: Ctx) -> dict[str, str]:
        keys = ctx.flow.settings.global_keys
        if self.global_keys is True:
            return dict(keys)
        if self.global_keys is False:
            return {}
        return {k: v for k, v in keys.items() if k in self.global_keys}

    def attempt_prompts(self, ctx: Ctx) -> tuple[str, ...]:
        if self.prompts:
            idx = min(ctx.state.get("attempt", 1), len(self.prompts)) - 1
            return ctx.flow.prompt_ids(ctx.node_id, f"prompts.{idx}")
        return ctx.flow.prompt_ids(ctx.node_id, "prompt")

    def expect(self, ctx: Ctx) -> Expect:  # pragma: no cover - abstract
        raise NotImplementedError

    def prompt_and_wait(self, ctx: Ctx, preface: tuple[str, ...] = ()) -> Transition:
        ctx.play(preface)
        ctx.play(self.attempt_prompts(ctx))
        return Wait(self.expect(ctx))

    def enter(self, ctx: Ctx) -> Transition:
        ctx.reset_counters()
        ctx.push_history()
        return self.prompt_and_wait(ctx)

    def _preface(self, ctx: Ctx, field_name: str, default: str | None) -> tuple[str, ...]:
        ids = ctx.flow.prompt_ids(ctx.node_id, field_name)
        if ids:
            return ids
        return (default,) if default else ()

    def retry(self, ctx: Ctx, preface: tuple[str, ...]) -> Transition:
        ctx.state["attempt"] = ctx.state.get("attempt", 1) + 1
        if ctx.state["attempt"] > self.tries_for(ctx):
            target = self.failure or ctx.flow.settings.failure
            ctx.emit("failure", tries=self.tries_for(ctx))
            ctx.set_reason("tries", self)
            if target:
                return Goto(target)
            return End("failed", "tries exhausted")
        return self.prompt_and_wait(ctx, preface)

    def on_input(self, ctx: Ctx, inp: Input) -> Transition:
        if inp.mode == "noinput" or (inp.mode in ("dtmf", "text") and inp.value in ("", None)):
            ctx.state["noinput"] = ctx.state.get("noinput", 0) + 1
            ctx.emit("noinput", attempt=ctx.state.get("attempt", 1))
            if self.noinput:
                return Goto(self.noinput)
            return self.retry(ctx, self._preface(ctx, "noinput_prompt", ctx.flow.settings.noinput_prompt))
        if inp.mode in ("dtmf", "tap", "text") and isinstance(inp.value, str):
            meaning = self.global_meaning(ctx, inp.value)
            if meaning is not None:
                return self.global_key(ctx, inp.value, meaning)
        return self.handle(ctx, inp)

    def global_meaning(self, ctx: Ctx, value: str) -> str | None:
        return self.active_global_keys(ctx).get(value)

    def global_key(self, ctx: Ctx, key: str, target: str) -> Transition:
        if target == "repeat":
            ctx.emit("global_key", key=key, meaning="repeat")
            return self.prompt_and_wait(ctx)
        if target == "back":
            ctx.emit("global_key", key=key, meaning="back")
            hist = ctx.state.setdefault("history", [])
            if hist and hist[-1] == ctx.node_id:
                hist.pop()
            if hist:
                return Goto(hist.pop())
            return self.prompt_and_wait(ctx)
        meaning = "agent" if _leads_to_person(ctx, target) else "goto"
        ctx.emit("global_key", key=key, meaning=meaning, target=target)
        if meaning == "agent":
            ctx.set_reason("asked", self)
        return Goto(target)

    def no_match(self, ctx: Ctx, reason: str, value: Any = None) -> Transition:
        ctx.state["nomatch"] = ctx.state.get("nomatch", 0) + 1
        ctx.emit("nomatch", attempt=ctx.state.get("attempt", 1), reason=reason, value=value)
        if self.nomatch:
            return Goto(self.nomatch)
        return self.retry(ctx, self._preface(ctx, "nomatch_prompt", ctx.flow.settings.nomatch_prompt))

    def handle(self, ctx: Ctx, inp: Input) -> Transition:  # pragma: no cover - abstract
        raise NotImplementedError


# -------------------------------------------------------------------------- menu
class MenuChoice(Strict):
    key: Key
    label: Text = Field(description="button text and the summary's words for this choice")
    keywords: dict[str, list[str]] = Field(default_factory=dict, description="spoken words per language")
    next: NodeId


@register_node
class MenuNode(Listening, InputNode):
    """Choices by key, spoken keyword or tap."""

    type: Literal["menu"] = "menu"
    choices: list[MenuChoice] = Field(min_length=1)
    speech: bool = Field(False, description="also listen for the choices' keywords")
    prompt_fields: ClassVar = InputNode.prompt_fields + SPEECH_PROMPT_FIELDS

    def grammar(self, ctx: Ctx) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple((ch.key, tuple(ch.keywords[ctx.lang])) for ch in self.choices if ch.keywords.get(ctx.lang))

    def phrase_owners(self):
        return ((f"choice {ch.key!r}", ch.keywords) for ch in self.choices)

    def heard_label(self, ctx: Ctx, value: Any, utterance: str | None) -> str:
        for ch in self.choices:
            if ch.key == value:
                return ctx.flow.text(ch.label, ctx.lang)
        return super().heard_label(ctx, value, utterance)

    def targets(self):
        yield from super().targets()
        for i, ch in enumerate(self.choices):
            yield f"choices.{i}.next", ch.next

    @field_validator("choices")
    @classmethod
    def _unique_keys(cls, value: list[MenuChoice]) -> list[MenuChoice]:
        seen: set[str] = set()
        for ch in value:
            if ch.key in seen:
                raise ValueError(f"key {ch.key!r} is used by two choices")
            seen.add(ch.key)
        return value

    def global_meaning(self, ctx: Ctx, value: str) -> str | None:
        if any(ch.key == value for ch in self.choices):
            return None  # a choice on this key wins over the flow-level key
        return super().global_meaning(ctx, value)

    def expect(self, ctx: Ctx) -> Expect:
        choices = tuple(
            Choice(ch.key, ctx.flow.text(ch.label, ctx.lang), tuple(ch.keywords.get(ctx.lang, ())))
            for ch in self.choices
        )
        return Expect(
            "choice",
            ctx.node_id,
            timeout=self.timeout_for(ctx),
            choices=choices,
            global_keys=tuple(k for k in self.active_global_keys(ctx) if k not in {c.key for c in choices}),
            speech=self.speech,
            attempt=ctx.state.get("attempt", 1),
            listen=self.listen_for(ctx) if self.speech and self.grammar(ctx) else None,
        )

    def handle(self, ctx: Ctx, inp: Input) -> Transition:
        value = inp.value if isinstance(inp.value, str) else None
        for ch in self.choices:
            if value == ch.key:
                label = ctx.flow.text(ch.label, ctx.flow.summary_language)
                ctx.emit("choice", key=ch.key, label=label, mode=inp.mode)
                ctx.add_summary(self, choice=label)
                return Goto(ch.next)
        return self.no_match(ctx, "not a choice", value)


# ------------------------------------------------------------------------- input
@register_node
class InputDigitsNode(InputNode):
    """Collect digits with length, pattern and checksum validation."""

    type: Literal["input"] = "input"
    var: VarName = Field(description="variable that receives the digits")
    min_length: int = Field(1, ge=1, le=64)
    max_length: int = Field(20, ge=1, le=64)
    pattern: str | None = Field(None, description="regular expression the whole entry must match")
    checksum: Literal["luhn", "cn_resident_id"] | None = None
    star_as_x: bool = Field(False, description="'*' stands for the letter X (resident ID check character)")
    mask: bool = Field(False, description="keep the value out of logs, trail and agent views")
    terminator: Key = "#"
    next: NodeId
    target_fields: ClassVar = ("next",)

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _lengths(self) -> "InputDigitsNode":
        if self.min_length > self.max_length:
            raise ValueError("min_length is larger than max_length")
        return self

    def expect(self, ctx: Ctx) -> Expect:
        return Expect(
            "digits",
            ctx.node_id,
            timeout=self.timeout_for(ctx),
            min_length=self.min_length,
            max_length=self.max_length,
            terminator=self.terminator,
            global_keys=tuple(self.active_global_keys(ctx)),
            mask=self.mask,
            attempt=ctx.state.get("attempt", 1),
        )

    def validate_value(self, value: str) -> str | None:
        """None when valid, else the reason (shown inline on the visual IVR)."""
        if not (self.min_length <= len(value) <= self.max_length):
            return "length"
        if self.pattern and not re.fullmatch(self.pattern, value):
            return "pattern"
        if self.checksum and not CHECKSUMS[self.checksum](value):
            return "checksum"
        return None

    def handle(self, ctx: Ctx, inp: Input) -> Transition:
        value = str(inp.value or "").strip().rstrip(self.terminator)
        if self.star_as_x:
            value = value.replace("*", "X")
        value = value.upper() if self.star_as_x else value
        shown = expr.mask(value) if self.mask else value
        reason = self.validate_value(value)
        if reason:
            return self.no_match(ctx, reason, shown)
        ctx.set_var(self.var, value, masked=self.mask)
        ctx.emit("input_ok", var=self.var, value=shown, mode=inp.mode)
        ctx.add_summary(self)
        return Goto(self.next)


# ---------------------------------------------------------------------- language
class LanguageChoice(Strict):
    key: Key
    language: str
    label: Text | None = None


@register_node
class LanguageNode(InputNode):
    """Let the caller choose the language; on failure keep the current one."""

    type: Literal["language"] = "language"
    choices: list[LanguageChoice] = Field(min_length=1)
    next: NodeId
    target_fields: ClassVar = ("next",)

    def expect(self, ctx: Ctx) -> Expect:
        return Expect(
            "choice",
            ctx.node_id,
            timeout=self.timeout_for(ctx),
            choices=tuple(
                Choice(c.key, ctx.flow.text(c.label, c.language) if c.label else c.language) for c in self.choices
            ),
            global_keys=tuple(self.active_global_keys(ctx)),
            attempt=ctx.state.get("attempt", 1),
        )

    def retry(self, ctx: Ctx, preface: tuple[str, ...]) -> Transition:
        if ctx.state.get("attempt", 1) + 1 > self.tries_for(ctx) and not self.failure:
            ctx.emit("failure", tries=self.tries_for(ctx), kept=ctx.lang)
            return Goto(self.next)
        return super().retry(ctx, preface)

    def handle(self, ctx: Ctx, inp: Input) -> Transition:
        for c in self.choices:
            if inp.value in (c.key, c.language):
                ctx.state["lang"] = c.language
                ctx.emit("language", language=c.language)
                ctx.add_summary(self)
                return Goto(self.next)
        return self.no_match(ctx, "not a choice", inp.value)


# ------------------------------------------------------------------------ lookup
@register_node
class LookupNode(Node):
    """Call the business backend over HTTP; results into variables; branch on failure."""

    type: Literal["lookup"] = "lookup"
    url: str = Field(description="template; relative URLs are resolved against the server's backend base URL")
    method: Literal["GET", "POST"] = "GET"
    query: dict[str, str] | None = Field(None, description="templates for query parameters")
    body: dict[str, str] | None = Field(None, description="templates for a JSON body (POST)")
    headers: dict[str, str] | None = None
    timeout: Seconds = Field(3.0, description="total seconds for all attempts")
    retries: int = Field(1, ge=0, le=5)
    assign: dict[VarName, str] = Field(default_factory=dict, description="variable: expression over `response`")
    on_status: dict[str, NodeId] = Field(default_factory=dict, description="HTTP status -> node, e.g. '404': not_found")
    prompt: PromptSpec | None = Field(None, description="said while waiting, e.g. 'one moment'")
    next: NodeId
    failure: NodeId

    target_fields: ClassVar = ("next", "failure")
    template_fields: ClassVar = ("summary", "url", "query", "body", "headers")
    prompt_fields: ClassVar = ("prompt",)

    def targets(self):
        yield from super().targets()
        for code, node in self.on_status.items():
            yield f"on_status.{code}", node

    def expressions(self):
        for name, value in self.assign.items():
            yield f"assign.{name}", value

    def enter(self, ctx: Ctx) -> Transition:
        ctx.play(ctx.flow.prompt_ids(ctx.node_id), barge_in=False)
        raw = ctx.scope(masked_view=False)

        def r(t: str) -> str:
            return expr.render(t, raw)

        try:
            params = {
                "name": ctx.node_id,
                "url": r(self.url),
                "method": self.method,
                "query": {k: r(v) for k, v in (self.query or {}).items()} or None,
                "json": {k: r(v) for k, v in (self.body or {}).items()} if self.body is not None else None,
                "headers": {k: r(v) for k, v in (self.headers or {}).items()} or None,
                "timeout": self.timeout,
                "retries": self.retries,
            }
        except expr.ExprError as exc:
            ctx.emit("lookup", name=ctx.node_id, ok=False, status=None, error=f"template: {exc}")
            return Goto(self.failure)
        return WaitAction(Action("lookup", params, await_result=True))

    def on_input(self, ctx: Ctx, inp: Input) -> Transition:
        result = inp.value if isinstance(inp.value, dict) else {}
        ok = bool(result.get("ok"))
        status = result.get("status")
        ctx.emit(
            "lookup",
            name=ctx.node_id,
            ok=ok,
            status=status,
            error=result.get("error"),
            latency_ms=result.get("latency_ms"),
        )
        target = self.on_status.get(str(status)) if status is not None else None
        if target:
            return Goto(target)
        if not ok:
            ctx.set_reason("lookup", self)
            return Goto(self.failure)
        response = result.get("data")
        for name, expression in self.assign.items():
            try:
                ctx.set_var(name, ctx.evaluate(expression, response=response))
            except expr.ExprError as exc:
                ctx.emit("error", where=f"assign {name}", message=str(exc))
                return Goto(self.failure)
        ctx.add_summary(self)
        return Goto(self.next)


# -------------------------------------------------------------------- set/branch
@register_node
class SetNode(Node):
    type: Literal["set"] = "set"
    vars: dict[VarName, Any] = Field(description="variable: expression (strings are expressions; quote text)")
    next: NodeId
    target_fields: ClassVar = ("next",)

    def expressions(self):
        for name, value in self.vars.items():
            if isinstance(value, str):
                yield f"vars.{name}", value

    def enter(self, ctx: Ctx) -> Transition:
        for name, value in self.vars.items():
            try:
                ctx.set_var(name, ctx.evaluate(value))
            except expr.ExprError as exc:
                ctx.emit("error", where=f"set {name}", message=str(exc))
        ctx.add_summary(self)
        return Goto(self.next)


class Case(Strict):
    when: str = Field(description="condition expression")
    next: NodeId


@register_node
class BranchNode(Node):
    type: Literal["branch"] = "branch"
    cases: list[Case] = Field(min_length=1)
    otherwise: NodeId = Field(alias="else", description="node when no condition holds")

    def targets(self):
        for i, c in enumerate(self.cases):
            yield f"cases.{i}.next", c.next
        yield "else", self.otherwise

    def expressions(self):
        for i, c in enumerate(self.cases):
            yield f"cases.{i}.when", c.when

    def enter(self, ctx: Ctx) -> Transition:
        for c in self.cases:
            try:
                if ctx.evaluate(c.when):
                    ctx.emit("branch", when=c.when, next=c.next)
                    ctx.add_summary(self)
                    return Goto(c.next)
            except expr.ExprError as exc:
                ctx.emit("error", where="branch", message=str(exc))
        ctx.emit("branch", when="else", next=self.otherwise)
        ctx.add_summary(self)
        return Goto(self.otherwise)


# ------------------------------------------------------------------------- hours
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


def _check_schedule(value: dict[str, list[str]]) -> dict[str, list[str]]:
    for day, spans in value.items():
        for span in spans:
            if not _SPAN.match(span):
                raise ValueError(f"{day}: {span!r} is not HH:MM-HH:MM")
    return value


def _check_dates(value: list[str]) -> list[str]:
    for d in value:
        try:
            dt.date.fromisoformat(d)
        except ValueError:
            raise ValueError(f"{d!r} is not an ISO date (YYYY-MM-DD)") from None
    return value


# Business-hours fields shared by the nodes that know opening times (hours, callback).
TimeZoneName = Annotated[str, AfterValidator(_check_timezone)]
WeeklySchedule = Annotated[
    dict[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], list[str]], AfterValidator(_check_schedule)
]
HolidayDates = Annotated[list[str], AfterValidator(_check_dates)]


@register_node
class HoursNode(Node):
    """Open or closed by weekly schedule, time zone and holiday dates."""

    type: Literal["hours"] = "hours"
    timezone: TimeZoneName = "Asia/Shanghai"
    schedule: WeeklySchedule = Field(description="day -> list of 'HH:MM-HH:MM'")
    holidays: HolidayDates = Field(default_factory=list, description="ISO dates when closed all day")
    open: NodeId
    closed: NodeId
    target_fields: ClassVar = ("open", "closed")

    def is_open(self, now: dt.datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        if local.date().isoformat() in self.holidays:
            return False
        hm = local.strftime("%H:%M")
        for span in self.schedule.get(_DAYS[local.weekday()], []):
            start, end = span.split("-")
            if start <= hm < end:
                return True
        return False

    def enter(self, ctx: Ctx) -> Transition:
        is_open = self.is_open(ctx.now)
        ctx.emit("hours", open=is_open)
        ctx.add_summary(self, open=is_open)
        return Goto(self.open if is_open else self.closed)


# ---------------------------------------------------------------------- transfer
@register_node
class TransferNode(Node):
    """To a queue or an extension, carrying the trail."""

    type: Literal["transfer"] = "transfer"
    queue: str | None = Field(None, description="Asterisk queue name (template)")
    extension: str | None = Field(None, description="dial string, e.g. PJSIP/1001 (template)")
    priority: Any = Field(0, description="queue priority: a number or an expression")
    reason: Text | None = Field(None, description="why the caller goes to a person (template, shown on the pop)")
    prompt: PromptSpec | None = None
    timeout: Seconds = Field(300, description="seconds to wait for an agent")
    next: NodeId | None = Field(None, description="where the call continues after the agent hangs up (e.g. a survey)")
    failure: NodeId | None = Field(None, description="when nobody answers or the queue fails")
    callback: NodeId | None = Field(None, description="when a caller waiting in the queue asks to be called back "
                                                      "(key 1; e.g. a `callback` node)")

    target_fields: ClassVar = ("next", "failure", "callback")
    template_fields: ClassVar = ("summary", "queue", "extension", "reason")
    prompt_fields: ClassVar = ("prompt",)
    waits_for_input: ClassVar = True

    @model_validator(mode="after")
    def _one_target(self) -> "TransferNode":
        if bool(self.queue) == bool(self.extension):
            raise ValueError("give exactly one of queue or extension")
        return self

    def expressions(self):
        if isinstance(self.priority, str):
            yield "priority", self.priority

    def enter(self, ctx: Ctx) -> Transition:
        ctx.play(ctx.flow.prompt_ids(ctx.node_id), barge_in=False)
        try:
            priority = int(ctx.evaluate(self.priority) or 0)
        except (expr.ExprError, TypeError, ValueError):
            priority = 0
        if self.reason:
            ctx.state["reason"] = ctx.render(ctx.flow.text(self.reason, ctx.flow.summary_language))
        elif not ctx.state.get("reason"):
            ctx.set_reason("flow", self)
        reason = ctx.state["reason"]
        queue = ctx.render(self.queue).strip() if self.queue else None
        extension = ctx.render(self.extension).strip() if self.extension else None
        if not (queue or extension):
            ctx.emit("error", where="transfer", message="the queue or extension template rendered empty")
            return End("error", "transfer target is empty")
        params = {
            "queue": queue,
            "extension": extension,
            "priority": priority,
            "reason": reason,
            "timeout": self.timeout,
            "language": ctx.lang,
        }
        if self.callback and queue:
            params["callback_offer"] = True
        ctx.emit("transfer", **params)
        ctx.add_summary(self)
        return WaitAction(Action("transfer", params, await_result=True))

    def on_input(self, ctx: Ctx, inp: Input) -> Transition:
        result = inp.value if isinstance(inp.value, dict) else {}
        status = result.get("status", "answered")
        ctx.emit("transfer_result", **result)
        if status == "callback":
            if self.callback:
                return Goto(self.callback)
            status = "failed"
        if status in ("failed", "noanswer", "timeout") and self.failure:
            return Goto(self.failure)
        if status in ("continue", "answered", "ended"):
            ctx.state["talked_to_person"] = True
        if status == "continue" and self.next:
            return Goto(self.next)
        return End("transfer", ctx.state.get("reason"))


# ------------------------------------------------------------------------ hangup
@register_node
class HangupNode(Node):
    type: Literal["hangup"] = "hangup"
    prompt: PromptSpec | None = None
    outcome: str = Field("completed", description="how the session is counted: completed, abandoned ... "
                         "(a call that talked to a person, e.g. before a survey, counts as transfer unless set here)")
    prompt_fields: ClassVar = ("prompt",)

    def enter(self, ctx: Ctx) -> Transition:
        ctx.play(ctx.flow.prompt_ids(ctx.node_id), barge_in=False)
        ctx.add_summary(self)
        if ctx.state.get("talked_to_person") and "outcome" not in self.model_fields_set:
            return End("transfer")
        return End(self.outcome)


# ---------------------------------------------------------------- goto/subflow
@register_node
class GotoNode(Node):
    type: Literal["goto"] = "goto"
    target: NodeId
    target_fields: ClassVar = ("target",)

    def enter(self, ctx: Ctx) -> Transition:
        ctx.add_summary(self)
        return Goto(self.target)


@register_node
class SubflowNode(Node):
    """Run another flow (by id); its `return` node comes back to `next`."""

    type: Literal["subflow"] = "subflow"
    flow: str = Field(description="id of the flow to run")
    next: NodeId
    target_fields: ClassVar = ("next",)

    def enter(self, ctx: Ctx) -> Transition:
        ctx.add_summary(self)
        return ctx.engine.enter_subflow(ctx, self.flow, self.next)


@register_node
class ReturnNode(Node):
    """End a subflow and go back to the caller flow's `next` (at top level: hang up)."""

    type: Literal["return"] = "return"

    def enter(self, ctx: Ctx) -> Transition:
        ctx.add_summary(self)
        return ctx.engine.leave_subflow(ctx)


# Node types of feature packages: imported here so that every loader (the
# server, ``ivr validate``, ``ivr call``, tests) knows them.
from visual_ivr import nodes as _visual_nodes  # noqa: E402,F401  (offer_visual, guide)
from ivr.handoff import nodes as _handoff_nodes  # noqa: E402,F401  (survey)
from callback import nodes as _callback_nodes  # noqa: E402,F401  (callback)
