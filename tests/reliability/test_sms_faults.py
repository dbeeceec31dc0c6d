"""Faults: the SMS gateway behind the visual IVR's offer, through whole calls.

The shipped demo's key 8 (``offer_visual``, mode send) texts the caller a
link. Here the gateway is down (nothing listens: connection refused) or slow
(answers after longer than ``sms_send_timeout``), over HTTP and over SMPP
(smpplib against an SMS centre that refuses or never answers). Every caller
must hear the "could not send" prompt and go on to the main menu within the
send timeout plus slack, the trail must say why (an ``sms`` event with its
reason), and calls that send nothing must not notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ..conftest import free_port, running_server
from .support import timed_call

SEND_TIMEOUT = 1.0
SLACK = 5.0
SMS_CALLS = 10  # concurrent calls that try to text a link
OTHER_CALLS = 5  # concurrent calls that send nothing
SMS_KEYS = ["1", "8"]  # Mandarin, then "continue on screen"; the caller hangs up at the main menu again
OTHER_KEYS = ["1", "3"]  # Mandarin, then outages (a look-up and a prompt), no text message


@contextlib.asynccontextmanager
async def slow_webhook():
    """An HTTP SMS relay that takes the request and answers only much later."""
    stop = asyncio.Event()
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await stop.wait()
        return web.json_response({"id": "late"})

    app = web.Application()
    app.router.add_post("/sms", hook)
    runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/sms", received
    finally:
        stop.set()
        await runner.cleanup()


@contextlib.contextmanager
def silent_smsc():
    """An SMS centre whose TCP port accepts connections (the kernel's backlog) but never answers a bind."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def server(tmp_path: Path, flows_dir: Path, prompt_cache: Path, **sms: Any):
    return running_server(tmp_path, flows_dir, prompt_cache, sms_send_timeout=SEND_TIMEOUT,
                          sms_limit_per_hour=1000, **sms)


async def call(app, keys: list[str], number: str) -> tuple[Any, dict, list[dict], float]:
    return await timed_call(app, keys, callerid=number)


def nodes(events: list[dict]) -> list[str]:
    return [e["node"] for e in events if e["kind"] == "node_enter"]


def of(events: list[dict], kind: str) -> list[dict]:
    return [e["data"] for e in events if e["kind"] == kind]


async def check_row(app, rel, caplog, *, reasons: tuple[str, ...], what: str) -> None:
    """SMS_CALLS calls that try to text, OTHER_CALLS that do not, all at once."""
    caplog.set_level(logging.INFO)
    numbers = [f"139{i:08d}" for i in range(SMS_CALLS)]  # one number each: the per-number limit stays out of it
    others = [f"137{i:08d}" for i in range(OTHER_CALLS)]
    runs = await asyncio.gather(*(call(app, SMS_KEYS, n) for n in numbers),
                                *(call(app, OTHER_KEYS, n) for n in others))
    lost: list[str] = []
    slowest = 0.0
    for result, session, events, elapsed in runs[:SMS_CALLS]:
        slowest = max(slowest, elapsed)
        sms = of(events, "sms")
        seq = nodes(events)
        problems = []
        if len(sms) != 1 or sms[0]["status"] != "failed" or not any(r in str(sms[0]["reason"]) for r in reasons):
            problems.append(f"sms event {sms}")
        if "visual" not in seq or seq[seq.index("visual") + 1:][:1] != ["main"]:
            problems.append(f"nodes {seq}")
        if not any(c.startswith("STREAM FILE ivr/zh-CN/visual_refused") for c in result.commands):
            problems.append("no 'could not send' prompt")
        if any("MusicOnHold" in c or "visual_sent" in c for c in result.commands):
            problems.append("held for a page that was never texted")
        if elapsed > SEND_TIMEOUT + SLACK:
            problems.append(f"took {elapsed:.1f} s")
        if session["ended_at"] is None:
            problems.append("session not ended")
        if problems:
            lost.append(f"{session['id']}: {'; '.join(problems)}")
    other_slowest = 0.0
    for result, session, events, elapsed in runs[SMS_CALLS:]:
        other_slowest = max(other_slowest, elapsed)
        if of(events, "sms") or "say_outages" not in nodes(events) or elapsed > SLACK or session["ended_at"] is None:
            lost.append(f"other call {session['id']}: {nodes(events)} in {elapsed:.1f} s")
    rows = await app.driver.visual_hub.sms.outbox()
    if len(rows) != SMS_CALLS or any(r["status"] != "failed" or not r["reason"] for r in rows):
        lost.append(f"sms log {[(r['status'], r['reason']) for r in rows]}")
    rel.tried(len(runs))
    rel.note(f"{what}: {SMS_CALLS} calls texting at once beside {OTHER_CALLS} that do not; "
             f"send timeout {SEND_TIMEOUT} s")
    rel.figure(f"slowest texting call ({what})", round(slowest, 2), "s")
    rel.figure(f"slowest other call ({what})", round(other_slowest, 2), "s")
    rel.lost(len(lost), "; ".join(lost[:3]))
    assert not lost, lost
    bad_logs = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad_logs, bad_logs


@pytest.mark.reliability("sms.gateway-down")
async def test_http_gateway_down(tmp_path, flows_dir, prompt_cache, rel, caplog):
    url = f"http://127.0.0.1:{free_port()}/sms"  # nothing listens there
    async with server(tmp_path, flows_dir, prompt_cache, sms_gateway="http", sms_http_url=url,
                      sms_http_secret="s") as app:
        await check_row(app, rel, caplog, reasons=("connection refused",), what="http, refused")


@pytest.mark.reliability("sms.gateway-down")
async def test_smpp_gateway_down(tmp_path, flows_dir, prompt_cache, rel, caplog):
    async with server(tmp_path, flows_dir, prompt_cache, sms_gateway="smpp", sms_smpp_host="127.0.0.1",
                      sms_smpp_port=free_port(), sms_smpp_system_id="ivr", sms_smpp_password="secret") as app:
        await check_row(app, rel, caplog, reasons=("ConnectionError", "refused"), what="smpp, refused")


@pytest.mark.reliability("sms.gateway-slow")
async def test_http_gateway_slow(tmp_path, flows_dir, prompt_cache, rel, caplog):
    async with slow_webhook() as (url, received), server(
            tmp_path, flows_dir, prompt_cache, sms_gateway="http", sms_http_url=url, sms_http_secret="s") as app:
        await check_row(app, rel, caplog, reasons=("timeout",), what="http, slow")
        assert len(received) == SMS_CALLS  # the relay did get every request: it was only slow


@pytest.mark.reliability("sms.gateway-slow")
async def test_smpp_gateway_slow(tmp_path, flows_dir, prompt_cache, rel, caplog):
    with silent_smsc() as port:
        async with server(tmp_path, flows_dir, prompt_cache, sms_gateway="smpp", sms_smpp_host="127.0.0.1",
                          sms_smpp_port=port, sms_smpp_system_id="ivr", sms_smpp_password="secret") as app:
            await check_row(app, rel, caplog, reasons=("timeout", "timed out", "busy"), what="smpp, silent")
