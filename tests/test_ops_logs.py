"""Log lines name their call (uniqueid and session id), as text or JSON; ``ivr report``."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ivr.logs import CallFilter, TextFormatter, bind_call, current_call, setup_logging
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import FakeAsterisk

from .conftest import ROOT


@pytest.fixture
def log_stream():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


async def _two_calls(app, missing: str = "main_menu") -> list[tuple[str, str]]:
    ids = []
    for n, keys in enumerate((["1", "3", "1"], ["1", "1", "20240001#", "110105199003071239#"])):
        uid = f"1764000000.{100 + n}"
        result = await FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(keys),
                                    script="demo_hotline", uniqueid=uid,
                                    missing_files={f"ivr/zh-CN/{missing}"}).run()
        ids.append((uid, result.variables["IVR_SESSION"]))
    return ids


async def test_json_lines_carry_uniqueid_and_session(server, log_stream) -> None:
    setup_logging(level="INFO", json_lines=True, stream=log_stream)
    ids = await _two_calls(server)
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    trail = [x for x in lines if x["logger"] == "ivr.trail"]
    for uid, sid in ids:
        mine = [x for x in trail if x.get("session_id") == sid]
        events = await server.store.events(sid)
        # one line per trail event, each naming the call
        assert len(mine) == len(events) and all(x["uniqueid"] == uid for x in mine)
        assert [x["event"]["kind"] for x in mine] == [e["kind"] for e in events]
    # a warning from deep inside a call (the missing prompt, warned once per
    # process) names the call it happened in
    warnings = [x for x in lines if x["level"] == "WARNING" and "main_menu" in x["msg"]]
    assert len(warnings) == 1
    assert (warnings[0]["uniqueid"], warnings[0]["session_id"]) == ids[0]
    # the ID number typed in the second call is not in the log (masked in the trail, prompt texts left out)
    assert "110105199003071239" not in log_stream.getvalue()


async def test_text_lines_and_trail_logging_off(server, log_stream) -> None:
    setup_logging(level="INFO", json_lines=False, stream=log_stream)
    (uid, sid), _ = await _two_calls(server)
    text = log_stream.getvalue()
    assert f"[uid={uid} sid={sid}]" in text
    assert "ivr.trail: voice session_start node=welcome" in text
    log_stream.seek(0)
    log_stream.truncate()
    logging.getLogger("ivr.trail").setLevel(logging.WARNING)  # what log_trail = false does
    try:
        await _two_calls(server, missing="goodbye")
    finally:
        logging.getLogger("ivr.trail").setLevel(logging.NOTSET)
    text = log_stream.getvalue()
    assert "ivr.trail" not in text  # trail lines off, other lines of the call still there:
    assert "WARNING ivr.prompts" in text and "goodbye" in text


def test_filter_outside_a_call() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    assert CallFilter().filter(record) and record.uniqueid is None and record.session_id is None
    assert TextFormatter().format(record).endswith("x: hello")


async def test_bind_call_is_per_task() -> None:
    import asyncio

    async def call(uid: str) -> tuple:
        bind_call(uniqueid=uid, session_id="s-" + uid)
        await asyncio.sleep(0.01)
        return current_call()

    assert await asyncio.gather(call("a"), call("b")) == [("a", "s-a"), ("b", "s-b")]
    assert current_call() == (None, None)


def test_ivr_report_cli(tmp_path: Path) -> None:
    import asyncio

    from ivr.store import make_engine, migrate

    from . import ops_data as D

    db = f"sqlite:///{tmp_path / 'trail.db'}"

    async def fill() -> None:
        engine = make_engine(db)
        await migrate(engine)
        await D.write(engine, [g for g in D.generate() if g.archetype in ("hangup_main", "balance")])
        await engine.dispose()

    asyncio.run(fill())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "ivr.cli", "report", "demo_hotline", "--database-url", db,
            "--from", D.SINCE.date().isoformat(), "--to", D.UNTIL.date().isoformat()]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    summary = dict(line.split(",", 1) for line in result.stdout.splitlines()[1:])
    assert summary["sessions"] == str(D.COUNTS["balance"] + D.COUNTS["hangup_main"])
    assert summary["abandoned"] == str(D.COUNTS["hangup_main"]) and summary["worst_node"] == "main"
    out = tmp_path / "csv"
    result = subprocess.run([*args, "--csv-dir", str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{t}.csv" for t in ("summary", "nodes", "exits", "reasons", "fcr", "survey_queue", "survey_path"))
    bad = subprocess.run([*args[:-4], "--from", "2026-10-08", "--to", "2026-10-01"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and "after its start" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "ivr.cli", "report", "x", "--database-url",
                              f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2 and "no trail" in missing.stderr and "Traceback" not in missing.stderr
