"""Flow model: settings, prompts, the node base classes and the node registry.

A node type is one small pydantic model registered by name with
:func:`register_node`; its fields are the YAML fields (unknown ones are
rejected), and its methods are its behaviour in the engine. Other packages
add node types the same way (``ask``, ``offer_visual``, ``callback`` ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Annotated, ClassVar, Iterator, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

if TYPE_CHECKING:  # pragma: no cover
    from ivr.engine.context import Ctx, Transition
    from ivr.engine.types import Input

LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Z][a-zA-Z]{1,3})?$")
ID_RE = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


def _keystr(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    return value


Key = Annotated[
    str,
    BeforeValidator(_keystr),
    Field(pattern=r"^[0-9*#]$"),
    WithJsonSchema({
        "description": "one keypad key: 0-9, * or #",
        "anyOf": [{"type": "string", "pattern": "^[0-9*#]$"}, {"type": "integer", "minimum": 0, "maximum": 9}],
    }),
]
NodeId = Annotated[str, Field(pattern=ID_RE, description="id of a node in this flow")]
VarName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Seconds = Annotated[float, Field(gt=0, le=600, description="seconds")]
Text = Union[str, dict[str, str]]
"""A text for people: one string, or one per language (``{zh-CN: ..., en-US: ...}``)."""
PromptSpec = Union[str, list[str], dict[str, str]]
"""Prompt ids (one or a list) or inline text per language."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class PromptDef(Strict):
    """A prompt: text per language, optionally a human recording id."""

    model_config = ConfigDict(extra="allow", frozen=True)
    recording: str | None = Field(None, description="recordings/<lang>/<recording>.wav wins over TTS")

    def texts(self) -> dict[str, str]:
        return {k: v for k, v in (self.model_extra or {}).items()}


GlobalTarget = Annotated[str, Field(description="a node id, or 'repeat' or 'back'")]


class Settings(Strict):
    timeout: Seconds = Field(5.0, description="default seconds to wait for input")
    tries: int = Field(3, ge=1, le=10, description="default attempts before the failure exit")
    global_keys: dict[Key, GlobalTarget] = Field(
        default_factory=dict,
        description="keys that work everywhere: '0': agent (a node), '*': repeat, '#': back",
    )
    noinput_prompt: str | None = Field(None, description="prompt id played before a re-prompt after silence")
    nomatch_prompt: str | None = Field(None, description="prompt id played before a re-prompt after a wrong key")
    confirm_prompt: str | None = Field(None, description="prompt id asking to confirm a doubtful spoken answer ({{ heard }})")
    keypad_prompt: str | None = Field(None, description="prompt id said when speech cannot be used and keys are taken")
    failure: NodeId | None = Field(None, description="default node when tries are exhausted")
    agent_language: str | None = Field(None, description="language of handoff summaries (default: default_language)")
    currency: str = Field("CNY", description="default currency of the money filter (CNY, USD, EUR ...)")


class Node(Strict):
    """Base of every node. Subclasses set ``type`` and behaviour."""

    type: str
    label: Text | None = Field(None, description="human name (visual IVR, reports)")
    summary: str | None = Field(None, description="template appended to the handoff summary when the node completes")

    # --- class-level facts the loader and engine use ---
    waits_for_input: ClassVar[bool] = False
    target_fields: ClassVar[tuple[str, ...]] = ()  # fields holding node ids
    template_fields: ClassVar[tuple[str, ...]] = ("summary",)
    expression_fields: ClassVar[tuple[str, ...]] = ()
    prompt_fields: ClassVar[tuple[str, ...]] = ()

    # set by the loader: prompt ids per prompt field after inline prompts are named
    def targets(self) -> Iterator[tuple[str, str]]:
        """(field path, node id) for every node this one may go to."""
        for name in self.target_fields:
            value = getattr(self, name, None)
            if isinstance(value, str):
                yield name, value

    def templates(self) -> Iterator[tuple[str, str]]:
        for name in self.template_fields:
            value = getattr(self, name, None)
            if isinstance(value, str):
                yield name, value
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, str):
                        yield f"{name}.{k}", v

    def expressions(self) -> Iterator[tuple[str, str]]:
        for name in self.expression_fields:
            value = getattr(self, name, None)
            if isinstance(value, str):
                yield name, value

    # --- behaviour ---
    def enter(self, ctx: "Ctx") -> "Transition":  # pragma: no cover - abstract
        raise NotImplementedError

    def on_input(self, ctx: "Ctx", inp: "Input") -> "Transition":
        raise NotImplementedError(f"node type {self.type} does not take input")


NODE_TYPES: dict[str, type[Node]] = {}


def register_node(cls: type[Node]) -> type[Node]:
    """Class decorator: register a node type by the default of its ``type`` field."""
    name = cls.model_fields["type"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__}.type needs a Literal default")
    if name in NODE_TYPES and NODE_TYPES[name] is not cls:
        raise ValueError(f"node type {name!r} is already registered by {NODE_TYPES[name].__name__}")
    NODE_TYPES[name] = cls
    return cls


@dataclass
class Flow:
    """A loaded, validated flow. Treat as immutable."""

    id: str
    title: dict[str, str]
    languages: tuple[str, ...]
    default_language: str
    settings: Settings
    prompts: dict[str, PromptDef]
    start: str
    nodes: dict[str, Node]
    version: str
    path: str | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    # node id -> field -> tuple of prompt ids (inline prompts already named)
    node_prompts: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def prompt_ids(self, node_id: str, field_name: str = "prompt") -> tuple[str, ...]:
        return self.node_prompts.get(node_id, {}).get(field_name, ())

    def text(self, value: Text | None, lang: str) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        return value.get(lang) or value.get(self.default_language) or next(iter(value.values()), "")

    @property
    def summary_language(self) -> str:
        return self.settings.agent_language or self.default_language


Literalish = Literal  # re-export for node modules
