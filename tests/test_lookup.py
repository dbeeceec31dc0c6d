"""ivr.lookup against real HTTP servers on 127.0.0.1 (real sockets, no mocks)."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ivr.lookup import DEFAULT_MAX_BYTES, LookupRunner, perform_lookup

from .conftest import free_port

MARGIN = 0.6  # seconds of scheduling slack allowed past a look-up's timeout
HUGE = 50 * 1024 * 1024


@dataclass
class Backend:
    base: str
    hits: Counter[str] = field(default_factory=Counter)
    seen: list[dict[str, Any]] = field(default_factory=list)
    huge_sent: int = 0


async def _start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # the only way to learn the port the OS picked
    assert server is not None
    return runner, server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    state = Backend(base="")

    async def record(request: web.Request) -> None:
        state.hits[request.path] += 1
        state.seen.append({
            "path": request.path,
            "method": request.method,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "body": await request.text(),
        })

    async def ok(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"account": "20240001", "balance": -35.2})

    async def echo(request: web.Request) -> web.Response:
        await record(request)
        body = await request.text()
        return web.json_response({"query": dict(request.query), "body": json.loads(body) if body else None})

    async def empty(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=204)

    async def not_found(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"error": "unknown account"}, status=404)

    async def fail(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"error": "boom"}, status=500)

    async def flaky(request: web.Request) -> web.Response:
        await record(request)
        if state.hits[request.path] == 1:
            return web.Response(status=503, text="try later")
        return web.json_response({"ticket": "F202611250001"})

    async def malformed(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text='{"balance": 12.5,', content_type="application/json")

    async def cookie(request: web.Request) -> web.Response:
        await record(request)
        resp = web.json_response({"cookie": request.headers.get("Cookie")})
        resp.set_cookie("caller", "secret")
        return resp

    async def declared_huge(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = HUGE
        await resp.prepare(request)
        await resp.write(b"[" + b"0," * 1000)
        await asyncio.sleep(30)  # never finishes: the client must not wait for it
        return resp

    async def streamed_huge(request: web.Request) -> web.StreamResponse:
        await record(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b" " * (64 * 1024)
        try:
            while state.huge_sent < HUGE:
                await resp.write(chunk)
                state.huge_sent += len(chunk)
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            pass  # the client hung up, as it should
        return resp

    async def gzip_bomb(request: web.Request) -> web.Response:
        await record(request)
        body = gzip.compress(b" " * (20 * 1024 * 1024))
        return web.Response(body=body, headers={"Content-Type": "application/json",
                                                "Content-Encoding": "gzip"})

    app = web.Application()
    for path, handler in [("/ok", ok), ("/empty", empty), ("/not-found", not_found),
                          ("/fail", fail), ("/flaky", flaky), ("/malformed", malformed),
                          ("/cookie", cookie), ("/declared-huge", declared_huge),
                          ("/streamed-huge", streamed_huge), ("/gzip-bomb", gzip_bomb)]:
        app.router.add_get(path, handler)
    app.router.add_route("*", "/echo", echo)
    app.router.add_post("/fail", fail)
    app.router.add_post("/flaky", flaky)

    runner, port = await _start(app)
    state.base = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts connections and reads requests but never answers a byte."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _assert_shape(result: dict[str, Any]) -> None:
    assert set(result) == {"ok", "status", "data", "error", "latency_ms", "attempts"}
    json.dumps(result)  # plain data, ready for Input.result(...)


async def test_success(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"name": "acct", "url": backend.base + "/ok",
                                            "method": "GET", "timeout": 2, "retries": 2})
    _assert_shape(result)
    assert result["ok"] is True
    assert result["status"] == 200
    assert result["data"] == {"account": "20240001", "balance": -35.2}
    assert result["error"] is None
    assert result["attempts"] == 1
    assert 0 < result["latency_ms"] < 2000


async def test_query_body_and_headers_are_sent(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {
        "name": "echo", "url": backend.base + "/echo", "method": "post",
        "query": {"limit": 3, "vip": True, "skip": None, "area": "朝阳"},
        "json": {"account": "20240001", "pin": "123456"},
        "headers": {"X-Api-Key": "demo"},
    })
    assert result["ok"], result
    assert result["data"] == {"query": {"limit": "3", "vip": "true", "area": "朝阳"},
                              "body": {"account": "20240001", "pin": "123456"}}
    sent = backend.seen[-1]["headers"]
    assert sent["X-Api-Key"] == "demo"
    assert sent["Accept"] == "application/json"


async def test_empty_body_is_ok_with_no_data(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/empty"})
    assert result == {**result, "ok": True, "status": 204, "data": None, "error": None}


async def test_404_is_not_retried(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/not-found", "retries": 3})
    _assert_shape(result)
    assert result["ok"] is False
    assert result["status"] == 404
    assert result["error"] == "http 404"
    assert result["data"] == {"error": "unknown account"}  # kept, flows may show it
    assert result["attempts"] == 1
    assert backend.hits["/not-found"] == 1


async def test_500_is_retried_then_fails(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/fail", "retries": 2, "timeout": 3})
    assert result["ok"] is False
    assert result["status"] == 500
    assert result["error"] == "http 500"
    assert result["attempts"] == 3
    assert backend.hits["/fail"] == 3


async def test_retry_recovers_from_a_transient_503(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/flaky", "retries": 1, "timeout": 3})
    assert result["ok"] is True
    assert result["data"] == {"ticket": "F202611250001"}
    assert result["attempts"] == 2


async def test_retried_post_repeats_one_idempotency_key(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/fail", "method": "POST",
                                            "json": {"kind": "no_internet"}, "retries": 2})
    assert result["attempts"] == 3
    keys = {seen["headers"].get("Idempotency-Key") for seen in backend.seen}
    assert len(keys) == 1 and None not in keys


async def test_no_retries_by_default(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/fail"})
    assert result["attempts"] == 1
    assert backend.hits["/fail"] == 1


async def test_silent_server_fails_within_timeout(silent_server: str, session: aiohttp.ClientSession) -> None:
    timeout = 0.8
    started = time.monotonic()
    result = await perform_lookup(session, {"url": silent_server + "/accounts/1", "timeout": timeout})
    elapsed = time.monotonic() - started
    _assert_shape(result)
    assert result["ok"] is False
    assert result["error"] == "timeout"
    assert result["status"] is None
    assert result["attempts"] == 1
    assert timeout * 0.9 <= elapsed < timeout + MARGIN


async def test_retries_stay_inside_the_total_timeout(
    silent_server: str, session: aiohttp.ClientSession
) -> None:
    timeout = 1.0
    started = time.monotonic()
    result = await perform_lookup(session, {"url": silent_server + "/x", "timeout": timeout, "retries": 3})
    elapsed = time.monotonic() - started
    assert result["error"] == "timeout"
    assert result["attempts"] >= 3  # each attempt got a share of the budget
    assert elapsed < timeout + MARGIN
    assert result["latency_ms"] < (timeout + MARGIN) * 1000


async def test_retries_on_fast_failures_stay_inside_the_total_timeout(
    session: aiohttp.ClientSession,
) -> None:
    timeout = 0.5
    started = time.monotonic()
    result = await perform_lookup(
        session, {"url": f"http://127.0.0.1:{free_port()}/", "timeout": timeout, "retries": 5}
    )
    assert result["error"] == "connection refused"
    assert 2 <= result["attempts"] <= 6
    assert time.monotonic() - started < timeout + MARGIN


async def test_malformed_json(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/malformed", "retries": 2})
    assert result["ok"] is False
    assert result["status"] == 200
    assert result["error"] == "malformed json"
    assert result["data"] is None
    assert result["attempts"] == 1  # the same answer would come again


async def test_streamed_huge_body_is_refused_quickly_with_bounded_memory(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    tracemalloc.start()
    try:
        started = time.monotonic()
        result = await perform_lookup(session, {"url": backend.base + "/streamed-huge", "timeout": 10})
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["ok"] is False
    assert result["error"] == "body too large"
    assert result["status"] == 200
    assert elapsed < 2.0
    assert peak < 8 * 1024 * 1024  # a 50 MB body was never held
    await asyncio.sleep(0.1)
    assert backend.huge_sent < HUGE  # the connection was dropped, not drained


async def test_declared_huge_body_is_refused_without_reading(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    result = await perform_lookup(session, {"url": backend.base + "/declared-huge", "timeout": 5})
    assert result["error"] == "body too large"
    assert time.monotonic() - started < 1.0


async def test_max_bytes_is_configurable(backend: Backend, session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/ok", "max_bytes": 10})
    assert result["error"] == "body too large"
    assert DEFAULT_MAX_BYTES == 256 * 1024


async def test_gzip_bomb_is_bounded_after_decompression(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/gzip-bomb", "timeout": 5})
    assert result["error"] == "body too large"


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    result = await perform_lookup(session, {"url": f"http://127.0.0.1:{free_port()}/health", "timeout": 2})
    _assert_shape(result)
    assert result["ok"] is False
    assert result["error"] == "connection refused"
    assert result["status"] is None


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/file", "file:///etc/passwd", "/demo-api/health", "http://", "", None, 42,
     "javascript:alert(1)", "http://[::1"],
)
async def test_bad_url(session: aiohttp.ClientSession, url: Any) -> None:
    result = await perform_lookup(session, {"url": url})
    _assert_shape(result)
    assert result["ok"] is False
    assert result["error"] == "bad url"
    assert result["attempts"] == 0


async def test_bad_method_and_header_injection(backend: Backend, session: aiohttp.ClientSession) -> None:
    bad_method = await perform_lookup(session, {"url": backend.base + "/ok", "method": "DELETE"})
    assert bad_method["error"] == "bad method"
    injected = await perform_lookup(session, {"url": backend.base + "/ok",
                                              "headers": {"X-Caller": "Bob\r\nX-Admin: 1"}})
    assert injected["error"] == "bad request"
    assert backend.hits["/ok"] == 0


async def test_unencodable_body_is_a_failure_not_an_exception(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    result = await perform_lookup(session, {"url": backend.base + "/echo", "method": "POST",
                                            "json": {"when": object()}})
    assert result["ok"] is False
    assert result["error"] == "bad request"


async def test_runner_shares_a_session_counts_and_keeps_no_cookies(backend: Backend) -> None:
    runner = LookupRunner(max_latencies=3)
    try:
        first = await runner.run({"url": backend.base + "/cookie"})
        second = await runner.run({"url": backend.base + "/cookie"})
        assert first["ok"] and second["ok"]
        assert second["data"] == {"cookie": None}  # one caller's cookie never reaches another
        await runner.run({"url": backend.base + "/not-found"})
        await runner.run({"url": backend.base + "/fail", "retries": 1})
        await runner.run({"url": "gopher://x"})
        stats = runner.stats()
        assert stats["counts"] == {"ok": 2, "http 404": 1, "http 500": 1, "bad url": 1}
        assert stats["total"] == 5
        assert stats["attempts"] == 2 + 1 + 2 + 0
        assert len(runner.latencies_ms) == 3  # bounded
        assert stats["latency_ms_p50"] is not None
    finally:
        await runner.close()
        await runner.close()  # idempotent
    # A closed runner opens a fresh session on next use.
    async with LookupRunner() as again:
        assert (await again.run({"url": backend.base + "/ok"}))["ok"]


async def test_runner_uses_a_given_session_without_closing_it(
    backend: Backend, session: aiohttp.ClientSession
) -> None:
    runner = LookupRunner(session=session)
    assert (await runner.run({"url": backend.base + "/ok"}))["ok"]
    await runner.close()
    assert not session.closed


async def test_concurrent_lookups(backend: Backend) -> None:
    async with LookupRunner(limit_per_host=5) as runner:
        results = await asyncio.gather(*(runner.run({"url": backend.base + "/ok"}) for _ in range(40)))
    assert all(r["ok"] for r in results)
    assert runner.counts["ok"] == 40


async def test_numeric_strings_are_accepted_for_timeout_and_retries(
    silent_server: str, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    result = await perform_lookup(session, {"url": silent_server, "timeout": "0.4", "retries": "1"})
    assert result["error"] == "timeout" and result["attempts"] == 2
    assert time.monotonic() - started < 0.4 + MARGIN
