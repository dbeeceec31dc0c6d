"""What the faces need to know about speech, as plain data (no recogniser here).

A face that can listen is given a :class:`SpeechPort` (the composition root
builds one on :mod:`asr`, see :mod:`ivr.speech`). For a question whose
``Expect.listen`` is set the face opens a :class:`SpeechTurn`, runs it while
the caller talks, and turns the :class:`Heard` into the one input shape every
face returns: ``Input(mode, value, confidence, utterance)``, with how the
recognition went in ``Input.detail["speech"]``.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol

from ivr.engine.types import Input, Listen
from ivr.session import register_action

__all__ = ["Heard", "SpeechPort", "SpeechTurn", "heard_text", "with_speech"]

#: Reasons for which the audio link, not the caller, ended the recognition.
LINK_FAILURES = frozenset({"hangup", "unavailable", "no_audio"})


@dataclass(frozen=True)
class Heard:
    """The outcome of listening once.

    ``reason``: ``final`` / ``maxtime`` (something was said), ``silence``,
    ``dtmf`` (a key ended it, see ``dtmf``), ``hangup`` (the audio stream
    ended), ``no_audio`` (the audio link never came up), ``busy`` (all
    recognisers in use), ``unavailable`` (no model for the language).
    ``value`` is the grammar answer (the recognised text for free speech).
    """

    reason: str
    value: str | None = None
    text: str = ""
    confidence: float = 0.0
    dtmf: str | None = None
    hits: tuple[str, ...] = ()
    latency_ms: float | None = None
    audio_ms: float | None = None
    source: str | None = None

    def info(self) -> dict[str, Any]:
        """The ``detail["speech"]`` mapping (becomes the ``speech`` trail event)."""
        out: dict[str, Any] = {"reason": self.reason, "text": self.text, "confidence": self.confidence,
                               "hits": list(self.hits)}
        for name in ("dtmf", "latency_ms", "audio_ms", "source"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_input(self) -> Input:
        """The engine input for this outcome (link failures are the face's business)."""
        detail = {"speech": self.info()}
        if self.reason == "silence":
            return Input("noinput", None, 0.0, None, detail)
        if self.reason == "dtmf" and self.dtmf:
            return Input("dtmf", self.dtmf, 1.0, None, detail)
        if self.reason in ("final", "maxtime"):
            return Input("speech", self.value, self.confidence, self.text, detail)
        return Input("speech", None, 0.0, None, detail)


def with_speech(inp: Input, heard: Heard) -> Input:
    """``inp`` (a key, silence) annotated with why speech was not used or how it ended."""
    return dataclasses.replace(inp, detail={**(inp.detail or {}), "speech": heard.info()})


def _norm(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch if ch.isalnum() or ch == "'" or unicodedata.category(ch).startswith("M") else " "
                   for ch in text).split()


def heard_text(listen: Listen, text: str, *, source: str = "say") -> Heard:
    """Typed words taken as a recognition result with confidence 1.0.

    Under a grammar the text must consist of phrases of one answer (as the
    recogniser's matching does); free speech takes the text as it is.
    """
    words = _norm(text)
    if not words:
        return Heard("silence", source=source)
    if listen.free:
        return Heard("final", " ".join(words), " ".join(words), 1.0, source=source)
    phrases = {tuple(_norm(p)): value for value, group in listen.grammar for p in group if _norm(p)}
    longest = max((len(p) for p in phrases), default=1)
    found: list[str] = []
    hits: list[str] = []
    i = 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            value = phrases.get(tuple(words[i:i + n]))
            if value is not None:
                found.append(value)
                hits.append(" ".join(words[i:i + n]))
                i += n
                break
        else:
            found.append("")
            i += 1
    value = found[0] if found and all(v == found[0] for v in found) and found[0] else None
    return Heard("final", value, " ".join(words), 1.0, hits=tuple(hits), source=source)


class SpeechTurn(Protocol):
    """One recognition on a call, opened by :meth:`SpeechPort.open`."""

    #: ``audiosocket`` (run ``EXEC AudioSocket <exec_argument>``) or ``eagi`` (audio on fd 3).
    transport: str
    exec_argument: str | None

    @property
    def connected(self) -> bool:
        """True once the audio link is up."""

    async def run(self) -> Heard:
        """Listen until the end of the utterance (or silence, a key, the end of the audio)."""

    def dtmf(self, key: str) -> None:
        """A key arrived over AGI while listening."""

    async def close(self) -> None:
        """Give up: release the recogniser and the audio link (idempotent)."""


class SpeechPort(Protocol):
    """Speech for a face: listening on questions and transcribing recordings."""

    #: Seconds to wait for the audio link.
    connect_timeout: float

    def open(self, listen: Listen) -> SpeechTurn | str:
        """A turn, or why not: ``busy`` (no recogniser free) or ``unavailable`` (no model)."""

    async def transcribe(self, path: str, lang: str) -> dict[str, Any]:
        """Free recognition of a recorded file: ``{"transcript", "confidence", ...}``."""


@register_action("record")
async def record_action(driver: Any, face: Any, info: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The ``record`` node's action: the face records (and transcribes) a message.

    Registered here, next to the faces' speech types, so every process that
    has a voice or simulator face can run ``record`` nodes.
    """
    record = getattr(face, "record", None)
    if record is None:
        return {"status": "unsupported", "reason": f"the {face.channel} face cannot record"}
    return dict(await record(params, info))
