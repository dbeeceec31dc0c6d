"""Transfer with context on one server: queue waits, the exit key, who answered,
the survey, the desk's signed WebSocket and the callback routes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import select

from callback.api import get_callback, list_callbacks
from ivr import names
from ivr.auth import AccountStore
from ivr.store.models_handoff import offers_table
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_ami import FakeAmiServer, FakeQueue, FakeQueueEntry, FakeQueueMember
from ivr.testing.fake_asterisk import FakeAsterisk
from ivr.testing.handoff import QueueApp

from .handoff_util import DeskClient, base_url, start_server

DEMO_TO_AGENT = ["1", "1", "20240001#", "110105199003071239#", "1", "0"]


@pytest.fixture
async def fake_ami():
    fake = FakeAmiServer(originate_delay=0.01)
    fake.add_queue(FakeQueue("support", holdtime=95, talktime=180, members=[
        FakeQueueMember("Agent One", "PJSIP/1001", status=2, in_call=1),
        FakeQueueMember("Agent Two", "PJSIP/1002", status=2, in_call=1)],
        entries=[FakeQueueEntry("PJSIP/trunk-00000001", "1.1", wait=40), FakeQueueEntry("PJSIP/trunk-00000002",
                                                                                         "1.2", wait=20)]))
    async with fake:
        yield fake


@pytest.fixture
async def app(tmp_path: Path, flows_dir: Path, fake_ami: FakeAmiServer):
    from ivr.server import stop_app

    app, runner = await start_server(tmp_path, flows_dir, database_url=f"sqlite:///{tmp_path / 'h.db'}",
                                     ami_port=fake_ami.port, callbacks=False)
    accounts = AccountStore(app.store.engine)
    await accounts.create("alice", "alice-pass-1", interface="PJSIP/1001")
    await accounts.create("bob", "bob-pass-12", interface="PJSIP/1002")
    await accounts.create("sam", "sam-pass-12", role="supervisor")
    try:
        yield app
    finally:
        await stop_app(app, runner)


async def run_call(app, keys, queue: QueueApp | None = None, **kw):
    fake = FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(keys), script="demo_hotline", **kw)
    if queue is not None:
        queue.bind(fake)
    result = await fake.run()
    sid = result.variables.get(names.VAR_SESSION)
    return result, sid, await app.store.get_session(sid), await app.store.events(sid)


async def test_queue_wait_agent_connect_and_survey(app, fake_ami):
    queue = QueueApp(fake_ami, member="PJSIP/1001", member_name="Agent One", talk=0.2)
    result, sid, session, events = await run_call(app, DEMO_TO_AGENT + ["4"], queue)
    # before joining: where the caller stands, from QueueStatus. Two callers wait at priority 0,
    # both agents are busy; this VIP caller (priority 10) goes ahead of them: next, about the
    # queue's average hold time (95 s)
    wait = [e["data"] for e in events if e["kind"] == "queue_wait"]
    assert wait == [{"queue": "support", "position": 1, "ahead": 0, "expected_wait": 95, "wait_minutes": 2,
                     "agents": 2, "free": 0}]
    spoken = [e for e in result.commands if e.startswith("STREAM FILE ivr/zh-CN/queue_wait-")]
    assert spoken and spoken[0].endswith('"1"'), "the announcement takes key 1 (callback)"
    assert ("Queue", "support,c,,,300") in result.executed
    assert result.variables["QUEUE_PRIO"] == "10"
    # who answered and when: one event, the session's fields, an offer for the interface
    connects = [e for e in events if e["kind"] == "agent_connect"]
    assert len(connects) == 1, connects
    data = connects[0]["data"]
    assert (data["agent"], data["interface"], data["queue"], data["via"]) == ("Agent One", "PJSIP/1001", "support",
                                                                              "AgentConnect")
    assert session["agent"] == "Agent One" and session["agent_at"]
    async with app.store.engine.connect() as conn:
        offers = (await conn.execute(select(offers_table))).mappings().all()
    assert [(o["session_id"], o["interface"], o["kind"]) for o in offers] == [(sid, "PJSIP/1001", "connect")]
    # the agent hung up first: the survey
    assert [(e["data"]["score"], e["data"]["mode"]) for e in events if e["kind"] == "survey"] == [(4, "dtmf")]
    assert session["outcome"] == "transfer" and "满意度 4/5" in session["summary"]  # talked to a person
    assert len(app.handoff.pop_latencies) == 1  # one pop published (its speed: bench/handoff.py)


async def test_key_1_during_the_announcement_books_a_callback(app, fake_ami):
    result, sid, session, events = await run_call(app, DEMO_TO_AGENT + ["1", "1"], QueueApp(fake_ami))
    assert not any(app_name == "Queue" for app_name, _ in result.executed), "left before joining"
    assert [e["data"]["status"] for e in events if e["kind"] == "transfer_result"] == ["callback"]
    requested = [e["data"] for e in events if e["kind"] == "callback_requested"]
    assert len(requested) == 1 and requested[0]["slot"] == "asap" and requested[0]["number"] == "****8000"
    stored = await get_callback(app, requested[0]["id"])
    assert stored["session_id"] == sid and stored["queue"] == "support" and stored["priority"] == 10
    assert session["outcome"] == "completed" and "预约回电（尽快回电）" in session["summary"]


async def test_key_1_inside_the_queue_leaves_it_for_a_callback(server):
    """Without AMI (no announcement), the queue's own exit key: CONTEXT/EXTEN tell the AGI."""
    queue = QueueApp(None)
    result, sid, session, events = await run_call(server, DEMO_TO_AGENT + ["1", "1"], queue)
    assert queue.calls == ["support,c,,,300"]
    i = result.commands.index("GET VARIABLE QUEUESTATUS")
    assert result.commands[i + 1:i + 3] == ["GET VARIABLE CONTEXT", "GET VARIABLE EXTEN"]
    assert [e["data"]["status"] for e in events if e["kind"] == "transfer_result"] == ["callback"]
    assert len(await list_callbacks(server, session_id=sid)) == 1


async def test_nobody_answers_offers_a_callback(server):
    nobody = QueueApp(None, outcome="timeout", exit_keys="")  # the caller waits without pressing anything
    result, sid, session, events = await run_call(server, DEMO_TO_AGENT + ["1", "1"], nobody)
    # Queue() timed out; agents_busy: 1 -> callback, 1 -> as soon as possible
    assert [e["data"]["status"] for e in events if e["kind"] == "transfer_result"] == ["failed"]
    assert [e["node"] for e in events if e["kind"] == "choice"][-2:] == ["agents_busy", "callback"]
    assert len(await list_callbacks(server, session_id=sid)) == 1


DIRECT_FLOW = """
id: direct
title: Direct dial
languages: [en-US]
start: t
nodes:
  t: {type: transfer, extension: PJSIP/1001, timeout: 20}
"""


async def test_bridge_enter_records_who_answered_a_direct_dial(app, fake_ami, flows_dir):
    (flows_dir / "direct.yaml").write_text(DIRECT_FLOW, encoding="utf-8")
    app.registry.reload()

    async def dial(args: str):
        from ivr.testing.fake_asterisk import AppOutcome

        chan, uid = "PJSIP/trunk-0000002a", "1795618600.40"
        for channel, uniqueid in (("PJSIP/1001-0000002b", "1795618600.41"), (chan, uid)):
            await fake_ami.emit({"Event": "BridgeEnter", "Privilege": "call,all", "BridgeUniqueid": "b-1",
                                 "Channel": channel, "Uniqueid": uniqueid})
        await asyncio.sleep(0.2)
        return AppOutcome(-1, {"DIALSTATUS": "ANSWER"}, hangup=True, hangup_notice=False)

    fake = FakeAsterisk("127.0.0.1", app.config.agi_port, script="direct", channel="PJSIP/trunk-0000002a",
                        uniqueid="1795618600.40", apps={"Dial": dial})
    result = await fake.run()
    sid = result.variables[names.VAR_SESSION]
    events = await app.store.events(sid)
    connects = [e["data"] for e in events if e["kind"] == "agent_connect"]
    assert len(connects) == 1 and connects[0]["interface"] == "PJSIP/1001" and connects[0]["via"] == "BridgeEnter"


# ---------------------------------------------------------------- the desk socket


async def desk(app, name: str, password: str) -> DeskClient:
    client = DeskClient(base_url(app))
    await client.login(name, password)
    await client.page()
    return client


async def test_desk_socket_refuses_forged_and_replayed_messages(app):
    alice = await desk(app, "alice", "alice-pass-1")
    try:
        hello = await alice.connect()
        assert hello["data"] == {"account": "alice", "role": "agent", "interface": "PJSIP/1001"}
        assert (await alice.recv_type("offers"))["data"] == []
        genuine = await alice.send("ping", {"t": 1})
        assert (await alice.recv_type("pong"))["data"] == {"t": 1}
        # the same frame again: replayed
        await alice.ws.send_str(genuine)
        assert "replayed" in (await alice.recv_type("error"))["data"]["message"]
        # a frame signed with another key: forged
        outer = json.loads(alice.frame("live", {}))
        outer["mac"] = outer["mac"][:-4] + ("AAAA" if outer["mac"][-4:] != "AAAA" else "BBBB")
        await alice.ws.send_str(json.dumps(outer))
        assert "forged" in (await alice.recv_type("error"))["data"]["message"]
        # a valid frame whose body was altered after signing: forged
        outer = json.loads(alice.frame("open", {"session_id": "x"}))
        outer["body"] = outer["body"].replace('"x"', '"y"')
        await alice.ws.send_str(outer and json.dumps(outer))
        assert "forged" in (await alice.recv_type("error"))["data"]["message"]
        # an agent asks for the live calls (supervisors only) or a session not offered to her
        await alice.send("live")
        assert "supervisors" in (await alice.recv_type("error"))["data"]["message"]
        assert app.desk.refused == 3
        # too many refusals close the socket
        for _ in range(3):
            await alice.ws.send_str("not json")
        msg = await alice.ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await alice.ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    finally:
        await alice.close()


async def test_desk_socket_token_is_single_use_same_origin_and_personal(app):
    alice = await desk(app, "alice", "alice-pass-1")
    bob = await desk(app, "bob", "bob-pass-12")
    try:
        token = alice.token
        with pytest.raises(aiohttp.WSServerHandshakeError) as other_site:
            await alice.connect(origin="http://evil.example")
        assert other_site.value.status == 403
        await alice.connect()
        with pytest.raises(aiohttp.WSServerHandshakeError) as replay:
            await alice.http.ws_connect(f"{alice.base}/desk/ws?token={token}", headers={"Origin": alice.base})
        assert replay.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as stolen:  # alice's token on bob's session
            await bob.http.ws_connect(f"{bob.base}/desk/ws?token={bob.token[:-3]}abc",
                                      headers={"Origin": bob.base})
        assert stolen.value.status == 403
        async with aiohttp.ClientSession() as anonymous:
            with pytest.raises(aiohttp.WSServerHandshakeError) as nobody:
                await anonymous.ws_connect(f"{alice.base}/desk/ws?token={bob.token}")
            assert nobody.value.status == 401
    finally:
        await alice.close()
        await bob.close()


async def test_agents_see_only_their_sessions_supervisors_all(app, fake_ami):
    alice, bob, sam = (await desk(app, "alice", "alice-pass-1"), await desk(app, "bob", "bob-pass-12"),
                       await desk(app, "sam", "sam-pass-12"))
    try:
        for client in (alice, bob, sam):
            await client.connect()
        queue = QueueApp(fake_ami, member="PJSIP/1001", talk=5)
        call = asyncio.create_task(run_call(app, DEMO_TO_AGENT + ["5"], queue))
        pop = (await alice.recv_type("pop", timeout=10))["data"]
        sid = pop["session_id"]
        assert pop["caller"] == "13800138000" and pop["language"] == "zh-CN" and pop["live"]
        assert pop["identity"] == {"verified": True, "account": "****0001", "name": "张*", "tier": "vip"}
        assert pop["summary"].startswith("已验证账户 ****0001")
        assert pop["reason"] == "客户在“后续选择”要求人工服务"
        texts = [t["text"] for t in pop["timeline"]]
        assert "Chose “余额和账单” (key 1)" in texts and "Answered by Agent One (PJSIP/1001)" in texts
        assert any(t.startswith("Queue support: position 1, about 2 min") for t in texts)
        assert "110105199003071239" not in json.dumps(pop, ensure_ascii=False)
        assert (await sam.recv_type("pop"))["data"]["session_id"] == sid
        with pytest.raises(TimeoutError):
            await bob.recv_type("pop", timeout=0.5)
        # bob cannot open it, nor read it over HTTP, nor record a disposition on it
        await bob.send("open", {"session_id": sid})
        assert "not offered" in (await bob.recv_type("error"))["data"]["message"]
        async with bob.http.get(f"{bob.base}/desk/api/sessions/{sid}") as r:
            assert r.status == 403
        async with bob.http.post(f"{bob.base}/desk/sessions/{sid}/disposition", json={"disposition": "resolved"},
                                 headers={"X-CSRF-Token": bob.csrf}) as r:
            assert r.status == 403
        # alice records a disposition (CSRF needed)
        url = f"{alice.base}/desk/sessions/{sid}/disposition"
        async with alice.http.post(url, json={"disposition": "resolved", "notes": "explained the bill"}) as r:
            assert r.status == 403
        async with alice.http.post(url, json={"disposition": "nonsense"}, headers={"X-CSRF-Token": alice.csrf}) as r:
            assert r.status == 400
        async with alice.http.post(url, json={"disposition": "resolved", "notes": "explained the bill"},
                                   headers={"X-CSRF-Token": alice.csrf}) as r:
            assert r.status == 200
        # the supervisor sees the live call and may open it
        await sam.send("live")
        live = (await sam.recv_type("live"))["data"]
        assert sid in [c["session_id"] for c in live]
        queue.hangup.set()
        await call
        dispositions = [e for e in await app.store.events(sid) if e["kind"] == "disposition"]
        assert [(d["channel"], d["data"]["agent"], d["data"]["disposition"], d["data"]["notes"]) for d in
                dispositions] == [("desk", "alice", "resolved", "explained the bill")]
        await sam.send("open", {"session_id": sid})
        reopened = (await sam.recv_type("pop"))["data"]
        assert "Disposition by alice: resolved — explained the bill" in [t["text"] for t in reopened["timeline"]]
        assert [t["kind"] for t in reopened["timeline"]][-1] == "session_end"
    finally:
        for client in (alice, bob, sam):
            await client.close()


# ---------------------------------------------------------------- callback routes


async def test_callback_routes(app):
    base = base_url(app)
    sid = await app.store.create_session(flow_id="demo_hotline", flow_version="v", channel="web",
                                         caller="13800138000")
    await app.store.flush(sid)
    alice = await desk(app, "alice", "alice-pass-1")
    try:
        body = {"session_id": sid, "number": "13800138000", "queue": "support", "when": "asap", "language": "zh-CN"}
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.post(f"{base}/api/callbacks", json=body) as r:
                assert r.status == 401
            # a caller's page with a token for this session
            from callback.web import callback_token

            token = callback_token(app, sid)
            async with anonymous.post(f"{base}/api/callbacks", json={**body, "token": token + "x"}) as r:
                assert r.status == 403
            async with anonymous.post(f"{base}/api/callbacks", json={**body, "session_id": "other",
                                                                     "token": token}) as r:
                assert r.status == 403
            async with anonymous.post(f"{base}/api/callbacks", json={**body, "token": token}) as r:
                assert r.status == 201
                created = await r.json()
            assert created["status"] == "pending" and created["requested_by"] == "caller"
            async with anonymous.post(f"{base}/api/callbacks", data="{not json",
                                      headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400
            async with anonymous.post(f"{base}/api/callbacks", data="x", headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 415
            async with anonymous.get(f"{base}/api/callbacks/{created['id']}") as r:
                assert r.status == 401
            async with anonymous.get(f"{base}/api/callbacks/{created['id']}",
                                     params={"token": created["cancel_token"]}) as r:
                assert r.status == 200 and (await r.json())["queue"] == "support"
            # the caller cancels with the token they were given
            async with anonymous.delete(f"{base}/api/callbacks/{created['id']}",
                                        params={"token": created["cancel_token"]}) as r:
                assert r.status == 200
            async with anonymous.delete(f"{base}/api/callbacks/{created['id']}",
                                        params={"token": created["cancel_token"]}) as r:
                assert r.status == 409
        # a signed-in agent: CSRF needed, bad input is a 400
        async with alice.http.post(f"{base}/api/callbacks", json=body) as r:
            assert r.status == 403
        async with alice.http.post(f"{base}/api/callbacks", json={**body, "number": "abc"},
                                   headers={"X-CSRF-Token": alice.csrf}) as r:
            assert r.status == 400 and "not a phone number" in (await r.json())["error"]
        async with alice.http.post(f"{base}/api/callbacks", data={**body, "csrf_token": alice.csrf}) as r:
            assert r.status == 201
            by_form = await r.json()
        assert by_form["requested_by"] == "agent:alice"
        async with alice.http.delete(f"{base}/api/callbacks/{by_form['id']}") as r:
            assert r.status == 403
        async with alice.http.delete(f"{base}/api/callbacks/{by_form['id']}",
                                     headers={"X-CSRF-Token": alice.csrf}) as r:
            assert r.status == 200
        async with alice.http.delete(f"{base}/api/callbacks/nope", headers={"X-CSRF-Token": alice.csrf}) as r:
            assert r.status == 404
    finally:
        await alice.close()
