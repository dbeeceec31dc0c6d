"""The terminal face: run a call with typed or scripted keys (``ivr call``)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable, TextIO

from ivr.engine import Expect, Input, PromptOut
from ivr.session import CallerGone, SessionInfo

SILENCE_TOKENS = {"-", "_", "silence"}


def parse_keys(spec: str) -> list[str]:
    """``"1 2 110105199003071239#"`` -> one token per answer; ``-`` is silence."""
    return spec.split()


class SimFace:
    """Prompts as text; answers from a script of tokens or from the keyboard.

    A token answers one question. On a menu only its first key counts and the
    rest is kept for the next question, as a caller's presses would be. When
    the script runs out, the caller hangs up.
    """

    channel = "sim"

    def __init__(self, keys: list[str] | None = None, *, out: TextIO | None = None, quiet: bool = False,
                 transfer_status: str = "continue", read_line: Callable[[str], str] | None = None):
        self.keys = list(keys) if keys is not None else None
        self.out = out or sys.stdout
        self.quiet = quiet
        self.transfer_status = transfer_status
        self.read_line = read_line or input

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
        if expect.kind == "choice":
            hint = " ".join(f"[{c.key}] {c.label}" for c in expect.choices)
        else:
            hint = f"{expect.min_length}-{expect.max_length} digits, end with {expect.terminator}"
        token = await self._next_token(f"  ({hint}) > ")
        if token is None:
            raise CallerGone("caller")
        if token in SILENCE_TOKENS or token == "":
            return Input.noinput()
        if expect.kind == "choice" and len(token) > 1 and self.keys is not None:
            self.keys.insert(0, token[1:])
            token = token[0]
        if expect.kind == "digits":
            token = token.split(expect.terminator)[0] if token != expect.terminator else token
        return Input.dtmf(token)

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
