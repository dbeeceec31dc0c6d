"""The ``survey`` node: a short satisfaction survey after the agent hangs up.

Queue option ``c`` (``agi-queue_continue.json``) gives the call back to the
flow when the agent hangs up first; a transfer's ``next`` leads here.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ivr.engine.context import Ctx, Goto, Transition
from ivr.engine.types import Choice, Expect, Input
from ivr.flow.model import Key, NodeId, PromptSpec, register_node
from ivr.flow.nodes import InputNode

# Spoken scores, used when speech recognition is available on the call.
SPOKEN = {
    "zh-CN": {"1": ["一", "一分", "非常不满意"], "2": ["二", "两", "两分", "不满意"], "3": ["三", "三分", "一般"],
              "4": ["四", "四分", "满意"], "5": ["五", "五分", "非常满意"], "6": ["六"], "7": ["七"], "8": ["八"],
              "9": ["九"]},
    "en-US": {"1": ["one"], "2": ["two"], "3": ["three"], "4": ["four"], "5": ["five"], "6": ["six"],
              "7": ["seven"], "8": ["eight"], "9": ["nine"]},
}


@register_node
class SurveyNode(InputNode):
    """A score from 1 to ``scale`` by key (or by voice), recorded as a ``survey`` event."""

    type: Literal["survey"] = "survey"
    prompt: PromptSpec
    scale: int = Field(5, ge=2, le=9, description="highest score (keys 1..scale)")
    question: str = Field("satisfaction", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                          description="what was asked, for reports")
    speech: bool = Field(True, description="also take the spoken score when speech recognition is available")
    global_keys: bool | list[Key] = Field(False, description="flow-level keys active here (default: none)")
    thanks: PromptSpec | None = Field(None, description="said after a score")
    next: NodeId

    target_fields: ClassVar = ("next",)
    prompt_fields: ClassVar = ("prompt", "prompts", "noinput_prompt", "nomatch_prompt", "thanks")

    def expect(self, ctx: Ctx) -> Expect:
        spoken = SPOKEN.get(ctx.lang, {})
        choices = tuple(Choice(str(i), str(i), tuple(spoken.get(str(i), ()))) for i in range(1, self.scale + 1))
        return Expect("choice", ctx.node_id, timeout=self.timeout_for(ctx), choices=choices,
                      global_keys=tuple(k for k in self.active_global_keys(ctx) if not k.isdigit()
                                        or int(k) > self.scale),
                      speech=self.speech, attempt=ctx.state.get("attempt", 1))

    def handle(self, ctx: Ctx, inp: Input) -> Transition:
        value = inp.value if isinstance(inp.value, str) else None
        if value and value.isdigit() and 1 <= int(value) <= self.scale:
            data = {"score": int(value), "scale": self.scale, "question": self.question, "mode": inp.mode}
            if inp.mode == "speech":
                data.update(confidence=round(inp.confidence, 3), utterance=inp.utterance)
            ctx.emit("survey", **data)
            ctx.set_var("survey_score", int(value), quiet=True)
            ctx.add_summary(self, score=int(value))
            ctx.play(ctx.flow.prompt_ids(ctx.node_id, "thanks"), barge_in=False)
            return Goto(self.next)
        return self.no_match(ctx, "not a score", value)

    def retry(self, ctx: Ctx, preface: tuple[str, ...]) -> Transition:
        if ctx.state.get("attempt", 1) + 1 > self.tries_for(ctx):
            # no answer is an answer too: the survey never sends a caller to the flow's failure node
            ctx.emit("survey", score=None, scale=self.scale, question=self.question, mode="none",
                     skipped=True)
            return Goto(self.failure or self.next)
        return super().retry(ctx, preface)
