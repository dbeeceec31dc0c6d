"""``mask.sinks``: a masked entry (``mask: true``, the demo's ID number) is
searched for in every place a call leaves data behind.

Two calls through the demo flow on a real server (FastAGI over a real socket,
SQLite trail, the web app over real HTTP):

* on the phone: the ID number keyed in (``DEMO_KEYS``), through to a person and
  the survey;
* on screen: the caller presses 8, opens the texted link and types the ID
  number into the page.

Afterwards the value is searched for, raw and transformed (digit groups with
separators, any 8 consecutive digits of it), in: every log record at DEBUG
(text and JSON lines, configured as ``ivr serve`` does), every row of every
table of the database, the caller's pages, the desk (page, pop JSON, signed
WebSocket messages), the push API, the SMS outbox, ``/metrics``, ``/ops``
(page, JSON, every CSV) and every byte sent to Asterisk.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from ivr.auth import AccountStore
from ivr.logs import setup_logging
from ivr.ops import analytics
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import FakeAsterisk

from ..handoff_util import DeskClient, base_url
from ..visual_support import Call, client, csrf, get, post, visual_server

pytestmark = pytest.mark.timeout(180)

ID_NUMBER = "110105199003071239"
DEMO_KEYS = ["1", "1", "20240001#", ID_NUMBER + "#", "1", "0", "5"]


def leak_pattern(value: str, window: int = 8) -> re.Pattern[str]:
    """Any ``window`` consecutive digits of ``value``, with or without separators
    between them (``1101 0519 9003``, ``03-07-12-39``, ``0,3,0,7``)."""
    sep = r"[\s,.\-_/:|]{0,3}"
    parts = {value[i:i + window] for i in range(len(value) - window + 1)}
    return re.compile("|".join(sep.join(re.escape(ch) for ch in part) for part in sorted(parts)))


LEAK = leak_pattern(ID_NUMBER)


class Sinks:
    """Texts gathered from every sink, searched at the end."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, name: str, text: Any) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        elif not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False, default=str)
        self.texts[name] = self.texts.get(name, "") + "\n" + text

    def leaks(self) -> list[str]:
        out = []
        for name, text in self.texts.items():
            for match in LEAK.finditer(text):
                start = max(0, match.start() - 60)
                out.append(f"{name}: …{text[start:match.end() + 40]!r}")
        return out


@pytest.fixture
def all_logs():
    """Every log record at DEBUG as ``ivr serve`` writes it, text and JSON lines."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    text, jsonl = io.StringIO(), io.StringIO()
    setup_logging(level="DEBUG", json_lines=False, stream=text)
    text_handler = root.handlers[0]
    setup_logging(level="DEBUG", json_lines=True, stream=jsonl)
    root.handlers.append(text_handler)
    # loggers the server quiets by name must not hide anything from this search
    quiet = {name: logging.getLogger(name).level for name in ("ivr.trail", "aiohttp.access")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield text, jsonl
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


async def dump_database(engine: Any) -> str:
    """Every row of every table, as text."""
    meta = MetaData()
    async with engine.connect() as conn:
        await conn.run_sync(meta.reflect)
        lines = []
        for table in meta.sorted_tables:
            for row in (await conn.execute(select(table))).all():
                lines.append(f"{table.name}: " + " | ".join(str(v) for v in row))
    return "\n".join(lines)


@pytest.mark.reliability("mask.sinks")
async def test_masked_id_number_is_in_no_sink(tmp_path: Path, flows_dir: Path, all_logs, rel) -> None:
    text_log, json_log = all_logs
    # the search finds the value and its simple transforms (so this test can fail)
    for shown in (ID_NUMBER, "110105 19900307 1239", "1101-0519-9003-0712-39", "****03071239", "0 3 0 7 1 2 3 9"):
        assert LEAK.search(f"x{shown}x"), shown
    assert not LEAK.search("****1239 20240001 13800138000")  # what may be shown: the masked form
    sinks = Sinks()
    async with visual_server(tmp_path, flows_dir, secret_key="mask-test-secret-0123456789abcdef",
                             log_level="DEBUG") as app:
        base = base_url(app)
        # --- the phone: ID number keyed in, then a person and the survey
        fake = FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(DEMO_KEYS), script="demo_hotline")
        voice = await fake.run()
        voice_sid = voice.variables["IVR_SESSION"]
        assert any(e["kind"] == "lookup" and e["data"].get("name") == "verify" and e["data"].get("ok")
                   for e in await app.store.events(voice_sid)), "the ID number must have been used"
        sinks.add("agi bytes (phone)", voice.raw_received)
        sinks.add("agi variables (phone)", voice.variables_set)

        # --- the screen: the caller types the ID number into the page
        call = Call(app, ["1", "8"])
        link = await call.link()
        pages: list[str] = []
        async with client() as phone:
            status, html = await get(phone, link)
            assert status == 200 and "<h1>主菜单</h1>" in html
            token = csrf(html)
            for data in ({"action": "tap", "value": "1"}, {"action": "text", "value": "20240001"},
                         # a typo first (wrong check digit): the error page must not echo it back
                         {"action": "text", "value": ID_NUMBER[:-1] + "0"},
                         {"action": "text", "value": ID_NUMBER}, {"action": "tap", "value": "1"}):
                status, html = await post(phone, link, {**data, "csrf": token})
                assert status == 200, (data, html)
                pages.append(html)
            assert 'role="alert"' in pages[2]  # the typo was refused
            assert "余额" in html  # the balance page: the ID number was accepted on screen
            status, html = await get(phone, link)
            pages.append(html)
        sinks.add("caller pages", "\n".join(pages))
        call.caller.hang_up()
        web_result = await call.result()
        web_sid = web_result.variables["IVR_SESSION"]
        web_events = await app.store.events(web_sid)
        assert any(e["kind"] == "lookup" and e["channel"] == "web" and e["data"].get("name") == "verify"
                   and e["data"].get("ok") for e in web_events), "the ID number typed on screen must have been used"
        sinks.add("agi bytes (screen)", web_result.raw_received)
        sinks.add("agi variables (screen)", web_result.variables_set)
        sinks.add("sms outbox", await app.driver.visual_hub.sms.outbox())

        # --- the desk and the ops pages, as a supervisor
        await AccountStore(app.store.engine).create("sam", "sam-pass-12", role="supervisor")
        desk = DeskClient(base)
        try:
            await desk.login("sam", "sam-pass-12")
            sinks.add("desk page", await desk.page())
            await desk.connect()
            for sid in (voice_sid, web_sid):
                await desk.send("open", {"session_id": sid})
                sinks.add("desk socket", (await desk.recv_type("pop"))["data"])
                await desk.send("push", {"session_id": sid})
                async with desk.http.get(f"{base}/desk/api/sessions/{sid}") as r:
                    assert r.status == 200
                    sinks.add("desk pop json", await r.text())
                async with desk.http.get(f"{base}/api/visual/sessions/{sid}") as r:
                    assert r.status == 200
                    sinks.add("push api", await r.text())
            await desk.send("live")
            sinks.add("desk socket", (await desk.recv_type("live"))["data"])
            for path in ["/ops", "/ops/report.json", "/ops/graph.svg",
                         *(f"/ops/export/{t}.csv" for t in analytics.CSV_TABLES)]:
                async with desk.http.get(f"{base}{path}?flow=demo_hotline") as r:
                    assert r.status == 200, (path, await r.text())
                    sinks.add(f"ops {path}", await r.read())
        finally:
            await desk.close()
        async with client() as http:
            status, body = await get(http, f"{base}/metrics")
            assert status == 200
            sinks.add("metrics", body)
        await app.store.flush()
        sinks.add("database", await dump_database(app.store.engine))
    sinks.add("log (text)", text_log.getvalue())
    sinks.add("log (json)", json_log.getvalue())
    assert "verify" in text_log.getvalue() and '"logger"' in json_log.getvalue()  # the logs did capture the calls

    leaks = sinks.leaks()
    rel.tried(2)
    rel.note(f"2 calls (keyed on the phone, typed on screen); {len(sinks.texts)} sinks searched "
             f"for any 8 consecutive digits of the value, separators allowed")
    rel.figure("bytes searched", sum(len(t) for t in sinks.texts.values()), "chars")
    rel.lost(len(leaks), "; ".join(leaks[:5]))
    assert not leaks, "\n".join(leaks[:20])
