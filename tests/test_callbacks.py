"""Callbacks on real SQLite and PostgreSQL, dialled through a fake AMI over real sockets."""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from callback.api import CallbackError, cancel_callback, get_callback, list_callbacks, request_callback
from callback.scheduler import CallbackScheduler
from ivr import names
from ivr.ami import AmiClient
from ivr.store import TrailStore
from ivr.testing.fake_ami import FakeAmiServer, FakeQueue, FakeQueueMember

from .handoff_util import pg_database, wait_until


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path: Path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cb.db'}"
        return
    async with pg_database() as url:
        yield url


@pytest.fixture
async def fake():
    server = FakeAmiServer(originate_delay=0.01)
    server.add_queue(FakeQueue("support", members=[
        FakeQueueMember(f"Agent {i}", f"Local/agent{i}@ivr-agents") for i in range(1, 11)]))
    async with server:
        yield server


async def client(fake: FakeAmiServer) -> AmiClient:
    ami = AmiClient("127.0.0.1", fake.port, fake.username, fake.secret, initial_backoff=0.05, max_backoff=0.2,
                    action_timeout=3)
    await ami.start()
    await ami.wait_connected(5)
    return ami


def app_for(store: TrailStore, **settings) -> SimpleNamespace:
    config = SimpleNamespace(callback_max_attempts=3, callback_retry_interval=300, **settings)
    return SimpleNamespace(store=store, config=config, callbacks=None)


async def session(store: TrailStore, caller: str = "13800138000") -> str:
    sid = await store.create_session(flow_id="demo_hotline", flow_version="v1", channel="voice", caller=caller,
                                     language="zh-CN")
    await store.flush(sid)
    return sid


# ------------------------------------------------------------------ the API


async def test_request_update_cancel_one_open_request_per_number(db_url):
    store = await TrailStore.open(db_url)
    try:
        app = app_for(store)
        s1, s2 = await session(store), await session(store)
        first = await request_callback(app, s1, number="138-0013-8000", when="asap", queue="support",
                                       language="zh-CN", reason="billing question", channel="voice")
        assert set(first) == {"id", "number", "when", "queue", "status"}
        assert first["number"] == "13800138000" and first["when"] == "asap" and first["status"] == "pending"
        # the same number again, from another contact: the open request is updated, not duplicated
        slot = datetime.now(UTC) + timedelta(hours=2)
        second = await request_callback(app, s2, number="13800138000", when=slot, queue="support-en",
                                        language="en-US", reason=None, channel="web")
        assert second["id"] == first["id"] and second["when"] == slot.isoformat()
        stored = await get_callback(app, first["id"])
        assert stored["session_id"] == s2 and stored["queue"] == "support-en" and stored["channel"] == "web"
        assert len(await list_callbacks(app)) == 1
        # the trail of each session says so
        assert [e["data"]["updated"] for e in await store.events(s2) if e["kind"] == "callback_requested"] == [True]
        assert [e["data"]["number"] for e in await store.events(s1) if e["kind"] == "callback_requested"] == [
            "****8000"]
        # cancel: closed, so a new request for the number is a new one
        assert await cancel_callback(app, first["id"], by="caller")
        assert not await cancel_callback(app, first["id"], by="caller")
        assert (await get_callback(app, first["id"]))["status"] == "cancelled"
        third = await request_callback(app, s2, number="13800138000", when="asap", queue="support",
                                       language="zh-CN", reason=None, channel="voice")
        assert third["id"] != first["id"]
        assert any(e["kind"] == "callback_result" and e["data"]["outcome"] == "cancelled"
                   for e in await store.events(s2))
        assert await get_callback(app, "nope") is None
    finally:
        await store.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"number": "call me"}, "not a phone number"),
    ({"number": "12"}, "not a phone number"),
    ({"queue": "support,evil"}, "not a queue name"),
    ({"when": "yesterday"}, "ISO date"),
    ({"when": datetime(2020, 1, 1, tzinfo=UTC)}, "has passed"),
    ({"when": datetime.now(UTC) + timedelta(days=90)}, "30 days"),
    ({"mode": "robot_first"}, "mode must be"),
    ({"session_id": "no-such-session"}, "no session"),
])
async def test_bad_requests_are_refused(tmp_path, kwargs, message):
    store = await TrailStore.open(f"sqlite:///{tmp_path / 'bad.db'}")
    try:
        sid = await session(store)
        args = {"session_id": sid, "number": "13800138000", "when": "asap", "queue": "support", "language": "zh-CN",
                "reason": None, "channel": "voice", **kwargs}
        sid = args.pop("session_id")
        with pytest.raises(CallbackError, match=message):
            await request_callback(app_for(store), sid, **args)
    finally:
        await store.close()


# ------------------------------------------------------------- the scheduler


def scheduler(store, ami, name: str, **kw) -> CallbackScheduler:
    options = {"poll_interval": 0.1, "lease": 30.0, "concurrency": 10, "dial_timeout": 5.0}
    options.update(kw)
    return CallbackScheduler(store, ami, server_id=name, **options)


def dialled_ids(fake: FakeAmiServer) -> list[str]:
    return [o.variables.get(names.INHERIT + names.VAR_CALLBACK) for o in fake.originated]


async def test_two_schedulers_dial_each_of_100_requests_exactly_once(db_url, fake):
    stores = [await TrailStore.open(db_url), await TrailStore.open(db_url)]
    amis = [await client(fake), await client(fake)]
    schedulers = []
    try:
        app = app_for(stores[0])
        sids = [await stores[0].create_session(flow_id="demo_hotline", flow_version="v1", channel="voice",
                                               caller=f"1390000{i:04d}") for i in range(100)]
        await stores[0].flush()
        ids = [(await request_callback(app, sid, number=f"1390000{i:04d}", when="asap", queue="support",
                                       language="zh-CN", reason=None, channel="voice"))["id"]
               for i, sid in enumerate(sids)]
        schedulers = [scheduler(stores[0], amis[0], "server-a"), scheduler(stores[1], amis[1], "server-b")]
        started = time.perf_counter()
        for s in schedulers:
            s.start()

        async def all_done():
            return all(c["status"] == "done" for c in await list_callbacks(app, limit=200))

        await wait_until(all_done, timeout=40)
        elapsed = time.perf_counter() - started
        counts = collections.Counter(dialled_ids(fake))
        assert set(counts) == set(ids) and set(counts.values()) == {1}, counts.most_common(3)
        assert schedulers[0].dialled > 0 and schedulers[1].dialled > 0, "both schedulers took part"
        assert schedulers[0].dialled + schedulers[1].dialled == 100
        print(f"100 callbacks, 2 schedulers ({db_url.split(':')[0]}): {elapsed:.2f} s, "
              f"split {schedulers[0].dialled}/{schedulers[1].dialled}")
        # every request has one attempt and one answered result on its session's trail
        # (written by whichever server dialled it: let both writers finish)
        for st in stores:
            await st.flush()
        done = await list_callbacks(app, limit=1)
        events = await stores[0].events(done[0]["session_id"])
        assert [e["kind"] for e in events if e["kind"].startswith("callback_")] == [
            "callback_requested", "callback_attempt", "callback_result"]
        assert events[-1]["data"]["outcome"] == "answered"
    finally:
        for s in schedulers:
            await s.stop()
        for a in amis:
            await a.stop()
        for st in stores:
            await st.close()


async def test_ami_drop_during_originate_is_retried_not_lost(db_url, fake):
    store = await TrailStore.open(db_url)
    ami = await client(fake)
    sched = scheduler(store, ami, "server-a")
    try:
        app = app_for(store)
        sid = await session(store)
        request = await request_callback(app, sid, number="13800138000", when="asap", queue="support",
                                         language="zh-CN", reason=None, channel="voice")
        fake.delay_action("Originate", 5.0)  # Asterisk is slow to answer ...
        sched.start()
        await fake.wait_for_action("Originate")
        fake.clear_action_rules()
        await fake.drop()  # ... and the link drops before it does
        await ami.wait_connected(5)

        async def done():
            c = await get_callback(app, request["id"])
            return c if c["status"] == "done" else None

        final = await wait_until(done, timeout=15)
        assert len(fake.actions_named("Originate")) == 2
        assert final["attempts"] == 1  # the lost attempt was not counted
        results = [e["data"] for e in await store.events(sid) if e["kind"] == "callback_result"]
        assert [r["outcome"] for r in results] == ["ami_lost", "answered"]
        assert "AmiDisconnected" in results[0]["reason"] and results[0]["status"] == "pending"
    finally:
        await sched.stop()
        await ami.stop()
        await store.close()


async def test_retries_stop_at_the_limit_with_the_reason_on_the_trail(db_url, fake):
    store = await TrailStore.open(db_url)
    ami = await client(fake)
    sched = scheduler(store, ami, "server-a")
    try:
        app = app_for(store)
        sid = await session(store, "13911112222")
        fake.set_originate_outcome(f"Local/13911112222@{names.CONTEXT_CALLBACK_OUT}", "busy")
        request = await request_callback(app, sid, number="13911112222", when="asap", queue="support",
                                         language="zh-CN", reason=None, channel="voice", max_attempts=3,
                                         retry_interval=1)
        sched.start()

        async def failed():
            c = await get_callback(app, request["id"])
            return c if c["status"] == "failed" else None

        final = await wait_until(failed, timeout=15)
        assert final["attempts"] == 3 and final["last_outcome"] == "busy"
        assert "attempt limit (3) reached" in final["last_reason"]
        assert len(fake.originated) == 3
        events = [e for e in await store.events(sid) if e["kind"].startswith("callback_")]
        attempts = [e["data"]["attempt"] for e in events if e["kind"] == "callback_attempt"]
        results = [e["data"] for e in events if e["kind"] == "callback_result"]
        assert attempts == [1, 2, 3]
        assert [r["outcome"] for r in results] == ["busy"] * 3
        assert [r["status"] for r in results] == ["pending", "pending", "failed"]
        assert "attempt limit (3) reached" in results[-1]["reason"]
        # the hang-up cause Asterisk reported for the failed channel is kept
        assert all("cause_txt" in r for r in results)
        # a failed request frees the number
        assert (await request_callback(app, sid, number="13911112222", when="asap", queue="support",
                                       language="zh-CN", reason=None, channel="voice"))["id"] != request["id"]
    finally:
        await sched.stop()
        await ami.stop()
        await store.close()


async def test_a_claim_whose_scheduler_died_is_picked_up_again(db_url, fake):
    store = await TrailStore.open(db_url)
    ami = await client(fake)
    dead = scheduler(store, ami, "server-dead", lease=0.3)
    alive = scheduler(store, ami, "server-alive")
    try:
        app = app_for(store)
        sid = await session(store)
        request = await request_callback(app, sid, number="13800138000", when="asap", queue="support",
                                         language="zh-CN", reason=None, channel="voice")
        claimed = await dead.claim("support", 5)  # claims ... and dies before dialling
        assert [c["id"] for c in claimed] == [request["id"]]
        assert await alive.claim("support", 5) == []  # the lease holds
        await asyncio.sleep(0.4)
        assert await alive.run_once() == 1

        async def done():
            c = await get_callback(app, request["id"])
            return c if c["status"] == "done" else None

        final = await wait_until(done)
        assert final["attempts"] == 2 and dialled_ids(fake) == [request["id"]]
        attempt = [e["data"] for e in await store.events(sid) if e["kind"] == "callback_attempt"][-1]
        assert attempt["reclaimed_from"] == "server-dead" and attempt["server"] == "server-alive"
    finally:
        await ami.stop()
        await store.close()


async def test_no_free_member_means_no_dial(tmp_path, fake):
    store = await TrailStore.open(f"sqlite:///{tmp_path / 'busy.db'}")
    ami = await client(fake)
    sched = scheduler(store, ami, "server-a")
    try:
        for member in fake.queues["support"].members:
            member.status = 2  # in use
        app = app_for(store)
        sid = await session(store)
        await request_callback(app, sid, number="13800138000", when="asap", queue="support", language="zh-CN",
                               reason=None, channel="voice")
        assert await sched.run_once() == 0 and fake.originated == []
        fake.queues["support"].members[3].status = 1
        assert await sched.run_once() == 1
        await wait_until(lambda: asyncio.sleep(0, bool(fake.originated)))
        assert fake.originated[0].channel == f"Local/13800138000@{names.CONTEXT_CALLBACK_OUT}"
        action = fake.originated[0].action
        assert action["Context"] == names.CONTEXT_CALLBACK and action["Exten"] == names.EXTEN_CALLBACK_CUSTOMER
        assert action["ChannelId"].startswith("cb-")
        variables = fake.originated[0].variables
        assert variables["__IVR_SESSION"] == sid and variables["IVR_CALLBACK_QUEUE"] == "support"
    finally:
        await sched.stop()
        await ami.stop()
        await store.close()


async def test_agent_first_rings_the_agent_then_reports_the_customer_dial(tmp_path, fake):
    store = await TrailStore.open(f"sqlite:///{tmp_path / 'af.db'}")
    ami = await client(fake)
    sched = scheduler(store, ami, "server-a")
    try:
        app = app_for(store)
        sid = await session(store)
        request = await request_callback(app, sid, number="13800138000", when="asap", queue="support",
                                         language="zh-CN", reason=None, channel="voice", mode="agent_first")
        sched.start()
        await wait_until(lambda: asyncio.sleep(0, bool(fake.originated)))
        orig = fake.originated[0]
        assert orig.channel.startswith("Local/agent") and orig.action["Exten"] == names.EXTEN_CALLBACK_AGENT
        assert orig.variables["IVR_CALLBACK_NUMBER"] == "13800138000"
        await asyncio.sleep(0.1)
        # the dialplan reports the customer leg (extensions.conf [ivr-callback] agent)
        await fake.emit({"Event": "UserEvent", "Privilege": "user,all", "UserEvent": names.USEREVENT_CALLBACK_DIAL,
                         "Request": request["id"], "DialStatus": "NOANSWER"})

        async def retried():
            c = await get_callback(app, request["id"])
            return c if c["status"] == "pending" and c["attempts"] == 1 else None

        final = await wait_until(retried)
        assert final["last_outcome"] == "noanswer" and final["agent_interface"].startswith("Local/agent")
    finally:
        await sched.stop()
        await ami.stop()
        await store.close()
