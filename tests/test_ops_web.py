"""The issue's "done when": after a batch of demo calls through the fake Asterisk,
the dashboard shows where callers dropped out on the graph, its figures match
the trail, and /metrics reports the same counts. Plus sign-in, bad requests,
CSV export, /readyz, and the dashboard in headless Chromium."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ivr.auth import AUTH_KEY
from ivr.ops.graph import drop_colour
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import SILENCE, FakeAsterisk

from .conftest import ROOT

FULL = ["1", "1", "20240001#", "110105199003071239#", "1", "1"]  # balance, then "end the call"
BATCH = (
    [FULL] * 8                          # completed at goodbye
    + [FULL[:5] + ["0"]] * 4            # key 0 after the balance: transfer
    + [FULL[:3]] * 6                    # hang up when asked for the ID number
    + [["1"]] * 2                       # hang up at the main menu
    + [["1", "3", "1"]] * 5             # outages, then goodbye: completed
    + [["1", SILENCE, SILENCE, SILENCE]] * 2  # three silences: failure exit to a person
)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT = ROOT / "docs" / "img" / "ops-dashboard.png"


def _client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(s: aiohttp.ClientSession, base: str, name: str, password: str) -> None:
    async with s.get(f"{base}/login") as r:
        token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text()).group(1)
    async with s.post(f"{base}/login", data={"name": name, "password": password, "csrf_token": token},
                      allow_redirects=False) as r:
        assert r.status == 303, await r.text()


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def _scrape(s: aiohttp.ClientSession, base: str) -> dict[tuple[str, tuple], float]:
    async with s.get(f"{base}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return _metrics(await r.text())


@pytest.fixture
async def ops(server):
    accounts = server.web[AUTH_KEY].accounts
    await accounts.create("sam", "sam-pass-12", role="supervisor")
    await accounts.create("alice", "alice-pass-1", interface="PJSIP/1001")
    return server, f"http://127.0.0.1:{server.config.http_port}"


async def test_done_when_dashboard_trail_and_metrics_agree(ops, tmp_path: Path) -> None:
    app, base = ops
    async with _client() as s:
        before = await _scrape(s, base)
        commands = 0
        for keys in BATCH:
            result = await FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(keys),
                                        script="demo_hotline").run()
            assert result.server_closed
            commands += len(result.commands)
        await app.store.flush()

        # ---- the trail itself
        sessions = await app.store.list_sessions(flow_id="demo_hotline", limit=1000)
        assert len(sessions) == len(BATCH)
        outcomes = Counter(x["outcome"] for x in sessions)
        assert outcomes == {"completed": 13, "transfer": 6, "hangup": 8}
        hung_at = Counter(x["end_node"] for x in sessions if x["outcome"] == "hangup")
        assert hung_at == {"ask_id": 6, "main": 2}
        events = [e for x in sessions for e in await app.store.events(x["id"])]
        entered = Counter(e["node"] for e in events if e["kind"] == "node_enter")

        # ---- metrics report the same counts
        after = await _scrape(s, base)

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        for outcome, count in outcomes.items():
            assert delta("ivr_calls_total", outcome=outcome) == count, outcome
            assert delta("ivr_sessions_total", channel="voice", outcome=outcome) == count, outcome
        assert delta("ivr_agi_command_seconds_count") == commands
        assert after[("ivr_agi_command_seconds_bucket", (("le", "+Inf"),))] == after[("ivr_agi_command_seconds_count", ())]
        assert after[("ivr_trail_events_written_total", ())] == len(events)
        assert after[("ivr_trail_events_dropped_total", ())] == 0
        assert after[("ivr_calls_in_progress", ())] == 0
        assert after[("ivr_agi_connections_total", ())] == len(BATCH)
        assert after[("ivr_ami_state", (("state", "not_configured"),))] == 1
        assert after[("ivr_ami_up", ())] == 0
        assert after[("ivr_flows_loaded", ())] == len(app.registry.current)
        for name in ("ivr_speech_recognition_seconds_count", "ivr_prompt_render_seconds_count"):
            assert (name, ()) in after  # defined now, reported into by the speech and prompt features

        # ---- the dashboard's figures match the trail
        await _login(s, base, "sam", "sam-pass-12")
        async with s.get(f"{base}/ops/report.json?flow=demo_hotline") as r:
            assert r.status == 200
            report = await r.json()
        summary = report["summary"]
        assert summary["sessions"] == len(BATCH) and summary["live"] == 0
        assert (summary["contained"], summary["transferred"], summary["abandoned"]) == (13, 6, 8)
        assert summary["containment"] == pytest.approx(13 / 27)
        assert summary["to_person"] == 6 and summary["worst_node"] == "ask_id"
        nodes = {n["node"]: n for n in report["nodes"]}
        for name, count in entered.items():
            assert nodes[name]["entered"] == count, name
            assert nodes[name]["hung_up"] == hung_at.get(name, 0), name
        assert nodes["main"]["noinput"] == 6 and nodes["main"]["escalated"] == 2
        assert nodes["anything_else"]["escalated"] == 4
        assert {(e["from"], e["to"]): e["count"] for e in report["edges"]}[("main", "billing")] == 18
        assert [r["reason"] for r in report["reasons"]] == ["客户在“后续选择”要求人工服务", "在“主菜单”多次输入无效"]

        # ---- and the graph shows where callers dropped out
        async with s.get(f"{base}/ops?flow=demo_hotline", headers={"Accept": "text/html"}) as r:
            assert r.status == 200
            html = await r.text()
        assert 'id="worst-node"' in html and "ask_id" in html.split('id="worst-node"')[1][:400]
        ask_id = re.search(r'<g id="node(?:-|&#45;)ask_id" class="node">(.*?)</g>', html, re.S).group(1)
        assert f'fill="{drop_colour(6 / 18)}"'.lower() in ask_id.lower() and "▲" in ask_id
        main = re.search(r'<g id="node(?:-|&#45;)main" class="node">(.*?)</g>', html, re.S).group(1)
        assert f'fill="{drop_colour(2 / 27)}"'.lower() in main.lower()

        def width(src: str, dst: str) -> float:
            block = re.search(rf"<title>{src}&#45;&gt;{dst}</title>(.*?)</g>", html, re.S).group(1)
            return float(re.search(r'stroke-width="([0-9.]+)"', block).group(1))

        assert width("main", "billing") > width("main", "outages") > width("main", "fault")
        assert "<script" not in html.lower()  # no CDN, no script needed

        # ---- CSV export
        async with s.get(f"{base}/ops/export/nodes.csv?flow=demo_hotline") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
            assert "attachment" in r.headers["Content-Disposition"]
            rows = {row["node"]: row for row in csv.DictReader(io.StringIO((await r.text()).lstrip("\ufeff")))}
        assert rows["ask_id"]["hung_up"] == "6" and rows["main"]["entered"] == "27"
        async with s.get(f"{base}/ops/graph.svg?flow=demo_hotline") as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"

        # ---- the dashboard in a real browser
        await _browser(base, tmp_path)


async def _browser(base: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            await page.goto(f"{base}/ops?flow=demo_hotline")
            assert "/login" in page.url
            await page.fill("#name", "sam")
            await page.fill("#password", "sam-pass-12")
            await page.click("#sign-in")
            await page.wait_for_selector("#graph-panel svg.flow-graph")
            assert "/ops" in page.url
            assert "ask_id" in await page.inner_text("#worst-node")
            assert (await page.inner_text("#kpi-containment .v")).strip() == f"{13 / 27 * 100:.1f}%"
            box = await page.locator("#node-ask_id").bounding_box()
            assert box and box["width"] > 40, "the graph is drawn at a readable size"
            fill = await page.locator("#node-ask_id polygon").first.get_attribute("fill")
            assert fill.lower() == drop_colour(6 / 18).lower()
            shot = tmp_path / "ops-dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:4] == b"\x89PNG"
            if os.environ.get("IVR_UPDATE_SCREENSHOTS"):
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                SCREENSHOT.write_bytes(shot.read_bytes())
        finally:
            await browser.close()
    assert SCREENSHOT.read_bytes()[:4] == b"\x89PNG", "docs/img/ops-dashboard.png is committed"


async def test_ops_needs_a_supervisor_and_refuses_bad_queries(ops) -> None:
    app, base = ops
    async with _client() as s:
        async with s.get(f"{base}/ops", headers={"Accept": "text/html"}, allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"].startswith("/login?next=/ops")
        async with s.get(f"{base}/ops/report.json") as r:
            assert r.status == 401
        async with s.get(f"{base}/ops/export/nodes.csv") as r:
            assert r.status == 401
    async with _client() as s:
        await _login(s, base, "alice", "alice-pass-1")
        async with s.get(f"{base}/ops", headers={"Accept": "text/html"}) as r:
            assert r.status == 403
        async with s.get(f"{base}/ops/report.json") as r:
            assert r.status == 403
    async with _client() as s:
        await _login(s, base, "sam", "sam-pass-12")
        for query, needle in [
            ("from=yesterday", "from: 'yesterday' is not a date"),
            ("from=2026-11-20&to=2026-11-10", "must come after"),
            ("from=2020-01-01&to=2026-01-01", "longer than"),
            ("days=0", "days: must be between"),
            ("days=x", "days: not a whole number"),
            ("flow=%0a", "flow: not a flow id"),
        ]:
            async with s.get(f"{base}/ops?{query}", headers={"Accept": "text/html"}) as r:
                assert r.status == 400, query
                body = await r.text()
                assert needle in body and "Traceback" not in body, (query, body)
        async with s.get(f"{base}/ops/export/passwords.csv") as r:
            assert r.status == 404
        async with s.get(f"{base}/ops/graph.svg?flow=not_loaded") as r:
            assert r.status == 404
        async with s.get(f"{base}/ops?flow=not_loaded", headers={"Accept": "text/html"}) as r:
            assert r.status == 200 and "is not loaded on this server" in await r.text()
        async with s.get(f"{base}/ops?flow=demo_hotline&from=2026-11-01&to=2026-11-30&days=3",
                         headers={"Accept": "text/html"}) as r:
            assert r.status == 200
            html = await r.text()
            assert 'value="2026-11-01"' in html and 'value="2026-11-30"' in html and 'value="3"' in html


async def test_readyz_reports_ami_state(server) -> None:
    from ivr.testing.fake_ami import FakeAmiServer

    base = f"http://127.0.0.1:{server.config.http_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/readyz") as r:
            assert r.status == 200 and (await r.json())["ami"] == "not configured"
        fake = FakeAmiServer()
        await fake.start()
        from ivr.ami import AmiClient

        server.ami = AmiClient("127.0.0.1", fake.port, fake.username, fake.secret)
        try:
            await server.ami.start()
            for _ in range(100):
                if str(server.ami.state) == "connected":
                    break
                await asyncio.sleep(0.05)
            async with s.get(f"{base}/readyz") as r:
                body = await r.json()
            assert r.status == 200 and body["ami"] == "connected"
            async with s.get(f"{base}/metrics") as r:
                m = _metrics(await r.text())
            assert m[("ivr_ami_up", ())] == 1 and m[("ivr_ami_state", (("state", "connected"),))] == 1
            await fake.stop()
            for _ in range(100):
                if str(server.ami.state) != "connected":
                    break
                await asyncio.sleep(0.05)
            async with s.get(f"{base}/readyz") as r:
                body = await r.json()
            assert body["ami"] in ("disconnected", "connecting") and r.status == 200  # reported, calls still run
        finally:
            await server.ami.stop()
            server.ami = None
