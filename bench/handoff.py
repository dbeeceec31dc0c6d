#!/usr/bin/env python3
"""Agent handoff benchmark: screen-pop latency and callback claim throughput.

1. Screen pop: a fake AMI sends ``AgentConnect`` for a live call of server A;
   the time until a desk WebSocket (signed-in agent) on server B holds the
   pop (the trail of ~60 events, previous contacts, callbacks), through each
   desk bus: ``local`` (one server, SQLite), ``postgres`` (NOTIFY, two
   servers on one PostgreSQL), ``redis`` (pub/sub, two servers).
2. Callbacks: two schedulers (two stores, two AMI links) race over N due
   requests on SQLite and on PostgreSQL, fake AMI answering every Originate
   after 10 ms; requests per second until all are done, and a check that each
   was dialled exactly once.

    .venv/bin/python bench/handoff.py --pops 40 --callbacks 300
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import hmac
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

PG = os.environ.get("IVR_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "bench-secret-0123456789abcdef0123"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def pg_database() -> tuple[str, str]:
    admin = await asyncpg.connect(PG.replace("postgresql+asyncpg", "postgresql"))
    name = f"ivr_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    return PG.rsplit("/", 1)[0] + "/" + name, name


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def server(tmp: Path, url: str, ami_port: int, name: str, **settings):
    from ivr.config import load_config
    from ivr.server import build_app, start_app

    config = load_config(None, {
        "flows_dir": str(ROOT / "flows"), "database_url": url, "agi_port": 0, "http_port": 0,
        "reload_interval": 0, "sounds_dir": str(tmp / f"s-{name}"), "secret_key": SECRET,
        "ami_host": "127.0.0.1", "ami_port": ami_port, "ami_username": "ivr", "ami_secret": "secret",
        "callbacks": False, **settings}, env={})
    app = await build_app(config)
    runner, _ = await start_app(app)
    await app.ami.wait_connected(5)
    return app, runner


class Desk:
    def __init__(self, base: str):
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def open(self, name: str, password: str) -> None:
        async with self.http.get(f"{self.base}/login") as r:
            token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text()).group(1)
        async with self.http.post(f"{self.base}/login", data={"name": name, "password": password,
                                                              "csrf_token": token}) as r:
            html = await r.text()
        self.key = _unb64(re.search(r'data-ws-key="([^"]+)"', html).group(1))
        ws_token = re.search(r'data-ws-token="([^"]+)"', html).group(1)
        self.ws = await self.http.ws_connect(f"{self.base}/desk/ws?token={ws_token}",
                                             headers={"Origin": self.base})

    async def next(self, kind: str) -> dict:
        while True:
            outer = json.loads((await self.ws.receive(timeout=10)).data)
            mac = base64.urlsafe_b64encode(hmac.new(self.key, outer["body"].encode(), hashlib.sha256).digest())
            assert mac.rstrip(b"=").decode() == outer["mac"]
            body = json.loads(outer["body"])
            if body["type"] == kind:
                return body

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


async def bench_pops(tmp: Path, bus: str, n: int) -> dict:
    from ivr.auth import AccountStore
    from ivr.engine.types import Event
    from ivr.server import LiveCall, stop_app
    from ivr.testing.fake_ami import FakeAmiServer
    from ivr.server import stop_app as _stop  # noqa: F401

    fake = FakeAmiServer()
    await fake.start()
    dbname = None
    if bus == "local":
        url = f"sqlite:///{tmp / 'pop.db'}"
    else:
        url, dbname = await pg_database()
    servers = [await server(tmp, url, fake.port, "a", desk_bus=bus, bus_channel="ivr_bench")]
    if bus != "local":
        servers.append(await server(tmp, url, fake.port, "b", desk_bus=bus, bus_channel="ivr_bench"))
    a, b = servers[0][0], servers[-1][0]
    await AccountStore(a.store.engine).create("alice", "alice-pass-1", interface="PJSIP/1001")
    desk = Desk(f"http://127.0.0.1:{b.config.http_port}")
    await desk.open("alice", "alice-pass-1")
    latencies = []
    try:
        for i in range(n):
            sid = await a.store.create_session(flow_id="demo_hotline", flow_version="v", channel="voice",
                                               caller="13800138000", language="zh-CN", uniqueid=f"1.{i}")
            a.store.append(sid, [Event("prompt", f"n{j}", {"text": "您好" * 10}) for j in range(60)], "voice")
            uid = f"1795618562.{i}"
            a.live_calls[sid] = LiveCall(sid, None, f"PJSIP/trunk-{i:08x}", uid, "demo_hotline")
            await a.store.flush(sid)
            started = time.perf_counter()
            await fake.emit({"Event": "AgentConnect", "Privilege": "agent,all", "Channel": f"PJSIP/trunk-{i:08x}",
                             "Uniqueid": uid, "Queue": "support", "Interface": "PJSIP/1001",
                             "MemberName": "Agent One", "DestChannel": "PJSIP/1001-00000001"})
            pop = await desk.next("pop")
            latencies.append(time.perf_counter() - started)
            assert pop["data"]["session_id"] == sid
            a.live_calls.pop(sid)
    finally:
        await desk.close()
        for app, runner in servers:
            await stop_app(app, runner)
        await fake.stop(shutdown_event=False)
        if dbname:
            await drop_database(dbname)
    latencies.sort()
    return {"bus": bus, "servers": len(servers), "n": n, "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (n - 1))], "max": latencies[-1]}


async def bench_callbacks(tmp: Path, backend: str, n: int) -> dict:
    from callback.api import list_callbacks, request_callback
    from callback.scheduler import CallbackScheduler
    from ivr.ami import AmiClient
    from ivr.store import TrailStore
    from ivr.testing.fake_ami import FakeAmiServer, FakeQueue, FakeQueueMember

    fake = FakeAmiServer(originate_delay=0.01)
    fake.add_queue(FakeQueue("support", members=[FakeQueueMember(f"A{i}", f"PJSIP/10{i:02d}") for i in range(20)]))
    await fake.start()
    dbname = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'cb.db'}"
    else:
        url, dbname = await pg_database()
    stores = [await TrailStore.open(url), await TrailStore.open(url)]
    app = SimpleNamespace(store=stores[0], config=None, callbacks=None)
    for i in range(n):
        sid = await stores[0].create_session(flow_id="f", flow_version="v", channel="voice", caller=f"139{i:08d}")
        await stores[0].flush(sid)
        await request_callback(app, sid, number=f"139{i:08d}", when="asap", queue="support", language="zh-CN",
                               reason=None, channel="voice")
    amis, scheds = [], []
    for i, store in enumerate(stores):
        ami = AmiClient("127.0.0.1", fake.port, "ivr", "secret")
        await ami.start()
        await ami.wait_connected(5)
        amis.append(ami)
        scheds.append(CallbackScheduler(store, ami, server_id=f"s{i}", poll_interval=0.05, concurrency=20))
    started = time.perf_counter()
    for s in scheds:
        s.start()
    while any(c["status"] != "done" for c in await list_callbacks(app, limit=n + 10)):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    counts = collections.Counter(o.variables.get("__IVR_CALLBACK") for o in fake.originated)
    for s in scheds:
        await s.stop()
    for ami in amis:
        await ami.stop()
    for store in stores:
        await store.close()
    await fake.stop(shutdown_event=False)
    if dbname:
        await drop_database(dbname)
    return {"backend": backend, "n": n, "seconds": elapsed, "per_s": n / elapsed,
            "once": len(counts) == n and set(counts.values()) == {1},
            "split": "/".join(str(s.dialled) for s in scheds)}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return f"{os.cpu_count()} CPUs ({cpu}), {mem / 1024 / 1024:.0f} GiB RAM, Python {platform.python_version()}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pops", type=int, default=40)
    parser.add_argument("--callbacks", type=int, default=300)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [await bench_pops(Path(tmp) / bus, bus, args.pops) for bus in ("local", "postgres", "redis")
                if (Path(tmp) / bus).mkdir() is None]
        print("| desk bus | servers | pops | p50 ms | p95 ms | max ms |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['bus']} | {r['servers']} | {r['n']} | {r['p50'] * 1000:.1f} | {r['p95'] * 1000:.1f} | "
                  f"{r['max'] * 1000:.1f} |")
        print()
        rows = [await bench_callbacks(Path(tmp) / f"cb-{b}", b, args.callbacks) for b in ("sqlite", "postgresql")
                if (Path(tmp) / f"cb-{b}").mkdir() is None]
        print("| database | requests | seconds | requests/s | each dialled once | split |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['backend']} | {r['n']} | {r['seconds']:.2f} | {r['per_s']:.0f} | {r['once']} | "
                  f"{r['split']} |")


if __name__ == "__main__":
    asyncio.run(main())
