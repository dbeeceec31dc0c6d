"""Plain data shapes shared by the engine and every face.

Everything here is JSON-serialisable through ``to_dict``/``from_dict`` so a
session can be stored, moved between processes and continued on another face.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

InputMode = Literal["dtmf", "speech", "tap", "text", "noinput", "hangup", "result"]


@dataclass(frozen=True)
class Input:
    """One caller input, whatever the face: keys, speech, a tap, or an action result.

    ``mode`` says where it came from, ``value`` is the normalised value (digits,
    choice key, recognised keyword, action result dict), ``confidence`` is 0..1
    for speech (1.0 for keys and taps), ``utterance`` is the raw recognised text.
    """

    mode: InputMode
    value: Any = None
    confidence: float = 1.0
    utterance: str | None = None
    #: What the face knows beyond the answer, e.g. ``{"speech": {...}}``: how a
    #: recognition went (reason, grammar hits, latency) or why speech was not used.
    detail: dict[str, Any] | None = None

    @classmethod
    def dtmf(cls, digits: str) -> "Input":
        return cls("dtmf", digits)

    @classmethod
    def tap(cls, value: str) -> "Input":
        return cls("tap", value)

    @classmethod
    def speech(cls, value: str | None, confidence: float, utterance: str) -> "Input":
        return cls("speech", value, confidence, utterance)

    @classmethod
    def noinput(cls) -> "Input":
        return cls("noinput", None)

    @classmethod
    def hangup(cls, reason: str = "caller") -> "Input":
        return cls("hangup", reason)

    @classmethod
    def result(cls, value: dict[str, Any]) -> "Input":
        return cls("result", value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PromptOut:
    """A prompt to present: its id, rendered text and language.

    ``recording`` names a human recording id when the flow gives one. ``dynamic``
    is true when the text came from a template with variables (so audio for it
    must be rendered at call time rather than ahead of time).
    """

    id: str
    text: str
    lang: str
    recording: str | None = None
    dynamic: bool = False
    barge_in: bool = True


@dataclass(frozen=True)
class Choice:
    key: str
    label: str
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class Listen:
    """How a face listens for a spoken answer (``Expect.listen``).

    ``grammar`` pairs each answer value with the phrases that select it in
    ``lang`` (recognition is limited to them; anything else is no match); an
    empty grammar means free speech. Times are milliseconds (None: the
    server's defaults). ``hint`` prompts are said only when the caller can
    answer by voice ("or just say 'billing'"); ``keypad`` prompts when speech
    cannot be used right now and the question takes keys instead.
    """

    lang: str
    grammar: tuple[tuple[str, tuple[str, ...]], ...] = ()
    no_input_ms: int | None = None
    end_silence_ms: int | None = None
    max_speech_ms: int | None = None
    hint: tuple[PromptOut, ...] = ()
    keypad: tuple[PromptOut, ...] = ()

    @property
    def free(self) -> bool:
        """True for free speech (no grammar)."""
        return not self.grammar


@dataclass(frozen=True)
class Expect:
    """What the engine waits for.

    kind ``choice``: one key (or tap, or spoken keyword) among ``choices``;
    kind ``digits``: a digit string of ``min_length``..``max_length``;
    kind ``speech``: a free spoken answer (typed text on a screen), no keys;
    kind ``result``: the result of the single pending action (no caller input).
    ``global_keys`` are the flow-level keys active here (key -> meaning).
    ``listen`` says how to listen when the answer may be spoken.
    """

    kind: Literal["choice", "digits", "speech", "result"]
    node: str
    timeout: float = 5.0
    choices: tuple[Choice, ...] = ()
    min_length: int = 1
    max_length: int = 1
    terminator: str = "#"
    global_keys: tuple[str, ...] = ()
    mask: bool = False
    speech: bool = False
    attempt: int = 1
    listen: Listen | None = None

    @property
    def keys(self) -> str:
        """Every key that may end a prompt early (barge-in)."""
        if self.kind == "choice":
            return "".join(dict.fromkeys([c.key for c in self.choices] + list(self.global_keys)))
        if self.kind == "digits":
            return "0123456789*#"
        if self.kind == "speech":
            return "".join(self.global_keys)
        return ""


@dataclass(frozen=True)
class Action:
    """Something a face must carry out: ``lookup``, ``transfer``, ``hangup`` ...

    When ``await_result`` is true the engine waits for ``Input.result(...)``.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    await_result: bool = False


@dataclass(frozen=True)
class Event:
    """One entry of the trail, produced by the engine.

    Kinds: ``session_start``, ``node_enter``, ``prompt``, ``input``, ``noinput``,
    ``nomatch``, ``choice``, ``global_key``, ``lookup``, ``var_set``,
    ``summary``, ``transfer``, ``hangup``, ``session_end``, ``error``.
    ``data`` is plain JSON; masked values are already replaced.
    """

    kind: str
    node: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "data": self.data}


@dataclass
class Turn:
    state: dict[str, Any]
    prompts: list[PromptOut] = field(default_factory=list)
    expect: Expect | None = None
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.state.get("status") == "ended"

    @property
    def outcome(self) -> str | None:
        return self.state.get("outcome")

    @property
    def node(self) -> str | None:
        return self.state.get("node")
