"""Node types of the visual IVR: ``offer_visual`` and ``guide``.

They are pure engine behaviour like every node; the I/O they ask for (texting
the link, holding the call while the caller is on screen) are the actions
``visual_link`` and ``visual_hold``, carried out by :mod:`visual_ivr.actions`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ivr.engine.context import Ctx, End, Goto, Transition, Wait, WaitAction
from ivr.engine.types import Action, Choice, Expect, Input, PromptOut
from ivr.flow import expr
from ivr.flow.model import Key, Node, NodeId, PromptSpec, Seconds, Text, register_node
from ivr.flow.nodes import InputNode
from visual_ivr import actions as _actions  # noqa: F401  (registers the actions' fallbacks)
from visual_ivr.phone import classify, mask_number

#: Set in the state of a session that is being driven by the visual IVR pages.
ON_SCREEN = "visual"


def _check_region(value: str) -> str:
    import phonenumbers

    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{value!r} is not a region code like CN or US")
    return value.upper()


# ----------------------------------------------------------------- offer_visual
@register_node
class OfferVisualNode(Node):
    """Text a mobile caller a link to continue on screen; hold the call meanwhile."""

    type: Literal["offer_visual"] = "offer_visual"
    mode: Literal["offer", "send"] = Field(
        "offer", description="offer: ask first (press `key`); send: text the link straight away")
    prompt: PromptSpec | None = Field(None, description="the offer, e.g. 'press 1 and we will text you a link'")
    key: Key = Field("1", description="the key that accepts the offer")
    timeout: Seconds | None = Field(None, description="seconds to wait for the key (default: settings.timeout)")
    sms: Text = Field(description="text message per language; a template that must use {{ link }}")
    sent_prompt: PromptSpec = Field(description="said once the link is sent: 'continue on your screen'")
    refused_prompt: PromptSpec | None = Field(None, description="said when no text could be sent (limits, gateway)")
    unavailable_prompt: PromptSpec | None = Field(
        None, description="said to landlines and withheld numbers (default: skip silently)")
    goodbye_prompt: PromptSpec | None = Field(
        None, description="said on the phone when the caller finished on screen (e.g. booked a callback)")
    page: NodeId | None = Field(None, description="node the page opens at (default: next)")
    next: NodeId = Field(description="where the flow goes on: declined, skipped, or back from the screen")
    region: str = Field("CN", description="country for numbers without a country code")
    hold_timeout: Seconds = Field(180, description="seconds without activity on the page before the call "
                                                   "resumes in voice")
    music: str = Field("default", pattern=r"^[A-Za-z0-9_-]+$", description="music-on-hold class while on screen")

    target_fields: ClassVar = ("next", "page")
    template_fields: ClassVar = ("summary", "sms")
    prompt_fields: ClassVar = ("prompt", "sent_prompt", "refused_prompt", "unavailable_prompt", "goodbye_prompt")
    waits_for_input: ClassVar = True

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return _check_region(value)

    @field_validator("sms")
    @classmethod
    def _uses_link(cls, value: Text) -> Text:
        texts = [value] if isinstance(value, str) else list(value.values())
        for text in texts:
            if "link" not in text or "{{" not in text:
                raise ValueError("the text message must contain the link: {{ link }}")
        return value

    @model_validator(mode="after")
    def _offer_has_prompt(self) -> "OfferVisualNode":
        if self.mode == "offer" and self.prompt is None:
            raise ValueError("mode 'offer' needs a prompt (the offer the caller accepts with the key)")
        return self

    def enter(self, ctx: Ctx) -> Transition:
        if ctx.state.get(ON_SCREEN):
            ctx.emit("offer_visual", status="on_screen")
            return Goto(self.next)
        line = classify(ctx.vars.get("caller"), self.region)
        if not line.is_mobile:
            ctx.emit("offer_visual", status="skipped", line=line.kind)
            ctx.play(ctx.flow.prompt_ids(ctx.node_id, "unavailable_prompt"), barge_in=False)
            return Goto(self.next)
        if self.mode == "send":
            ctx.emit("offer_visual", status="sending", to=mask_number(line.e164))
            return self._send(ctx, line.e164 or "")
        ctx.emit("offer_visual", status="offered", to=mask_number(line.e164))
        ctx.state["attempt"] = 1
        ctx.play(ctx.flow.prompt_ids(ctx.node_id, "prompt"))
        return Wait(Expect("choice", ctx.node_id, timeout=self.timeout or ctx.flow.settings.timeout,
                           choices=(Choice(self.key, ctx.flow.text(self.label, ctx.lang) or self.key),)))

    def _send(self, ctx: Ctx, e164: str) -> Transition:
        params = {
            "to": e164,
            "lang": ctx.lang,
            "sms": ctx.flow.text(self.sms, ctx.lang),
            "page": self.page or self.next,
            "node": ctx.node_id,
        }
        return WaitAction(Action("visual_link", params, await_result=True))

    def on_input(self, ctx: Ctx, inp: Input) -> Transition:
        if inp.mode == "result":
            result = inp.value if isinstance(inp.value, dict) else {}
            if result.get("kind") == "link":
                if result.get("status") == "sent":
                    ctx.play(ctx.flow.prompt_ids(ctx.node_id, "sent_prompt"), barge_in=False)
                    ctx.add_summary(self)
                    params = {"timeout": self.hold_timeout, "music": self.music, "node": ctx.node_id}
                    return WaitAction(Action("visual_hold", params, await_result=True))
                ctx.play(ctx.flow.prompt_ids(ctx.node_id, "refused_prompt"), barge_in=False)
                return Goto(self.next)
            ctx.emit("visual_hold", **{k: v for k, v in result.items() if k != "kind"})
            return Goto(self.next)
        line = classify(ctx.vars.get("caller"), self.region)
        if inp.value == self.key and line.e164:
            ctx.emit("offer_visual", status="accepted")
            return self._send(ctx, line.e164)
        ctx.emit("offer_visual", status="declined" if inp.mode != "noinput" else "noinput")
        return Goto(self.next)


# ------------------------------------------------------------------------ guide
GUIDE_LABELS = {
    "next": {"zh": "下一步", "en": "Next"},
    "done": {"zh": "完成", "en": "Done"},
    "previous": {"zh": "上一步", "en": "Previous step"},
}


def _label(name: str, lang: str) -> str:
    texts = GUIDE_LABELS[name]
    return texts.get(lang.split("-")[0], texts["en"])


@register_node
class GuideNode(InputNode):
    """A short step-by-step guide: one step at a time, 1 for the next, 2 for the previous."""

    type: Literal["guide"] = "guide"
    title: Text = Field(description="heading of the guide (page title on screen)")
    steps: list[Text] = Field(min_length=1, max_length=20, description="the steps, text per language "
                                                                      "(templates allowed)")
    next: NodeId | None = Field(None, description="after the last step (default: the session ends, completed)")

    target_fields: ClassVar = ("next",)
    template_fields: ClassVar = ("summary", "steps")

    def templates(self):
        yield from super().templates()
        for i, step in enumerate(self.steps):
            for lang, text in ([("", step)] if isinstance(step, str) else step.items()):
                yield f"steps.{i}" + (f".{lang}" if lang else ""), text

    def step_index(self, ctx: Ctx) -> int:
        return min(max(int(ctx.state.get("guide_step") or 0), 0), len(self.steps) - 1)

    def expect(self, ctx: Ctx) -> Expect:
        i = self.step_index(ctx)
        choices = [Choice("1", _label("done" if i == len(self.steps) - 1 else "next", ctx.lang))]
        if i > 0:
            choices.append(Choice("2", _label("previous", ctx.lang)))
        return Expect("choice", ctx.node_id, timeout=self.timeout_for(ctx), choices=tuple(choices),
                      global_keys=tuple(self.active_global_keys(ctx)), attempt=ctx.state.get("attempt", 1))

    def enter(self, ctx: Ctx) -> Transition:
        ctx.state["guide_step"] = 0
        ctx.reset_counters()
        ctx.push_history()
        ctx.play(self.attempt_prompts(ctx))  # the introduction, once
        return self.prompt_and_wait(ctx)

    def prompt_and_wait(self, ctx: Ctx, preface: tuple[str, ...] = ()) -> Transition:
        ctx.play(preface)
        i = self.step_index(ctx)
        raw = ctx.flow.text(self.steps[i], ctx.lang)
        try:
            text = ctx.render(raw) if expr.is_template(raw) else raw
        except expr.ExprError as exc:
            ctx.emit("error", where=f"guide step {i + 1}", message=str(exc))
            text = ""
        pid = f"{ctx.node_id}.steps.{i}"
        ctx.prompts.append(PromptOut(pid, text, ctx.lang, None, True, True))
        ctx.emit("prompt", id=pid, text=text, lang=ctx.lang)
        ctx.emit("guide_step", step=i + 1, of=len(self.steps))
        return Wait(self.expect(ctx))

    def handle(self, ctx: Ctx, inp: Input) -> Transition:
        i = self.step_index(ctx)
        if inp.value == "1":
            if i == len(self.steps) - 1:
                ctx.emit("guide_done", steps=len(self.steps))
                ctx.add_summary(self)
                ctx.state.pop("guide_step", None)
                return Goto(self.next) if self.next else End("completed")
            ctx.state["guide_step"] = i + 1
            ctx.state["attempt"] = 1
            return self.prompt_and_wait(ctx)
        if inp.value == "2" and i > 0:
            ctx.state["guide_step"] = i - 1
            ctx.state["attempt"] = 1
            return self.prompt_and_wait(ctx)
        return self.no_match(ctx, "not a choice", inp.value)
