"""Test helpers that ship with the package (used by tests, ``ivr call --agi`` and benchmarks)."""

from ivr.testing.fake_asterisk import (
    CALLER_HANGUP,
    SILENCE,
    AppOutcome,
    Caller,
    FakeAsterisk,
    FakeCallResult,
    InputRequest,
    ReplayMismatch,
    ScriptedCaller,
    build_env,
    parse_args,
    replay_capture,
)

__all__ = [
    "CALLER_HANGUP",
    "SILENCE",
    "AppOutcome",
    "Caller",
    "FakeAsterisk",
    "FakeCallResult",
    "InputRequest",
    "ReplayMismatch",
    "ScriptedCaller",
    "build_env",
    "parse_args",
    "replay_capture",
]
