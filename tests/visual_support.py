"""Shared pieces of the visual IVR tests: a server with the visual settings, a
call that holds while the caller is on screen, the texted link."""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

import aiohttp

from ivr.testing.fake_asterisk import FakeAsterisk
from visual_ivr.testing import HoldingCaller

from .conftest import OFFICE_HOURS

LINK_RE = re.compile(r"https?://\S+?/v/[A-Za-z0-9_-]{36}")
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@asynccontextmanager
async def visual_server(tmp_path: Path, flows_dir: Path, **overrides: Any):
    from ivr.config import load_config
    from ivr.server import build_app, start_app, stop_app

    settings = {
        "flows_dir": str(flows_dir), "database_url": f"sqlite:///{tmp_path / 'trail.db'}",
        "agi_port": 0, "http_port": 0, "reload_interval": 0, "shutdown_grace": 5,
        "sounds_dir": str(tmp_path / "sounds"), "visual_hold_poll": 0.2, "desk_token": "desk-secret",
    }
    settings.update(overrides)
    config = load_config(None, settings, env={})
    app = await build_app(config, clock=lambda: OFFICE_HOURS)
    runner, _ = await start_app(app)
    try:
        yield app
    finally:
        await stop_app(app, runner)


async def until(check: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


class Call:
    """A FakeAsterisk call running in the background with a HoldingCaller."""

    def __init__(self, app: Any, keys: list[str], **kw: Any):
        self.app = app
        self.caller = HoldingCaller(keys)
        self.fake = FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=self.caller, script=kw.pop(
            "script", "demo_hotline"), idle_timeout=kw.pop("idle_timeout", 30), **kw)
        self.task = asyncio.create_task(self.fake.run())

    @property
    def hub(self) -> Any:
        return self.app.driver.visual_hub

    async def link(self, count: int = 1) -> str:
        rows = await until(lambda: self._rows(count))
        match = LINK_RE.search(rows[count - 1]["body"])
        assert match, rows[count - 1]["body"]
        return match.group(0)

    async def _rows(self, count: int) -> list[dict[str, Any]] | None:
        rows = [r for r in await self.hub.sms.outbox() if r["status"] == "sent"]
        return rows if len(rows) >= count else None

    async def holding(self) -> None:
        await until(lambda: any(ws.holding for ws in self.hub.calls.values()))

    async def result(self, timeout: float = 20.0) -> Any:
        return await asyncio.wait_for(self.task, timeout)

    async def session(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        result = await self.result()
        sid = result.variables["IVR_SESSION"]
        return await self.app.store.get_session(sid), await self.app.store.events(sid)


def client() -> aiohttp.ClientSession:
    """A browser-like HTTP client: keeps cookies (also for 127.0.0.1), does not follow redirects itself."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


async def post(http: aiohttp.ClientSession, url: str, data: dict[str, str], *, follow: bool = True) -> tuple[int, str]:
    async with http.post(url, data=data, allow_redirects=follow) as resp:
        return resp.status, await resp.text()


def csrf(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, html
    return match.group(1)
