"""Node types for spoken answers and recorded messages: ``ask`` and ``record``."""

from __future__ import annotations

import unicodedata
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ivr.engine.context import Ctx, End, Goto, Transition, WaitAction
from ivr.engine.types import Action, Choice, Expect, Input
from ivr.flow.listen import SPEECH_PROMPT_FIELDS, Listening, unquoted_booleans
from ivr.flow.model import Key, Node, NodeId, PromptSpec, Strict, Text, VarName, register_node
from ivr.flow.nodes import InputNode

__all__ = ["AskAnswer", "AskNode", "RecordNode"]


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# --------------------------------------------------------------------------- ask
class AskAnswer(Strict):
    value: str = Field(min_length=1, description="what the variable receives")
    keywords: dict[str, list[str]] = Field(description="phrases per language that give this answer")
    key: Key | None = Field(None, description="a key that gives the same answer (keypad, visual pages)")
    label: Text | None = Field(None, description="how the answer is named (confirm step, buttons); default: value")

    @field_validator("keywords", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value: Any) -> Any:
        return unquoted_booleans(value)


@register_node
class AskNode(Listening, InputNode):
    """A spoken answer into a variable: free speech, or limited to ``answers``."""

    type: Literal["ask"] = "ask"
    var: VarName = Field(description="variable that receives the answer")
    answers: list[AskAnswer] | None = Field(None, min_length=1, description="the answers the recogniser may give; "
                                            "none: free speech")
    no_speech: NodeId | None = Field(None, description="where to go when speech cannot be used and no key answers")
    next: NodeId
    target_fields: ClassVar = ("next", "no_speech")
    prompt_fields: ClassVar = InputNode.prompt_fields + SPEECH_PROMPT_FIELDS

    def phrase_owners(self):
        return ((f"answer {a.value!r}", a.keywords) for a in self.answers or ())

    def grammar(self, ctx: Ctx) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple((a.value, tuple(a.keywords[ctx.lang])) for a in self.answers or () if a.keywords.get(ctx.lang))

    def _label(self, ctx: Ctx, answer: AskAnswer) -> str:
        return ctx.flow.text(answer.label, ctx.lang) if answer.label else answer.value

    def heard_label(self, ctx: Ctx, value: Any, utterance: str | None) -> str:
        for a in self.answers or ():
            if a.value == value:
                return self._label(ctx, a)
        return str(utterance or value or "")

    def expect(self, ctx: Ctx) -> Expect:
        keyed = tuple(
            Choice(a.key, self._label(ctx, a), tuple(a.keywords.get(ctx.lang, ())))
            for a in self.answers or ()
            if a.key is not None
        )
        grammar = self.grammar(ctx)
        listen = self.listen_for(ctx, grammar) if grammar or not self.answers else None
        return Expect(
            "choice" if keyed else "speech",
            ctx.node_id,
            timeout=self.timeout_for(ctx),
            choices=keyed,
            global_keys=tuple(k for k in self.active_global_keys(ctx) if k not in {c.key for c in keyed}),
            speech=listen is not None,
            attempt=ctx.state.get("attempt", 1),
            listen=listen,
        )

    def global_meaning(self, ctx: Ctx, value: str) -> str | None:
        if any(a.key == value for a in self.answers or ()):
            return None
        return super().global_meaning(ctx, value)

    def without_speech(self, ctx: Ctx, reason: str) -> Transition:
        ctx.emit("no_speech", reason=reason)
        if self.no_speech:
            return Goto(self.no_speech)
        target = self.failure or ctx.flow.settings.failure
        if target:
            return Goto(target)
        return End("failed", "speech unavailable")

    def _find(self, ctx: Ctx, inp: Input) -> AskAnswer | None:
        value = inp.value if isinstance(inp.value, str) else None
        if value is None:
            return None
        for a in self.answers or ():
            if inp.mode == "speech" and a.value == value:
                return a
            if inp.mode in ("dtmf", "tap") and value in (a.key, a.value):
                return a
            if inp.mode == "text" and (_norm(value) in {_norm(p) for p in a.keywords.get(ctx.lang, ())}
                                       or value == a.value):
                return a
        return None

    def handle(self, ctx: Ctx, inp: Input) -> Transition:
        if self.answers:
            answer = self._find(ctx, inp)
            if answer is None:
                return self.no_match(ctx, "not an answer", inp.value)
            value, label = answer.value, self._label(ctx, answer)
        else:
            if inp.mode not in ("speech", "text") or not str(inp.value or "").strip():
                return self.no_match(ctx, "not a spoken answer", inp.value)
            value = label = str(inp.value).strip()
        ctx.set_var(self.var, value)
        ctx.emit("input_ok", var=self.var, value=value, mode=inp.mode)
        ctx.add_summary(self, answer=label)
        return Goto(self.next)


# ------------------------------------------------------------------------ record
@register_node
class RecordNode(Node):
    """Record a message (voicemail, "describe the fault"), transcribe it for the agent."""

    type: Literal["record"] = "record"
    prompt: PromptSpec | None = Field(None, description="said before the beep")
    var: VarName | None = Field(None, description="variable that receives the transcript")
    max_seconds: int = Field(60, ge=1, le=600, description="longest message")
    end_silence: int = Field(3, ge=0, le=60, description="seconds of silence that end the message (0: off)")
    beep: bool = Field(True, description="a beep before recording starts")
    terminator: Key = Field("#", description="key that ends the message")
    transcribe: bool = Field(True, description="run the message through the speech recogniser")
    next: NodeId
    empty: NodeId | None = Field(None, description="where to go when nothing was recorded (default: next)")
    target_fields: ClassVar = ("next", "empty")
    prompt_fields: ClassVar = ("prompt",)

    def enter(self, ctx: Ctx) -> Transition:
        ctx.play(ctx.flow.prompt_ids(ctx.node_id), barge_in=False)
        params = {
            "name": ctx.node_id,
            "lang": ctx.lang,
            "max_seconds": self.max_seconds,
            "silence_s": self.end_silence,
            "beep": self.beep,
            "terminator": self.terminator,
            "transcribe": self.transcribe,
        }
        return WaitAction(Action("record", params, await_result=True))

    def on_input(self, ctx: Ctx, inp: Input) -> Transition:
        result = inp.value if isinstance(inp.value, dict) else {}
        status = str(result.get("status") or "failed")
        transcript = result.get("transcript")
        ctx.emit(
            "record",
            file=result.get("file"),
            seconds=result.get("seconds"),
            transcript=transcript,
            confidence=result.get("confidence"),
            status=status,
            **({"reason": result["reason"]} if result.get("reason") else {}),
        )
        if self.var and transcript is not None:
            ctx.set_var(self.var, transcript)
        if status == "hangup":
            ctx.add_summary(self, transcript=transcript or "")
            ctx.emit("hangup", reason="caller")
            return End("hangup", "caller")
        if status != "recorded" and self.empty:
            return Goto(self.empty)
        ctx.add_summary(self, transcript=transcript or "")
        return Goto(self.next)
