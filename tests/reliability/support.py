"""Helpers shared by the reliability tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def wait_ended(app, session_id: str | None, timeout: float = 10.0) -> dict[str, Any] | None:
    """The session row once ``ended_at`` is set (None when there is no session).

    The server closes the FastAGI socket first and then writes the end of the
    session (so Asterisk never waits for the database): a test that reads the
    trail as soon as the fake Asterisk sees the socket close must wait for it.
    """
    if not session_id:
        return None
    deadline = time.monotonic() + timeout
    session = await app.store.get_session(session_id)
    while (session is None or session["ended_at"] is None) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        session = await app.store.get_session(session_id)
    return session


async def timed_call(app, keys: list[str], *, script: str = "demo_hotline", **fake: Any):
    """One call through ``app`` by the fake Asterisk, the caller pressing ``keys``:
    (result, ended session row, its events, seconds the call took)."""
    from ivr.testing.callers import SimLikeCaller
    from ivr.testing.fake_asterisk import FakeAsterisk

    started = time.monotonic()
    result = await FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(keys), script=script,
                                idle_timeout=30, **fake).run()
    elapsed = time.monotonic() - started
    sid = result.variables.get("IVR_SESSION")
    assert sid, result.transcript()[-2000:]
    return result, await wait_ended(app, sid), await app.store.events(sid), elapsed
