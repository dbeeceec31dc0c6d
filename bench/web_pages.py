#!/usr/bin/env python3
"""Visual IVR pages: weight and server time per page type.

Starts the server in this process (demo flow, SQLite trail, outbox SMS), makes
fake-Asterisk calls that press 8 ("continue on screen"), opens each texted link
with an HTTP client that keeps cookies like a browser, and walks the demo:
main menu, account number (a wrong one first), ID check, balance, talk to a
person, callback. For each page type it records

* weight: the HTML plus every asset the page loads (one stylesheet, one
  script; nothing from elsewhere), uncompressed bytes;
* server time: the handler's own time (its ``Server-Timing`` header), for the
  GET of the page and for the POST of the tap that leads to it (the POST runs
  the engine step, look-ups against the demo backend over HTTP, the trail).

    .venv/bin/python bench/web_pages.py --sessions 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LINK_RE = re.compile(r"https?://\S+?/v/[A-Za-z0-9_-]{36}")
CSRF_RE = re.compile(r'name="csrf" value="([0-9a-f]+)"')
ASSET_RE = re.compile(r'(?:href|src)="(/v/static/[^"]+)"')


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        ram = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    except OSError:
        ram = 0
    return f"{os.cpu_count()} CPUs ({cpu}), {ram} GB RAM, Python {platform.python_version()}"


def timing(headers) -> float:
    m = re.search(r"dur=([0-9.]+)", headers.get("Server-Timing", ""))
    return float(m.group(1)) if m else float("nan")


async def run(sessions: int) -> None:
    import aiohttp

    from ivr.config import load_config
    from ivr.server import build_app, start_app, stop_app
    from ivr.testing.fake_asterisk import FakeAsterisk
    from visual_ivr.testing import HoldingCaller

    tmp = Path(tempfile.mkdtemp(prefix="ivr-bench-web-"))
    shutil.copytree(ROOT / "flows", tmp / "flows")
    config = load_config(None, {
        "flows_dir": str(tmp / "flows"), "database_url": f"sqlite:///{tmp / 'trail.db'}", "agi_port": 0,
        "http_port": 0, "reload_interval": 0, "visual_hold_poll": 1.0, "sms_limit_per_number": 100000,
        "sms_limit_per_hour": 100000}, env={})
    import datetime as dt

    app = await build_app(config, clock=lambda: dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.timezone.utc))
    runner, _ = await start_app(app)
    hub = app.driver.visual_hub
    weights: dict[str, int] = {}
    get_ms: dict[str, list[float]] = {}
    post_ms: dict[str, list[float]] = {}
    assets: dict[str, int] = {}
    calls = []
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as warm:
            base = f"http://127.0.0.1:{config.http_port}"
            for _ in range(3):  # warm-up: templates compiled, connections open
                async with warm.get(base + "/v/static/app.css") as r:
                    await r.read()
        for i in range(sessions):
            caller = HoldingCaller(["1", "8"])
            fake = FakeAsterisk("127.0.0.1", config.agi_port, inputs=caller, script="demo_hotline",
                                idle_timeout=60, callerid="13800138000")
            calls.append((caller, asyncio.create_task(fake.run())))
            while True:
                rows = [r for r in await hub.sms.outbox() if r["status"] == "sent"]
                if len(rows) > i:
                    break
                await asyncio.sleep(0.01)
            link = LINK_RE.search(rows[i]["body"]).group(0)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                async def page(name: str, url: str = link) -> str:
                    async with http.get(url) as r:
                        html = await r.text()
                        get_ms.setdefault(name, []).append(timing(r.headers))
                    for asset in ASSET_RE.findall(html):
                        if asset not in assets:
                            async with http.get(base + asset) as a:
                                assets[asset] = len(await a.read())
                    weights[name] = len(html.encode()) + sum(assets[a] for a in ASSET_RE.findall(html))
                    return html

                async def tap(name: str, data: dict[str, str]) -> None:
                    async with http.post(link, data={**data, "csrf": token}, allow_redirects=False) as r:
                        assert r.status == 303, (name, r.status, await r.text())
                        post_ms.setdefault(name, []).append(timing(r.headers))

                html = await page("menu (main)")
                token = CSRF_RE.search(html).group(1)
                await tap("digit entry", {"action": "tap", "value": "1"})
                await page("digit entry")
                await tap("digit entry, inline error", {"action": "text", "value": "2024"})
                await page("digit entry, inline error")
                await tap("ID check", {"action": "text", "value": "20240001"})
                await tap("menu after look-up (verify)", {"action": "text", "value": "110105199003071239"})
                await page("menu after look-up (verify)")
                await tap("look-up result table (balance)", {"action": "tap", "value": "1"})
                await page("look-up result table (balance)")
                await page("talk to a person", link + "?view=person")
                await tap("callback booked", {"action": "callback", "value": "asap"})
                await page("callback booked")
                await page("expired / unknown link", base + "/v/" + "A" * 36)
        for caller, task in calls:
            await asyncio.wait_for(task, 30)
    finally:
        await stop_app(app, runner)
        shutil.rmtree(tmp, ignore_errors=True)

    def p(values: list[float], q: float) -> float:
        values = sorted(v for v in values if v == v)
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    print(f"machine: {machine()}")
    print(f"sessions: {sessions} (each page type measured once per session)\n")
    print("| page | weight (HTML + assets) | GET server ms p50 / p95 | POST leading here, server ms p50 / p95 |")
    print("| --- | ---: | ---: | ---: |")
    names = list(dict.fromkeys(list(weights) + list(post_ms)))
    for name in names:
        w = f"{weights[name] / 1024:.1f} KB" if name in weights else "–"
        g = f"{p(get_ms[name], .5):.1f} / {p(get_ms[name], .95):.1f}" if name in get_ms else "–"
        t = f"{p(post_ms[name], .5):.1f} / {p(post_ms[name], .95):.1f}" if name in post_ms else "–"
        print(f"| {name} | {w} | {g} | {t} |")
    print(f"\nassets: {', '.join(f'{k} {v} B' for k, v in assets.items())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(run(args.sessions))


if __name__ == "__main__":
    main()
