"""The terminal face: run a call with typed or scripted keys (``ivr call``)."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import wave
from typing import Any, Callable, TextIO

from ivr.engine import Expect, Input, Listen, PromptOut
from ivr.hearing import Heard, heard_text
from ivr.session import CallerGone, SessionInfo

SILENCE_TOKENS = {"-", "_", "silence"}
#: Answers spoken rather than pressed: ``say:<words>`` (typed words taken as
#: recognised, confidence 1.0) and ``wav:<file>`` (a recording run through the
#: recogniser).
SPEECH_PREFIXES = ("say:", "wav:")


def parse_keys(spec: str) -> list[str]:
    """``"1 2 110105199003071239#"`` -> one token per answer; ``-`` is silence.

    Shell-style quoting groups words: ``'1 "say:customer service" wav:answer.wav'``.
    """
    try:
        return shlex.split(spec)
    except ValueError as exc:
        raise ValueError(f"cannot read the answers {spec!r}: {exc}") from None


def is_speech_token(token: str) -> bool:
    return token.startswith(SPEECH_PREFIXES)


class SimFace:
    """Prompts as text; answers from a script of tokens or from the keyboard.

    A token answers one question. On a menu only its first key counts and the
    rest is kept for the next question, as a caller's presses would be. When
    the script runs out, the caller hangs up.
    """

    channel = "sim"

    def __init__(self, keys: list[str] | None = None, *, out: TextIO | None = None, quiet: bool = False,
                 transfer_status: str = "continue", read_line: Callable[[str], str] | None = None,
                 speech: Any = None, spoken: list[str] | None = None):
        self.keys = list(keys) if keys is not None else None
        self.out = out or sys.stdout
        self.quiet = quiet
        self.transfer_status = transfer_status
        self.read_line = read_line or input
        # ``speech`` (ivr.speech.SimSpeech) hears say:/wav: answers; ``spoken``
        # are answers (say:/wav: tokens) for the questions that listen, in order.
        self.speech = speech
        self.spoken = list(spoken or [])

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def _show(self, prompts: list[PromptOut]) -> None:
        for p in prompts:
            self._print(f"  🔊 {p.text}")

    async def present(self, prompts: list[PromptOut]) -> None:
        self._show(prompts)

    async def collect(self, prompts: list[PromptOut], expect: Expect) -> Input:
        self._show(prompts)
        listen = expect.listen
        if expect.kind == "choice":
            hint = " ".join(f"[{c.key}] {c.label}" for c in expect.choices)
        elif expect.kind == "speech":
            hint = "a spoken answer"
        else:
            hint = f"{expect.min_length}-{expect.max_length} digits, end with {expect.terminator}"
        if listen is not None:
            self._show(list(listen.hint))
            hint += f"; or say:WORDS / wav:FILE in {listen.lang}"
        if listen is not None and self.spoken:
            token: str | None = self.spoken.pop(0)
            self._print(f"  ({hint}) > {token}")
        else:
            token = await self._next_token(f"  ({hint}) > ")
        if token is None:
            raise CallerGone("caller")
        if token in SILENCE_TOKENS or token == "":
            return Input.noinput()
        if expect.kind == "speech" and not is_speech_token(token) and token not in expect.global_keys:
            token = "say:" + token  # typed words answer a spoken question
        if is_speech_token(token):
            if listen is None:
                self._print("  (this question does not listen for speech: nothing is heard)")
                return Input.noinput()
            heard = await self._hear(listen, token)
            if heard.reason in ("final", "maxtime"):
                self._print(f"  🎤 heard {heard.text!r} -> {heard.value!r} (confidence {heard.confidence:.2f})")
            return heard.to_input()
        if expect.kind == "speech" and not expect.choices:
            return Input.dtmf(token[0])  # a flow-level key
        if expect.kind == "choice" and len(token) > 1 and self.keys is not None:
            self.keys.insert(0, token[1:])
            token = token[0]
        if expect.kind == "digits":
            token = token.split(expect.terminator)[0] if token != expect.terminator else token
        return Input.dtmf(token)

    async def _hear(self, listen: Listen, token: str) -> Heard:
        kind, _, arg = token.partition(":")
        if kind == "say":
            return self.speech.hear_text(listen, arg) if self.speech else heard_text(listen, arg)
        why = self.speech.why_not(listen.lang) if self.speech else "speech recognition is not set up"
        if why:
            self._print(f"  (cannot recognise {arg}: {why})")
            return Heard("unavailable", source="wav")
        try:
            return await self.speech.hear_audio(listen, arg)
        except ValueError as exc:
            self._print(f"  (cannot recognise {arg}: {exc})")
            return Heard("unavailable", source="wav")

    async def record(self, params: dict[str, Any], session: SessionInfo) -> dict[str, Any]:
        """The ``record`` node: ``say:<words>`` is the message as text, ``wav:<file>`` a recording."""
        self._print(f"  ⏺ recording (up to {params.get('max_seconds')} s, {params.get('terminator')} ends it); "
                    "answer say:WORDS or wav:FILE")
        token = self.spoken.pop(0) if self.spoken else await self._next_token("  (message) > ")
        if token is None:
            raise CallerGone("caller")
        kind, _, arg = token.partition(":")
        if kind == "say" and arg.strip():
            return {"status": "recorded", "file": None, "seconds": None, "transcript": arg.strip(), "confidence": 1.0}
        if kind != "wav":
            return {"status": "empty", "file": None, "seconds": 0.0, "transcript": None}
        path = os.path.abspath(arg)
        try:
            with wave.open(path, "rb") as wav:
                seconds = round(wav.getnframes() / float(wav.getframerate()), 2)
        except (OSError, wave.Error, EOFError) as exc:
            self._print(f"  (cannot read {arg}: {exc})")
            return {"status": "failed", "reason": f"cannot read {arg}"}
        out: dict[str, Any] = {"status": "recorded", "file": path, "seconds": seconds, "transcript": None,
                               "confidence": None}
        if params.get("transcribe", True) and self.speech is not None:
            out.update(await self.speech.transcribe(path, str(params.get("lang") or "")))
        if out.get("transcript") is not None:
            self._print(f"  📝 transcript: {out['transcript']!r}")
        elif out.get("reason"):
            self._print(f"  (no transcript: {out['reason']})")
        return out

    async def _next_token(self, prompt: str) -> str | None:
        if self.keys is not None:
            if not self.keys:
                self._print("  (caller hangs up)")
                return None
            token = self.keys.pop(0)
            self._print(f"{prompt}{token}")
            return token
        try:
            line = await asyncio.to_thread(self.read_line, prompt)
        except EOFError:
            return None
        line = line.strip()
        if line.lower() in ("q", "quit", "hangup"):
            return None
        return line

    async def transfer(self, params: dict[str, Any], session: SessionInfo) -> dict[str, Any]:
        target = f"queue {params['queue']}" if params.get("queue") else f"extension {params.get('extension')}"
        self._print(f"  ☎ transfer to {target} (priority {params.get('priority', 0)})")
        self._print(f"    reason: {params.get('reason')}")
        self._print(f"    summary: {params.get('summary')}")
        result: dict[str, Any] = {"status": self.transfer_status}
        if params.get("queue"):
            result["queue"] = params["queue"]
        return result

    async def finish(self, outcome: str, session: SessionInfo) -> None:
        self._print(f"  (call ended: {outcome})")
