"""Test helpers: a fake caller who stays on the line while on screen."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ivr.testing.fake_asterisk import CALLER_HANGUP, SILENCE, Caller, Input, InputRequest, ScriptedCaller


class HoldingCaller(Caller):
    """Presses the scripted keys, then waits on the line like a person would:
    ``WAIT FOR DIGIT n`` takes up to n ms of real time. Meanwhile a test may
    :meth:`press` a key, :meth:`hang_up`, or set :attr:`moved` (an AMI
    Redirect took the channel away: the pending command returns -1, as in
    ``agi-redirect.json``)."""

    def __init__(self, keys: Iterable[str] = ()):
        self.script = ScriptedCaller(list(keys))
        self._extra: asyncio.Queue[Input] = asyncio.Queue()
        self.moved = asyncio.Event()
        self.waits: list[InputRequest] = []
        self._pending: Input | None = None

    def press(self, key: str) -> None:
        self._extra.put_nowait(key)

    def hang_up(self) -> None:
        self._extra.put_nowait(CALLER_HANGUP)

    async def peek(self, request: InputRequest) -> Input | None:
        if self._pending is not None:
            return self._pending
        if self.script.remaining:
            return await self.script.peek(request)
        if self.moved.is_set():
            self._pending = CALLER_HANGUP
            return self._pending
        if request.command != "WAIT FOR DIGIT" or not request.timeout_ms:
            return None  # prompts play to the end
        self.waits.append(request)
        get = asyncio.ensure_future(self._extra.get())
        moved = asyncio.ensure_future(self.moved.wait())
        done, _ = await asyncio.wait({get, moved}, timeout=request.timeout_ms / 1000,
                                     return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            moved.cancel()
            self._pending = get.result()
            return self._pending
        get.cancel()
        if moved in done:
            self._pending = CALLER_HANGUP
            return self._pending
        moved.cancel()
        self._pending = SILENCE
        return self._pending

    def take(self) -> None:
        if self._pending is not None:
            self._pending = None
            return
        self.script.take()
