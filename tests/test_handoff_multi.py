"""Two ``ivr serve`` instances on one PostgreSQL and one (fake) Asterisk: the pop
reaches the agent whichever server handled the call, over PostgreSQL
LISTEN/NOTIFY or Redis pub/sub; a callback taken on one server is dialled
once and pops the agent with the same session."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from callback.api import list_callbacks
from ivr import names
from ivr.auth import AccountStore
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_ami import FakeAmiServer, FakeQueue, FakeQueueMember
from ivr.testing.fake_asterisk import FakeAsterisk
from ivr.testing.handoff import QueueApp

from .handoff_util import DeskClient, base_url, pg_database, start_server

DEMO_TO_AGENT = ["1", "1", "20240001#", "110105199003071239#", "1", "0"]
REDIS_REQUIRED = os.environ.get("CI", "").lower() == "true"


async def _redis_ok() -> str | None:
    import redis.asyncio as redis

    client = redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=2)
    try:
        await client.ping()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


@pytest.fixture(params=["postgres", "redis"])
async def servers(request, tmp_path: Path, flows_dir: Path):
    from ivr.server import stop_app

    if request.param == "redis" and (problem := await _redis_ok()):
        if REDIS_REQUIRED:
            pytest.fail(f"Redis unreachable: {problem}")
        pytest.skip(f"Redis unreachable: {problem}")
    fake = FakeAmiServer(originate_delay=0.05)
    fake.add_queue(FakeQueue("support", holdtime=30, members=[FakeQueueMember("Agent One", "PJSIP/1001")]))
    await fake.start()
    channel = f"ivr_t_{uuid.uuid4().hex[:10]}"
    async with pg_database() as url:
        started = []
        try:
            for name in ("a", "b"):
                started.append(await start_server(tmp_path, flows_dir, database_url=url, ami_port=fake.port,
                                                  name=name, desk_bus=request.param, bus_channel=channel))
            (a, _), (b, _) = started
            assert a.handoff.bus.kind == b.handoff.bus.kind == request.param
            await AccountStore(a.store.engine).create("alice", "alice-pass-1", interface="PJSIP/1001")
            await AccountStore(a.store.engine).create("bob", "bob-pass-12", interface="PJSIP/1002")
            yield a, b, fake
        finally:
            for app, runner in started:
                await stop_app(app, runner)
            await fake.stop(shutdown_event=False)


async def desk(app, name: str, password: str) -> DeskClient:
    client = DeskClient(base_url(app))
    await client.login(name, password)
    await client.page()
    await client.connect()
    await client.recv_type("offers")
    return client


async def test_pop_reaches_the_agent_on_the_other_server(servers):
    a, b, fake_ami = servers
    alice = await desk(b, "alice", "alice-pass-1")  # alice's desk is on server B ...
    bob = await desk(a, "bob", "bob-pass-12")
    try:
        queue = QueueApp(fake_ami, member="PJSIP/1001", member_name="Agent One", talk=0.5)
        fake = queue.bind(FakeAsterisk("127.0.0.1", a.config.agi_port, inputs=SimLikeCaller(DEMO_TO_AGENT + ["5"]),
                                       script="demo_hotline"))  # ... the call is on server A
        call = asyncio.create_task(fake.run())
        pop = (await alice.recv_type("pop", timeout=15))["data"]
        elapsed = time.perf_counter() - queue.connected_at
        print(f"pop across servers ({a.handoff.bus.kind}): {elapsed * 1000:.0f} ms after AgentConnect")
        assert elapsed < 1.0
        result = await call
        sid = result.variables[names.VAR_SESSION]
        assert pop["session_id"] == sid and pop["summary"].startswith("已验证账户 ****0001")
        assert any(t["text"] == "Answered by Agent One (PJSIP/1001)" for t in pop["timeline"])
        with pytest.raises(TimeoutError):
            await bob.recv_type("pop", timeout=0.3)
        # both servers saw the AgentConnect; only the one with the call recorded it
        events = await b.store.events(sid)
        assert len([e for e in events if e["kind"] == "agent_connect"]) == 1
        assert a.handoff.pop_latencies and not b.handoff.pop_latencies
    finally:
        await alice.close()
        await bob.close()


async def test_callback_is_dialled_once_and_pops_with_the_same_session(servers):
    a, b, fake_ami = servers
    alice = await desk(b, "alice", "alice-pass-1")
    try:
        # the caller asks for a person on server A and presses 1 for a callback, as soon as possible
        fake = FakeAsterisk("127.0.0.1", a.config.agi_port, inputs=SimLikeCaller(DEMO_TO_AGENT + ["1", "1"]),
                            script="demo_hotline")
        QueueApp(fake_ami).bind(fake)
        result = await fake.run()
        sid = result.variables[names.VAR_SESSION]
        requests = await list_callbacks(a, session_id=sid)
        assert len(requests) == 1

        # one of the two schedulers dials it (customer first), once
        async def dialled():
            while not fake_ami.originated:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # time for a second (wrong) dial to show up
            return fake_ami.originated

        originated = await asyncio.wait_for(dialled(), 15)
        assert len(originated) == 1
        orig = originated[0]
        assert orig.variables[names.INHERIT + names.VAR_SESSION] == sid
        assert orig.channel == f"Local/13800138000@{names.CONTEXT_CALLBACK_OUT}"

        async def done():
            while (await list_callbacks(a, session_id=sid))[0]["status"] != "done":
                await asyncio.sleep(0.05)

        await asyncio.wait_for(done(), 10)
        # the customer answered and waits in the queue; an agent answers: AgentConnect for that channel
        channel_id = orig.action["ChannelId"]
        channel = next(name for name, v in fake_ami.channels.items() if v.get("UNIQUEID") == channel_id)
        await fake_ami.emit({"Event": "AgentConnect", "Privilege": "agent,all", "Channel": channel,
                             "Uniqueid": channel_id, "DestChannel": "PJSIP/1001-00000031", "Queue": "support",
                             "Interface": "PJSIP/1001", "MemberName": "Agent One", "HoldTime": 4, "RingTime": 1})
        pop = (await alice.recv_type("pop", timeout=10))["data"]
        assert pop["session_id"] == sid  # the same contact, with everything the caller did
        kinds = [t["kind"] for t in pop["timeline"]]
        for kind in ("choice", "transfer", "callback_requested", "callback_attempt", "callback_result",
                     "agent_connect"):
            assert kind in kinds, kind
        assert pop["callbacks"][0]["status"] == "done"
        events = await a.store.events(sid)
        assert len([e for e in events if e["kind"] == "agent_connect"]) == 1
    finally:
        await alice.close()
