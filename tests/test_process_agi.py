"""The process-AGI script: Asterisk starts it per call and talks over stdin/stdout."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ivr.callcmd import demo_backend
from ivr.store import TrailStore
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import FakeAsterisk

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "agi_scripts" / "ivr_agi.py"


async def run_script_call(tmp_path: Path, keys: list[str], args: list[str], **fake_kw):
    """Bridge: the fake Asterisk connects to a local socket, whose bytes are the
    script's stdin/stdout, as Asterisk's pipes would be."""
    db = f"sqlite:///{tmp_path / 'trail.db'}"
    async with demo_backend() as backend:
        env = dict(os.environ, IVR_DATABASE_URL=db, IVR_FLOWS_DIR=str(ROOT / "flows"), IVR_BACKEND_URL=backend,
                   PYTHONPATH=str(ROOT))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)

        async def bridge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def up():
                while data := await reader.read(4096):
                    proc.stdin.write(data)
                    await proc.stdin.drain()

            async def down():
                while data := await proc.stdout.read(4096):
                    writer.write(data)
                    await writer.drain()
                writer.close()  # the script ended: its stdout closed

            await asyncio.gather(up(), down(), return_exceptions=True)

        server = await asyncio.start_server(bridge, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        env_over = {f"agi_arg_{i + 1}": a for i, a in enumerate(args)}
        env_over["agi_request"] = SCRIPT.name
        fake = FakeAsterisk("127.0.0.1", port, inputs=SimLikeCaller(keys), env=env_over, **fake_kw)
        result = await fake.run()
        rc = await asyncio.wait_for(proc.wait(), 30)
        stderr = (await proc.stderr.read()).decode()
        server.close()
    store = await TrailStore.open(db, migrate=False)
    try:
        sid = result.variables.get("IVR_SESSION")
        session = await store.get_session(sid) if sid else None
        events = await store.events(sid) if sid else []
    finally:
        await store.close()
    return result, rc, stderr, session, events


async def test_process_agi_runs_the_same_flow(tmp_path):
    result, rc, stderr, session, events = await run_script_call(
        tmp_path, ["1", "3", "1"], ["demo_hotline", "lang=en"])
    assert rc == 0, stderr
    assert session["outcome"] == "completed" and session["end_node"] == "goodbye"
    assert events[0]["kind"] == "session_start" and events[0]["data"]["lang"] == "en-US"  # from lang=en
    assert session["language"] == "zh-CN"  # the caller then picked 中文 (key 1)
    assert [e["node"] for e in events if e["kind"] == "choice"] == ["main", "anything_else"]
    assert any(e["kind"] == "lookup" and e["node"] == "outages" and e["data"]["ok"] for e in events)
    assert result.commands[0] == "ANSWER" and result.commands[-1] == "HANGUP"
    assert "Traceback" not in stderr


async def test_process_agi_hangup_and_unknown_flow(tmp_path):
    result, rc, stderr, session, events = await run_script_call(
        tmp_path, ["1", "1"], ["demo_hotline"], hangup_after=5)
    assert rc == 0, stderr
    assert session["outcome"] == "hangup"
    assert events[-1]["kind"] == "session_end"
    result, rc, stderr, session, _ = await run_script_call(tmp_path, [], ["nope"])
    assert rc == 0
    assert ("IVR_RESULT", "noflow") in result.variables_set
    assert "flow 'nope' is not loaded" in stderr
