"""The pure step engine: ``Engine.start`` / ``Engine.advance`` -> :class:`Turn`."""

from ivr.engine.context import EngineError
from ivr.engine.core import Engine, advance, public_state, start
from ivr.engine.types import Action, Choice, Event, Expect, Input, Listen, PromptOut, Turn

__all__ = ["Engine", "EngineError", "start", "advance", "public_state", "Action", "Choice", "Event", "Expect",
           "Input", "Listen", "PromptOut", "Turn"]
