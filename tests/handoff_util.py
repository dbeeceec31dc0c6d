"""Helpers for the handoff, desk and callback tests: servers with AMI, a
PostgreSQL database of their own, and a desk client that speaks the signed
WebSocket protocol like desk.js."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from .conftest import OFFICE_HOURS, pg_url

SECRET = "test-secret-for-handoff-tests-0123456789"
PG_REQUIRED = bool(os.environ.get("IVR_TEST_DATABASE_URL")) or os.environ.get("CI", "").lower() == "true"


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    from ivr.store import normalize_url

    return make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def pg_database():
    """A fresh PostgreSQL database (dropped afterwards): its URL."""
    base = pg_url()
    try:
        admin = await asyncpg.connect(_dsn(base), timeout=5)
    except Exception as exc:  # noqa: BLE001
        message = f"PostgreSQL at {base} is unreachable ({type(exc).__name__}: {exc})"
        if PG_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    name = f"ivr_t_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    from sqlalchemy.engine import make_url

    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def start_server(tmp_path: Path, flows_dir: Path, *, database_url: str, ami_port: int | None,
                       name: str = "a", **settings: Any):
    """A full ``ivr serve`` in this process, on free ports; returns (app, runner)."""
    from ivr.config import load_config
    from ivr.server import build_app, start_app

    overrides = {
        "flows_dir": str(flows_dir), "database_url": database_url, "agi_port": 0, "http_port": 0,
        "reload_interval": 0, "shutdown_grace": 5, "sounds_dir": str(tmp_path / f"sounds-{name}"),
        "secret_key": SECRET, "callback_poll_interval": 0.2,
    }
    if ami_port is not None:
        overrides.update(ami_host="127.0.0.1", ami_port=ami_port, ami_username="ivr", ami_secret="secret")
    overrides.update(settings)
    config = load_config(None, overrides, env={})
    app = await build_app(config, clock=lambda: OFFICE_HOURS)
    runner, _ = await start_app(app)
    if app.ami is not None:
        await app.ami.wait_connected(5)
    return app, runner


def base_url(app: Any) -> str:
    return f"http://127.0.0.1:{app.config.http_port}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DeskClient:
    """A signed-in desk over HTTP + the signed WebSocket, as desk.js does it."""

    def __init__(self, base: str):
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.key = b""
        self.token = ""
        self.csrf = ""
        self.send_seq = 0
        self.recv_seq = 0

    async def login(self, name: str, password: str) -> None:
        async with self.http.get(f"{self.base}/login") as r:
            token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text()).group(1)
        async with self.http.post(f"{self.base}/login", data={"name": name, "password": password,
                                                              "csrf_token": token}, allow_redirects=False) as r:
            assert r.status == 303, await r.text()

    async def page(self) -> str:
        async with self.http.get(f"{self.base}/desk") as r:
            assert r.status == 200
            html = await r.text()
        self.token = re.search(r'data-ws-token="([^"]+)"', html).group(1)
        self.key = _unb64(re.search(r'data-ws-key="([^"]+)"', html).group(1))
        self.csrf = re.search(r'data-csrf="([^"]+)"', html).group(1)
        return html

    async def connect(self, *, token: str | None = None, origin: str | None = None) -> dict[str, Any]:
        headers = {"Origin": origin or self.base}
        self.ws = await self.http.ws_connect(f"{self.base}/desk/ws?token={token or self.token}", headers=headers)
        hello = await self.recv()
        assert hello["type"] == "hello", hello
        return hello

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self.key, body.encode(), hashlib.sha256).digest())

    def frame(self, kind: str, data: dict[str, Any] | None = None, *, seq: int | None = None) -> str:
        if seq is None:
            self.send_seq += 1
            seq = self.send_seq
        body = json.dumps({"seq": seq, "type": kind, "data": data or {}})
        return json.dumps({"body": body, "mac": self._mac(body)})

    async def send(self, kind: str, data: dict[str, Any] | None = None) -> str:
        text = self.frame(kind, data)
        assert self.ws is not None
        await self.ws.send_str(text)
        return text

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.ws is not None
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        outer = json.loads(msg.data)
        assert hmac.compare_digest(outer["mac"], self._mac(outer["body"])), "server message with a bad mac"
        inner = json.loads(outer["body"])
        assert inner["seq"] > self.recv_seq, "server message replayed"
        self.recv_seq = inner["seq"]
        return inner

    async def recv_type(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        import asyncio

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no {kind} message")
            msg = await self.recv(left)
            if msg["type"] == kind:
                return msg

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


async def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll the coroutine function ``predicate`` until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
