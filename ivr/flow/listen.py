"""Spoken answers on questions: confidence threshold, confirm step, speech prompts.

``menu`` (with ``speech: true``) and ``ask`` mix in :class:`Listening`. The
engine stays pure: a face returns ``Input("speech", value, confidence,
utterance, detail={"speech": {...}})`` and this module decides what the
answer means:

* a grammar answer at or above ``min_confidence`` is taken;
* below it, the caller is asked to confirm ("Did you say billing?", yes/no
  by voice or keys 1/2) — or, with ``confirm: false``, it is a wrong answer;
* no grammar phrase ("[unk]", nothing heard) is a wrong answer (no match);
* a ``speech`` trail event records every recognition (utterance, confidence,
  reason, grammar hits) and every fallback to keys (reason ``busy`` ...).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from ivr.engine.context import Ctx, Transition, Wait
from ivr.engine.types import Choice, Expect, Input, Listen, PromptOut
from ivr.flow import expr
from ivr.flow.model import PromptSpec, Seconds, Strict

__all__ = ["BUILTIN_TEXTS", "NO_WORDS", "SPEECH_PROMPT_FIELDS", "YES_WORDS", "Listening"]

#: Prompt fields every listening node adds to its ``prompt_fields``.
SPEECH_PROMPT_FIELDS: tuple[str, ...] = ("confirm_prompt", "speech_hint", "keypad_prompt")

#: Texts used when neither the node nor the flow's settings name a prompt,
#: by primary language subtag (English for any other language).
BUILTIN_TEXTS: dict[str, dict[str, str]] = {
    "confirm": {
        "zh": "您是说“{{ heard }}”吗？是请说“是”或按1，不是请说“不是”或按2。",
        "en": "Did you say {{ heard }}? Say yes or press 1, say no or press 2.",
        "ko": "{{ heard }}, 맞습니까? 맞으면 1번, 아니면 2번을 누르세요.",
    },
    "keypad": {
        "zh": "请按键选择。",
        "en": "Please use your keypad.",
        "ko": "번호를 눌러 선택해 주세요.",
    },
}
#: Yes/no words of the confirm step, by primary language subtag.
YES_WORDS: dict[str, tuple[str, ...]] = {
    "zh": ("是", "是的", "对", "对的", "确认"),
    "en": ("yes", "yeah", "correct", "right"),
    "ko": ("네", "예", "확인"),
}
NO_WORDS: dict[str, tuple[str, ...]] = {
    "zh": ("不是", "不对", "不"),
    "en": ("no", "nope", "wrong"),
    "ko": ("아니요", "아니"),
}
YES_KEY, NO_KEY = "1", "2"
_LABELS = {"zh": ("是", "不是"), "en": ("Yes", "No"), "ko": ("네", "아니요")}


def _primary(lang: str) -> str:
    return lang.lower().replace("_", "-").split("-", 1)[0]


def _phrase_key(phrase: str) -> str:
    """How two phrases are compared for duplicates (close to the recogniser's normalisation)."""
    return " ".join(unicodedata.normalize("NFKC", phrase).casefold().split())


def check_phrases(owners: Iterable[tuple[str, dict[str, list[str]]]]) -> None:
    """Raise ValueError when one phrase selects two different answers in one language."""
    seen: dict[tuple[str, str], str] = {}
    for owner, per_lang in owners:
        for lang, phrases in per_lang.items():
            for phrase in phrases:
                key = (lang, _phrase_key(phrase))
                if not key[1]:
                    raise ValueError(f"{owner}: empty keyword for {lang}")
                first = seen.setdefault(key, owner)
                if first != owner:
                    raise ValueError(f"keyword {phrase!r} ({lang}) is used by both {first} and {owner}")


def unquoted_booleans(value: Any) -> Any:
    """Refuse YAML's unquoted yes/no/on/off (read as true/false) in word lists, with a hint."""
    if isinstance(value, dict):
        for words in value.values():
            if isinstance(words, list) and any(isinstance(w, bool) for w in words):
                raise ValueError("YAML reads unquoted yes/no/on/off as true/false: quote the words, e.g. 'yes'")
    return value


def builtin_prompt(ctx: Ctx, name: str, **extra: Any) -> PromptOut:
    """A built-in prompt (``confirm``, ``keypad``) in the call's language."""
    texts = BUILTIN_TEXTS[name]
    raw = texts.get(_primary(ctx.lang), texts["en"])
    dynamic = expr.is_template(raw)
    text = ctx.render(raw, **extra) if dynamic else raw
    return PromptOut(f"speech_{name}", text, ctx.lang, None, dynamic, True)


def render_prompts(ctx: Ctx, ids: tuple[str, ...], **extra: Any) -> tuple[PromptOut, ...]:
    """Catalogue prompts as :class:`PromptOut` without presenting them (no trail event)."""
    return tuple(p for p in (ctx.prompt_out(pid, **extra) for pid in ids) if p is not None)


class Listening(Strict):
    """Fields and behaviour of questions that can be answered by voice.

    Mixed into a question node *before* ``InputNode``; the node supplies
    :meth:`grammar` and, if needed, :meth:`accept_speech` and :meth:`heard_label`.
    """

    min_confidence: float = Field(
        0.5, ge=0, le=1, description="a spoken answer below this confidence is confirmed (or, without confirm, refused)"
    )
    confirm: bool = Field(True, description="ask 'did you say …?' for doubtful answers instead of asking again")
    confirm_prompt: PromptSpec | None = Field(None, description="the confirm question; {{ heard }} is the answer heard")
    yes_words: dict[str, list[str]] = Field(default_factory=dict, description="words for 'yes' at the confirm step, per language")
    no_words: dict[str, list[str]] = Field(default_factory=dict, description="words for 'no' at the confirm step, per language")
    speech_hint: PromptSpec | None = Field(None, description="said after the question only when the caller can answer by voice")
    keypad_prompt: PromptSpec | None = Field(None, description="said when speech cannot be used now and keys are taken")
    end_silence: Seconds | None = Field(None, description="silence that ends a spoken answer (default: server setting)")
    max_speech: Seconds | None = Field(None, description="longest spoken answer (default: server setting)")

    listens: ClassVar[bool] = True

    # -- what the node provides ----------------------------------------------------

    def grammar(self, ctx: Ctx) -> tuple[tuple[str, tuple[str, ...]], ...]:  # pragma: no cover - abstract
        """(answer value, phrases) for the call's language; empty for free speech."""
        raise NotImplementedError

    def phrase_owners(self) -> Iterable[tuple[str, dict[str, list[str]]]]:
        """(owner name, keywords per language) for the duplicate check."""
        return ()

    def heard_label(self, ctx: Ctx, value: Any, utterance: str | None) -> str:
        """What the confirm question repeats back to the caller."""
        return str(utterance or value or "")

    def accept_speech(self, ctx: Ctx, inp: Input) -> Transition:
        """Take a (confident or confirmed) spoken answer."""
        return self.handle(ctx, inp)  # type: ignore[attr-defined]

    def without_speech(self, ctx: Ctx, reason: str) -> Transition:
        """Speech could not be used and the question has no keys (``ask`` overrides)."""
        return self.retry(ctx, ())  # type: ignore[attr-defined]

    @field_validator("yes_words", "no_words", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value: Any) -> Any:
        return unquoted_booleans(value)

    @model_validator(mode="after")
    def _phrases_are_unambiguous(self) -> Listening:
        check_phrases(self.phrase_owners())
        return self

    # -- building the question ------------------------------------------------------

    def _prompts(self, ctx: Ctx, field_name: str, setting: str | None, builtin: str | None,
                 **extra: Any) -> tuple[PromptOut, ...]:
        ids = ctx.flow.prompt_ids(ctx.node_id, field_name)
        if not ids and setting:
            pid = getattr(ctx.flow.settings, setting, None)
            ids = (pid,) if pid else ()
        if ids:
            return render_prompts(ctx, ids, **extra)
        return (builtin_prompt(ctx, builtin, **extra),) if builtin else ()

    def listen_for(self, ctx: Ctx, grammar: tuple[tuple[str, tuple[str, ...]], ...] | None = None) -> Listen:
        """How to listen on this question (``grammar`` defaults to :meth:`grammar`)."""
        return Listen(
            lang=ctx.lang,
            grammar=self.grammar(ctx) if grammar is None else grammar,
            no_input_ms=int(self.timeout_for(ctx) * 1000),  # type: ignore[attr-defined]
            end_silence_ms=int(self.end_silence * 1000) if self.end_silence else None,
            max_speech_ms=int(self.max_speech * 1000) if self.max_speech else None,
            hint=self._prompts(ctx, "speech_hint", None, None),
            keypad=self._prompts(ctx, "keypad_prompt", "keypad_prompt", "keypad"),
        )

    # -- answers ----------------------------------------------------------------------

    def on_input(self, ctx: Ctx, inp: Input) -> Transition:
        self.note_speech(ctx, inp)
        pending = ctx.state.pop("confirm", None)
        if pending and pending.get("node") == ctx.node_id:
            return self.on_confirm(ctx, inp, pending)
        if inp.mode == "speech":
            return self.on_speech(ctx, inp)
        return super().on_input(ctx, inp)  # type: ignore[misc]

    def enter(self, ctx: Ctx) -> Transition:
        ctx.state.pop("confirm", None)
        return super().enter(ctx)  # type: ignore[misc]

    def note_speech(self, ctx: Ctx, inp: Input) -> None:
        """The ``speech`` trail event: what was heard, or why speech was not used."""
        info = dict((inp.detail or {}).get("speech") or {})
        if not info and inp.mode != "speech":
            return
        spoken = inp.mode == "speech"
        data: dict[str, Any] = {
            "choice": inp.value if spoken else None,
            "utterance": inp.utterance if spoken else info.get("text", ""),
            "confidence": inp.confidence if spoken else float(info.get("confidence", 0.0)),
            "reason": info.pop("reason", "final"),
            "hits": list(info.pop("hits", [])),
            "threshold": self.min_confidence,
        }
        info.pop("text", None)
        info.pop("confidence", None)
        if inp.mode == "dtmf":
            data["key"] = inp.value
        data.update({k: v for k, v in info.items() if v is not None})
        ctx.emit("speech", **data)

    def on_speech(self, ctx: Ctx, inp: Input) -> Transition:
        reason = ((inp.detail or {}).get("speech") or {}).get("reason")
        if inp.value is None and reason in ("busy", "unavailable"):
            return self.without_speech(ctx, reason)
        if inp.value is None or inp.value == "":
            return self.no_match(ctx, "not understood", inp.utterance)  # type: ignore[attr-defined]
        if inp.confidence < self.min_confidence:
            if self.confirm:
                return self.ask_confirm(ctx, inp)
            return self.no_match(ctx, "low confidence", inp.utterance)  # type: ignore[attr-defined]
        return self.accept_speech(ctx, inp)

    # -- the confirm step -----------------------------------------------------------------

    def _words(self, ctx: Ctx, given: dict[str, list[str]], builtin: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        if ctx.lang in given:
            return tuple(given[ctx.lang])
        return builtin.get(_primary(ctx.lang), ())

    def ask_confirm(self, ctx: Ctx, inp: Input) -> Transition:
        heard = self.heard_label(ctx, inp.value, inp.utterance)
        ctx.state["confirm"] = {
            "node": ctx.node_id,
            "value": inp.value,
            "utterance": inp.utterance,
            "confidence": inp.confidence,
        }
        ctx.emit("confirm", value=inp.value, heard=heard, confidence=inp.confidence)
        for prompt in self._prompts(ctx, "confirm_prompt", "confirm_prompt", "confirm", heard=heard):
            ctx.prompts.append(prompt)
            ctx.emit("prompt", id=prompt.id, text=prompt.text, lang=prompt.lang)
        yes = self._words(ctx, self.yes_words, YES_WORDS)
        no = self._words(ctx, self.no_words, NO_WORDS)
        labels = _LABELS.get(_primary(ctx.lang), _LABELS["en"])
        grammar = tuple((k, w) for k, w in ((YES_KEY, yes), (NO_KEY, no)) if w)
        globals_ = tuple(k for k in self.active_global_keys(ctx) if k not in (YES_KEY, NO_KEY))  # type: ignore[attr-defined]
        return Wait(Expect(
            "choice",
            ctx.node_id,
            timeout=self.timeout_for(ctx),  # type: ignore[attr-defined]
            choices=(Choice(YES_KEY, labels[0], yes), Choice(NO_KEY, labels[1], no)),
            global_keys=globals_,
            speech=bool(grammar),
            attempt=ctx.state.get("attempt", 1),
            listen=self.listen_for(ctx, grammar) if grammar else None,
        ))

    def on_confirm(self, ctx: Ctx, inp: Input, pending: dict[str, Any]) -> Transition:
        if inp.mode in ("dtmf", "tap", "text") and isinstance(inp.value, str) and inp.value not in (YES_KEY, NO_KEY):
            meaning = self.active_global_keys(ctx).get(inp.value)  # type: ignore[attr-defined]
            if meaning is not None:
                return self.global_key(ctx, inp.value, meaning)  # type: ignore[attr-defined]
        if inp.mode == "noinput":
            answer = "silence"
        elif inp.value == YES_KEY and (inp.mode != "speech" or inp.confidence > 0):
            answer = "yes"
        elif inp.value == NO_KEY:
            answer = "no"
        else:
            answer = "other"
        ctx.emit("confirmed", value=pending.get("value"), answer=answer, mode=inp.mode)
        if answer != "yes":
            return self.no_match(ctx, "not confirmed", pending.get("utterance"))  # type: ignore[attr-defined]
        answer_input = Input("speech", pending.get("value"), float(pending.get("confidence") or 0.0),
                             pending.get("utterance"))
        return self.accept_speech(ctx, answer_input)
