"""Faults: the AMI link drops (during a callback's Originate, during a queue
call) and Asterisk restarts.

Asterisk is the fake manager of :mod:`ivr.testing.fake_ami` over real sockets:
it goes on with an Originate when the link drops (the customer's phone rings
all the same), does not replay the events a client missed, and models the
AstDB note the shipped callback dialplan writes for each dial.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from callback.api import get_callback, request_callback
from callback.scheduler import CallbackScheduler
from ivr import names
from ivr.ami import AmiClient
from ivr.auth import AccountStore
from ivr.store import TrailStore
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_ami import DROP_STAGES, FakeAmiServer, FakeQueue, FakeQueueMember
from ivr.testing.fake_asterisk import FakeAsterisk
from ivr.testing.handoff import QueueApp
from tests.handoff_util import DeskClient, base_url, start_server, wait_until
from .support import wait_ended


def app_for(store: TrailStore) -> SimpleNamespace:
    config = SimpleNamespace(callback_max_attempts=3, callback_retry_interval=300)
    return SimpleNamespace(store=store, config=config, callbacks=None)


async def new_session(store: TrailStore, caller: str) -> str:
    sid = await store.create_session(flow_id="demo_hotline", flow_version="v1", channel="voice", caller=caller,
                                     language="zh-CN")
    await store.flush(sid)
    return sid


async def ami_client(fake: FakeAmiServer, **kw) -> AmiClient:
    options = {"initial_backoff": 0.05, "max_backoff": 0.2, "action_timeout": 3}
    options.update(kw)
    ami = AmiClient("127.0.0.1", fake.port, fake.username, fake.secret, **options)
    await ami.start()
    await ami.wait_connected(5)
    return ami


def callback_fake() -> FakeAmiServer:
    fake = FakeAmiServer(originate_delay=0.05)
    fake.add_queue(FakeQueue("support", members=[
        FakeQueueMember(f"Agent {i}", f"Local/agent{i}@ivr-agents") for i in range(1, 4)]))
    return fake


def executed_for(fake: FakeAmiServer, request_id: str) -> list:
    """Originates Asterisk ran for this request: each created a channel and rang the customer."""
    return [o for o in fake.originated if o.variables.get(names.INHERIT + names.VAR_CALLBACK) == request_id]


def sent_for(fake: FakeAmiServer, request_id: str) -> int:
    return sum(1 for a in fake.actions_named("Originate")
               if any(f"{names.INHERIT}{names.VAR_CALLBACK}={request_id}" in v
                      for v in (a.get("Variable") if isinstance(a.get("Variable"), list) else [a.get("Variable")])
                      if v))


# --------------------------------------------------------------------------- drop during Originate


@pytest.mark.reliability("ami.drop-during-originate")
async def test_drop_at_every_moment_of_an_originate_dials_once(tmp_path, rel):
    """For each moment the link can drop, and for a customer who answers and one who is
    busy: the callback is dialled exactly once and its outcome is not lost."""
    store = await TrailStore.open(f"sqlite:///{tmp_path / 'cb.db'}")
    fake = callback_fake()
    await fake.start()
    ami = await ami_client(fake)
    sched = CallbackScheduler(store, ami, server_id="server-a", poll_interval=0.1, lease=30.0, dial_timeout=5.0)
    app = app_for(store)
    cases = [(stage, outcome) for stage in DROP_STAGES for outcome in ("answered", "busy")]
    lost = twice = 0
    try:
        sched.start()
        for n, (stage, outcome) in enumerate(cases):
            number = f"1380013{n:04d}"
            fake.set_originate_outcome(f"Local/{number}@{names.CONTEXT_CALLBACK_OUT}", outcome)
            sid = await new_session(store, number)
            fake.drop_during_originate(stage)
            logins = fake.logins
            request = await request_callback(app, sid, number=number, when="asap", queue="support",
                                             language="zh-CN", reason=None, channel="voice")
            sched.wake()

            async def settled():
                c = await get_callback(app, request["id"])
                if c["status"] == "done" or (c["status"] == "pending" and c["last_outcome"] == outcome):
                    return c
                return None

            final = await wait_until(settled, timeout=20)
            assert fake.logins > logins, f"{stage}: the link must have dropped and come back"
            executed = executed_for(fake, request["id"])
            results = [e["data"] for e in await store.events(sid) if e["kind"] == "callback_result"]
            twice += max(0, len(executed) - 1)
            lost += 0 if executed and results and results[-1]["outcome"] == outcome else 1
            # exactly one Originate produced a channel (rang the customer)
            assert len(executed) == 1, (stage, outcome, len(executed))
            # "before": Asterisk never ran the first one; the scheduler sent it again
            assert sent_for(fake, request["id"]) == (2 if stage == "before" else 1), stage
            assert final["attempts"] == 1, (stage, final)
            if outcome == "answered":
                assert final["status"] == "done"
            else:
                assert final["status"] == "pending" and final["last_outcome"] == "busy"
            expected = ["ami_lost", outcome] if stage == "before" else [outcome]
            assert [r["outcome"] for r in results] == expected, (stage, results)
            if stage != "before":  # the trail says how the outcome was known
                assert "read back from Asterisk" in results[-1].get("note", ""), results[-1]
        rel.tried(len(cases))
        rel.lost(lost, f"{lost} callbacks whose outcome was lost")
        rel.lost(twice, f"{twice} customers rung twice")
        rel.note(f"link dropped at {len(DROP_STAGES)} moments of an Originate ({', '.join(DROP_STAGES)}), "
                 "customer answering or busy: each callback dialled exactly once, its outcome read back "
                 "from the AstDB note of the callback dialplan (DBGet) when the link returned")
        assert lost == 0 and twice == 0
    finally:
        await sched.stop()
        await ami.stop()
        await fake.stop(shutdown_event=False)
        await store.close()


@pytest.mark.reliability("ami.drop-during-originate")
async def test_scheduler_dies_after_the_originate_went_through(tmp_path, rel):
    """The link drops after the Originate, and that scheduler stops before it can read
    the outcome back: the one that reclaims the request reads it, and does not dial."""
    store = await TrailStore.open(f"sqlite:///{tmp_path / 'cb.db'}")
    fake = callback_fake()
    await fake.start()
    ami_dead, ami_alive = await ami_client(fake), await ami_client(fake)
    dead = CallbackScheduler(store, ami_dead, server_id="server-dead", poll_interval=0.1, lease=1.0,
                             dial_timeout=5.0)
    alive = CallbackScheduler(store, ami_alive, server_id="server-alive", poll_interval=0.1, lease=30.0,
                              dial_timeout=5.0)
    app = app_for(store)
    try:
        sid = await new_session(store, "13800138000")
        request = await request_callback(app, sid, number="13800138000", when="asap", queue="support",
                                         language="zh-CN", reason=None, channel="voice")
        fake.drop_during_originate("after-response")
        fake.delay_action("DBGet", 10.0)  # the dead server gets no answer when it asks ...
        dead.start()
        await fake.wait_for_action("Originate")
        await fake.wait_for_action("DBGet")
        await dead.stop(grace=0)  # ... and is killed while it waits
        await ami_dead.stop()
        fake.clear_action_rules()
        await asyncio.sleep(1.2)  # its lease runs out
        alive.start()

        async def done():
            c = await get_callback(app, request["id"])
            return c if c["status"] == "done" else None

        final = await wait_until(done, timeout=20)
        executed = executed_for(fake, request["id"])
        results = [e["data"] for e in await store.events(sid) if e["kind"] == "callback_result"]
        rel.tried(1)
        rel.lost(max(0, len(executed) - 1), "customer rung twice after a reclaim")
        assert len(executed) == 1 and sent_for(fake, request["id"]) == 1
        assert final["attempts"] == 1 and final["closed_by"] == "server-alive"
        assert [r["outcome"] for r in results] == ["answered"]
        assert "read back from Asterisk" in results[0]["note"] and "server-dead" in results[0]["note"]
        rel.note("a scheduler killed after its Originate went through: the one that reclaimed the "
                 "request read the outcome back and did not dial again")
    finally:
        await alive.stop()
        await ami_alive.stop()
        await fake.stop(shutdown_event=False)
        await store.close()


# --------------------------------------------------------------------------- queue calls


DEMO_TO_AGENT = ["1", "1", "20240001#", "110105199003071239#", "1", "0"]


@asynccontextmanager
async def desk_server(tmp_path: Path, flows_dir: Path, fake: FakeAmiServer, **settings):
    """A full server with AMI and alice's desk signed in (interface PJSIP/1001)."""
    from ivr.server import stop_app

    app, runner = await start_server(tmp_path, flows_dir, database_url=f"sqlite:///{tmp_path / 'h.db'}",
                                     ami_port=fake.port, **settings)
    accounts = AccountStore(app.store.engine)
    await accounts.create("alice", "alice-pass-1", interface="PJSIP/1001")
    alice = DeskClient(base_url(app))
    try:
        await alice.login("alice", "alice-pass-1")
        await alice.page()
        await alice.connect()
        yield app, alice
    finally:
        await alice.close()
        await stop_app(app, runner)


def desk_fake() -> FakeAmiServer:
    fake = FakeAmiServer(originate_delay=0.05)
    fake.add_queue(FakeQueue("support", holdtime=95, talktime=180, members=[
        FakeQueueMember("Agent One", "PJSIP/1001"), FakeQueueMember("Agent Two", "PJSIP/1002")]))
    return fake


async def run_call(app, keys, queue: QueueApp):
    fake = FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(keys), script="demo_hotline")
    queue.bind(fake)
    result = await fake.run()
    sid = result.variables.get(names.VAR_SESSION)
    return result, sid, await wait_ended(app, sid), await app.store.events(sid)


async def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.mark.reliability("ami.drop-during-queue-call")
async def test_link_drops_during_queue_calls(tmp_path, flows_dir, rel):
    fake = desk_fake()
    await fake.start()
    checks: list[str] = []
    try:
        async with desk_server(tmp_path, flows_dir, fake, callbacks=False) as (app, alice):
            # 1. the link goes down while the caller waits; the agent answers meanwhile
            #    (AgentConnect lost); the link is back while they talk
            queue = QueueApp(fake, member="PJSIP/1001", member_name="Agent One", hold=1.0, talk=8)
            call = asyncio.create_task(run_call(app, DEMO_TO_AGENT + ["4"], queue))
            await wait_for(lambda: queue.calls)
            await fake.stop()
            await queue.connected.wait()
            await fake.start()
            pop = (await alice.recv_type("pop", timeout=20))["data"]
            queue.hangup.set()
            result, sid, session, events = await asyncio.wait_for(call, 30)
            connects = [e["data"] for e in events if e["kind"] == "agent_connect"]
            assert pop["session_id"] == sid
            assert len(connects) == 1 and connects[0]["via"] == "MEMBERINTERFACE", connects
            assert connects[0]["interface"] == "PJSIP/1001" and session["agent"] == "Agent One"
            assert session["outcome"] == "transfer" and events[-1]["kind"] == "session_end"
            assert [(e["data"]["score"]) for e in events if e["kind"] == "survey"] == [4]
            checks.append("answered during the outage: who answered read back, pop delivered on reconnect")

            # 2. the link drops while they talk (AgentConnect was received): nothing doubled
            queue = QueueApp(fake, member="PJSIP/1001", member_name="Agent One", talk=8)
            call = asyncio.create_task(run_call(app, DEMO_TO_AGENT + ["5"], queue))
            pop = (await alice.recv_type("pop", timeout=20))["data"]
            logins = fake.logins
            await fake.drop()
            await wait_for(lambda: fake.logins > logins)
            await asyncio.sleep(0.3)
            queue.hangup.set()
            result, sid, session, events = await asyncio.wait_for(call, 30)
            connects = [e["data"] for e in events if e["kind"] == "agent_connect"]
            assert pop["session_id"] == sid
            assert [c["via"] for c in connects] == ["AgentConnect"], connects
            assert session["outcome"] == "transfer" and events[-1]["kind"] == "session_end"
            checks.append("dropped while talking: one agent_connect, call unaffected")

            # 3. the link is down for the whole queue call, which ends before it returns
            await fake.stop()
            queue = QueueApp(fake, member="PJSIP/1001", member_name="Agent One", talk=0.3)
            result, sid, session, events = await asyncio.wait_for(
                run_call(app, DEMO_TO_AGENT + ["3"], queue), 30)
            assert session["outcome"] == "transfer" and events[-1]["kind"] == "session_end"
            fake.channels.clear()  # the call is over: Asterisk no longer has the channel
            await fake.start()
            await app.ami.wait_connected(15)

            async def unknown():
                return [e["data"] for e in await app.store.events(sid) if e["kind"] == "agent_unknown"]

            marked = await wait_until(unknown, timeout=10)
            assert len(marked) == 1 and "unknown" in marked[0]["reason"], marked
            assert not [e for e in await app.store.events(sid) if e["kind"] == "agent_connect"]
            checks.append("call over before the link returned: marked agent_unknown with the reason")
        rel.tried(3)
        rel.lost(0)
        rel.note("; ".join(checks))
    finally:
        await fake.stop(shutdown_event=False)


# --------------------------------------------------------------------------- Asterisk restart


@pytest.mark.reliability("ami.asterisk-restart")
async def test_reconnect_back_off_is_capped(rel):
    fake = FakeAmiServer()
    await fake.start()
    ami = await ami_client(fake, initial_backoff=0.05, max_backoff=0.4)
    attempts: list[float] = []
    ami.on_state_change(lambda state: attempts.append(time.monotonic()) if state == "connecting" else None)
    try:
        await fake.stop()  # Asterisk goes down: connections refused
        await asyncio.sleep(3.0)
        await fake.start()
        await ami.wait_connected(5)
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        rel.tried(len(attempts))
        rel.figure("reconnect attempts in a 3 s outage", len(attempts))
        rel.figure("longest gap between attempts", round(max(gaps), 2), "s")
        # doubling from 0.05 s, never more than the cap (0.4 s) plus scheduling slack
        assert len(attempts) >= 6
        assert max(gaps) < 0.4 + 0.5
        assert gaps[0] < gaps[3]
    finally:
        await ami.stop()
        await fake.stop(shutdown_event=False)


@pytest.mark.reliability("ami.asterisk-restart")
async def test_asterisk_restart_callbacks_once_and_pops_again(tmp_path, flows_dir, rel):
    fake = desk_fake()
    await fake.start()
    try:
        async with desk_server(tmp_path, flows_dir, fake, callback_poll_interval=0.2) as (app, alice):
            sid = await new_session(app.store, "13800138000")
            await fake.stop()  # Asterisk restarts: Shutdown, then connections refused
            await wait_for(lambda: app.ami.state != "connected")
            requests = []
            for number in ("13800138001", "13800138002"):
                requests.append(await request_callback(app, sid if not requests else await new_session(
                    app.store, number), number=number, when="asap", queue="support", language="zh-CN",
                    reason=None, channel="voice"))
            await asyncio.sleep(1.5)
            assert not fake.originated, "nothing can be dialled while Asterisk is down"
            fake.channels.clear()  # a fresh Asterisk: no channels (AstDB and queues.conf stay)
            await fake.start()
            await app.ami.wait_connected(15)

            async def all_done():
                rows = [await get_callback(app, r["id"]) for r in requests]
                return rows if all(r["status"] == "done" for r in rows) else None

            await wait_until(all_done, timeout=20)
            dialled = {r["id"]: len(executed_for(fake, r["id"])) for r in requests}
            # a new queue call after the restart pops at the agent's desk
            queue = QueueApp(fake, member="PJSIP/1001", member_name="Agent One", talk=0.5)
            call = asyncio.create_task(run_call(app, DEMO_TO_AGENT + ["4"], queue))
            pop = (await alice.recv_type("pop", timeout=20))["data"]
            result, call_sid, session, events = await asyncio.wait_for(call, 30)
            rel.tried(len(requests) + 1)
            rel.lost(sum(1 for n in dialled.values() if n == 0), "callbacks not dialled after the restart")
            rel.lost(sum(n - 1 for n in dialled.values() if n > 1), "callbacks dialled twice")
            rel.note("Asterisk stopped (refusing) then started fresh: the client reconnected, the 2 callbacks "
                     "requested meanwhile were dialled once each, and a new queue call popped at the desk")
            assert list(dialled.values()) == [1, 1]
            assert pop["session_id"] == call_sid
            assert [e["data"]["via"] for e in events if e["kind"] == "agent_connect"] == ["AgentConnect"]
    finally:
        await fake.stop(shutdown_event=False)
