#!/usr/bin/env python3
"""Agent push benchmark: how soon the desk shows what the caller did on a page
the agent texted.

For each desk bus (``local``: one server on SQLite; ``postgres`` / ``redis``:
two servers on one PostgreSQL, the caller's page on server A, the agent's desk
WebSocket on server B): a demo call is offered to the agent, the router guide
is pushed (``POST /api/visual/push``), an HTTP client that keeps cookies like a
phone opens the link and taps through the guide N times (next / previous).
Measured: from sending the phone's request to the signed ``push`` message with
the new status arriving on the desk socket (push, open, each tap), and the
server time of the tap itself (``Server-Timing``), which does not wait for
the desks.

    .venv/bin/python bench/desk_push.py --taps 60
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402

from handoff import Desk, drop_database, machine, pg_database, server  # noqa: E402

LINK_RE = re.compile(r"https?://\S+?/v/[A-Za-z0-9_-]{36}")
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"')


async def push_message(desk: Desk, check) -> dict:
    while True:
        msg = await desk.next("push")
        if check(msg["data"]["push"]):
            return msg


def activity(panel: dict) -> int:
    return panel["sent"][0]["activity_total"] if panel["sent"] else 0


async def run(tmp: Path, bus: str, taps: int) -> dict:
    from ivr.auth import AccountStore
    from ivr.server import stop_app
    from ivr.store.models_handoff import offers_table
    from ivr.testing.callers import SimLikeCaller
    from ivr.testing.fake_ami import FakeAmiServer
    from ivr.testing.fake_asterisk import FakeAsterisk

    fake_ami = FakeAmiServer()
    await fake_ami.start()
    dbname = None
    url = f"sqlite:///{tmp / 'push.db'}" if bus == "local" else None
    if url is None:
        url, dbname = await pg_database()
    settings = {"desk_bus": bus, "bus_channel": "ivr_bench_push", "desk_token": "bench-desk-token"}
    servers = [await server(tmp, url, fake_ami.port, "a", **settings)]
    if bus != "local":
        servers.append(await server(tmp, url, fake_ami.port, "b", **settings))
    a, b = servers[0][0], servers[-1][0]
    base_a = f"http://127.0.0.1:{a.config.http_port}"
    desk = Desk(f"http://127.0.0.1:{b.config.http_port}")
    phone = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    timings: dict[str, list[float]] = {"push": [], "open": [], "tap": [], "tap_server": []}
    try:
        await AccountStore(a.store.engine).create("alice", "alice-pass-1", interface="PJSIP/1001")
        call = FakeAsterisk("127.0.0.1", a.config.agi_port, inputs=SimLikeCaller(["1", "3", "1"]),
                            script="demo_hotline")
        sid = (await asyncio.wait_for(call.run(), 30)).variables["IVR_SESSION"]
        await a.store.flush(sid)
        async with a.store.engine.begin() as conn:
            await conn.execute(offers_table.insert().values(session_id=sid, interface="PJSIP/1001", kind="connect",
                                                            at=dt.datetime.now(dt.timezone.utc)))
        await desk.open("alice", "alice-pass-1")
        await desk.next("offers")

        started = time.perf_counter()
        async with phone.post(f"{base_a}/api/visual/push", json={"session_id": sid, "node": "router_guide"},
                              headers={"Authorization": "Bearer bench-desk-token"}) as r:
            assert r.status == 201, await r.text()
        await push_message(desk, lambda p: p["sent"] and p["sent"][0]["state"] == "texted")
        timings["push"].append(time.perf_counter() - started)
        body = (await a.driver.visual_hub.sms.outbox(session_id=sid))[-1]["body"]
        link = LINK_RE.search(body).group(0)

        started = time.perf_counter()
        async with phone.get(link) as r:
            html = await r.text()
        panel = (await push_message(desk, lambda p: p["sent"][0]["state"] == "opened"))["data"]["push"]
        timings["open"].append(time.perf_counter() - started)
        csrf = CSRF_RE.search(html).group(1)
        seen = activity(panel)
        for i in range(taps):
            key = "1" if i % 2 == 0 else "2"  # next, previous: steps 1 and 2 in turn
            started = time.perf_counter()
            async with phone.post(link, data={"action": "tap", "value": key, "csrf": csrf},
                                  allow_redirects=False) as r:
                assert r.status == 303, r.status
                server_ms = float(r.headers["Server-Timing"].split("dur=")[1])
            panel = (await push_message(desk, lambda p, n=seen: activity(p) > n))["data"]["push"]
            timings["tap"].append(time.perf_counter() - started)
            timings["tap_server"].append(server_ms / 1000)
            seen = activity(panel)
    finally:
        await phone.close()
        if hasattr(desk, "ws"):
            await desk.close()
        else:
            await desk.http.close()
        for app, runner in servers:
            await stop_app(app, runner)
        await fake_ami.stop(shutdown_event=False)
        if dbname:
            await drop_database(dbname)
    out = {"bus": bus, "servers": len(servers), "taps": taps}
    for key, values in timings.items():
        values.sort()
        out[key] = (statistics.median(values), values[int(0.95 * (len(values) - 1))])
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", type=int, default=60)
    parser.add_argument("--buses", nargs="+", default=["local", "postgres", "redis"])
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(f"machine: {machine()}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bus in args.buses:
            (Path(tmp) / bus).mkdir()
            rows.append(await run(Path(tmp) / bus, bus, args.taps))
    print("| desk bus | servers | taps | push → desk ms | open → desk ms | tap → desk ms p50 / p95 | "
          "tap server ms p50 / p95 |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['bus']} | {r['servers']} | {r['taps']} | {r['push'][0] * 1000:.1f} | {r['open'][0] * 1000:.1f} | "
              f"{r['tap'][0] * 1000:.1f} / {r['tap'][1] * 1000:.1f} | "
              f"{r['tap_server'][0] * 1000:.1f} / {r['tap_server'][1] * 1000:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
