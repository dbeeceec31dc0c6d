"""SMS gateways over real sockets and the limits against SMS pumping."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from ivr.store import TrailStore
from visual_ivr.sms import (SIGNATURE_HEADER, TIMESTAMP_HEADER, HttpGateway, Limits, OutboxGateway, SmppGateway,
                            SmsService, sign, verify)
from visual_ivr.testing import FakeSmsc

CN_TEXT = "【示例公司】点击链接在手机上继续自助服务：https://ivr.example.com/v/abcdefghijklmnopqrstuvwxyz0123456789（15分钟内有效）"


@pytest.fixture
async def store(tmp_path):
    s = await TrailStore.open(f"sqlite:///{tmp_path / 'sms.db'}")
    try:
        yield s
    finally:
        await s.close()


async def test_outbox_keeps_and_logs(store, caplog):
    caplog.set_level(logging.INFO, "visual_ivr.sms")
    sms = SmsService(store.engine, OutboxGateway(), Limits())
    out = await sms.send("+8613800138000", "hello https://x/v/t", session_id="s1", language="en-US")
    assert out.status == "sent" and out.gateway == "outbox"
    (row,) = await sms.outbox()
    assert row["to_number"] == "+8613800138000" and row["body"] == "hello https://x/v/t"
    assert row["status"] == "sent" and row["provider_id"] == f"outbox-{row['id']}"
    assert "https://x/v/t" in caplog.text and "+86138****8000" in caplog.text
    assert out.event("+8613800138000") == {"to": "+86138****8000", "status": "sent", "reason": None,
                                           "gateway": "outbox"}


async def test_limits_per_session_number_and_hour(store):
    sms = SmsService(store.engine, OutboxGateway(), Limits(per_number=2, per_session=2, per_hour=3))
    a = "+8613800138000"
    assert (await sms.send(a, "1", session_id="s1")).status == "sent"
    assert (await sms.send(a, "2", session_id="s1")).status == "sent"
    third = await sms.send(a, "3", session_id="s1")
    assert (third.status, third.reason) == ("refused", "limit_session")
    other = await sms.send(a, "4", session_id="s2")
    assert (other.status, other.reason) == ("refused", "limit_number")
    assert (await sms.send("+8613912345678", "5", session_id="s3")).status == "sent"
    flood = await sms.send("+8613996001234", "6", session_id="s4")
    assert (flood.status, flood.reason) == ("refused", "limit_hour")
    rows = await sms.outbox()
    assert [r["status"] for r in rows] == ["sent", "sent", "refused", "refused", "sent", "refused"]


async def test_http_gateway_signs_and_reports_failures(store, unused_tcp_port_factory=None):
    received: list[dict] = []
    status = {"code": 200}
    secret = "hook-secret"

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify(secret, request.headers[TIMESTAMP_HEADER], body, request.headers[SIGNATURE_HEADER])
        received.append({"ok": ok, "json": json.loads(body)})
        if not ok:
            return web.json_response({"error": "bad signature"}, status=401)
        if status["code"] == 999:
            await asyncio.sleep(2)
        return web.json_response({"id": "prov-1"}, status=status["code"] if status["code"] != 999 else 200)

    app = web.Application()
    app.router.add_post("/sms", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    gw = HttpGateway(f"http://127.0.0.1:{port}/sms", secret, timeout=0.5)
    sms = SmsService(store.engine, gw, Limits(per_number=10, per_session=10), sender="95598")
    try:
        token = "abcdefghijklmnopqrstuvwxyz0123456789"
        out = await sms.send("+8613800138000", CN_TEXT, session_id="s1", language="zh-CN", secret=token)
        assert out.status == "sent" and received[-1]["ok"]
        assert received[-1]["json"] == {"to": "+8613800138000", "from": "95598", "text": CN_TEXT,
                                        "ref": str(out.message_id)}
        row = (await sms.outbox())[-1]
        assert row["provider_id"] == "prov-1"
        assert token not in row["body"] and "/v/[token]" in row["body"]  # the log never holds a live link
        status["code"] = 503
        out = await sms.send("+8613800138000", "x", session_id="s1")
        assert (out.status, out.reason) == ("failed", "http 503")
        status["code"] = 999
        out = await sms.send("+8613800138000", "x", session_id="s1")
        assert (out.status, out.reason) == ("failed", "timeout")
        bad = HttpGateway(f"http://127.0.0.1:{port}/sms", "wrong-secret")
        assert (await bad.send("+8613800138000", "x", sender="1", ref="1")).reason == "http 401"
        await bad.close()
    finally:
        await gw.close()
        await runner.cleanup()


def test_signature_rejects_tampering_and_old_timestamps():
    body = b'{"to":"+8613800138000"}'
    sig = sign("k", "1700000000", body)
    assert verify("k", "1700000000", body, sig, now=1700000010)
    assert not verify("k", "1700000000", body + b" ", sig, now=1700000010)
    assert not verify("k", "1700000000", body, sig, now=1700009999)
    assert not verify("other", "1700000000", body, sig, now=1700000010)


async def test_smpp_gateway_against_a_real_smsc(store):
    smsc = FakeSmsc("ivr", "secret")
    gw = SmppGateway("127.0.0.1", smsc.port, "ivr", "secret", timeout=3)
    sms = SmsService(store.engine, gw, Limits(per_number=10, per_session=10), sender="95598")
    try:
        short = await sms.send("+8613800138000", "Demo Co: https://x.example/v/abc", session_id="s1")
        assert short.status == "sent"
        long = await sms.send("+8613800138000", CN_TEXT, session_id="s1")
        assert long.status == "sent"
        assert [b["ok"] for b in smsc.binds] == ["True"]  # one bind, kept for the second message
        assert all(s["destination"] == "8613800138000" and s["source"] == "95598" for s in smsc.submits)
        assert smsc.submits[0]["data_coding"] == 0 and smsc.submits[-1]["data_coding"] == 8  # UCS-2 for Chinese
        assert len(smsc.submits) == 1 + 2  # the Chinese text is longer than 70 characters: two parts with UDH
        assert smsc.texts() == ["Demo Co: https://x.example/v/abc", CN_TEXT]
        rows = await sms.outbox()
        assert [r["provider_id"] for r in rows] == ["m1", "m2,m3"]
        smsc.refuse_submit = True
        refused = await sms.send("+8613800138000", "x", session_id="s2")
        assert refused.status == "failed" and "SMSC refused" in refused.reason
    finally:
        await sms.close()
        smsc.close()
    assert smsc.unbinds == 1


async def test_smpp_wrong_password_and_no_server(store):
    smsc = FakeSmsc("ivr", "secret")
    try:
        out = await SmppGateway("127.0.0.1", smsc.port, "ivr", "nope", timeout=2).send(
            "+8613800138000", "x", sender="1", ref="1")
        assert out.status == "failed" and "PDUError" in out.reason
    finally:
        smsc.close()
    out = await SmppGateway("127.0.0.1", smsc.port, "ivr", "secret", timeout=1).send(
        "+8613800138000", "x", sender="1", ref="1")
    assert out.status == "failed" and out.reason.startswith("smpp:")


# ------------------------------------------------------------ SQLite and PostgreSQL
from .test_store import backend  # noqa: E402,F401  (the store tests' SQLite / PostgreSQL fixture)


async def test_links_and_limits_on_both_backends(backend):  # noqa: F811
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from visual_ivr.links import LinkStore
    from visual_ivr.models import links_table

    store = await TrailStore.open(backend.url, **backend.options)
    try:
        sid = await store.create_session(flow_id="demo_hotline", flow_version="v1", channel="voice",
                                         caller="13800138000")
        await store.flush(sid)
        links = LinkStore(store.engine, b"k" * 32, ttl=60)
        token, link = await links.issue(sid, kind="call", node="main", language="zh-CN", to_masked="+86138****8000")
        assert len(token) == 36 and links.well_formed(token) and not links.well_formed(token[:-1] + "A")
        a, b = links.new_device(), links.new_device()
        first = await links.redeem(token, a)
        assert first.status == "ok" and first.first_open and first.link.opened_at is not None
        again = await links.redeem(token, a)
        assert again.status == "ok" and not again.first_open
        assert (await links.redeem(token, b)).status == "other_device"
        assert (await links.redeem(links.new_token(), a)).status == "unknown"
        await links.end(link.id, "completed")
        assert (await links.redeem(token, a)).status == "ended"
        token2, link2 = await links.issue(sid, kind="push", node="main", language=None, created_by="agent7")
        async with store.engine.begin() as conn:
            await conn.execute(update(links_table).where(links_table.c.id == link2.id)
                               .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        assert (await links.redeem(token2, a)).status == "expired"
        rows = await links.for_session(sid)
        assert [(r.kind, r.created_by) for r in rows] == [("call", None), ("push", "agent7")]
        sms = SmsService(store.engine, OutboxGateway(), Limits(per_number=1, per_session=5, per_hour=5))
        assert (await sms.send("+8613800138000", "a", session_id=sid)).status == "sent"
        assert (await sms.send("+8613800138000", "b", session_id=sid)).reason == "limit_number"
    finally:
        await store.close()
