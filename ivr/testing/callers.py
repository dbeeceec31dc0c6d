"""Scripted callers for the fake Asterisk that behave like the simulator's."""

from __future__ import annotations

from ivr.testing.fake_asterisk import CALLER_HANGUP, InputRequest, ScriptedCaller

INPUT_COMMANDS = ("WAIT FOR DIGIT", "GET DATA")


class SimLikeCaller(ScriptedCaller):
    """Follows its script; when the script is used up it hangs up at the next
    moment it is asked for input (a prompt that takes keys, WAIT FOR DIGIT,
    GET DATA), as ``ivr call --keys`` does. Prompts that take no keys (a
    transfer announcement, a goodbye) play to the end."""

    def __init__(self, inputs) -> None:
        super().__init__(inputs, hangup_when_done=False)

    async def peek(self, request: InputRequest):
        if not self.remaining and (request.accept or request.command in INPUT_COMMANDS):
            return CALLER_HANGUP
        return await super().peek(request)
