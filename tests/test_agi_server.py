"""The FastAGI server against the fake Asterisk over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import SILENCE, FakeAsterisk

from .conftest import OFFICE_HOURS

# The demo call from the issue: Chinese, billing, account + ID, balance, then 0 for a person;
# the agent hangs up first (Queue option c) and the caller gives the survey a 5.
DEMO_KEYS = ["1", "1", "20240001#", "110105199003071239#", "1", "0", "5"]


async def call(app, keys, *, script="demo_hotline", **kw) -> tuple:
    fake = FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(keys), script=script, **kw)
    result = await fake.run()
    session_id = result.variables.get("IVR_SESSION")
    session = await app.store.get_session(session_id) if session_id else None
    events = await app.store.events(session_id) if session_id else []
    return result, session, events


async def test_demo_call_reaches_transfer_with_context(server):
    result, session, events = await call(server, DEMO_KEYS)
    assert result.server_closed, "the server must close the FastAGI socket"
    assert session["outcome"] == "transfer" and session["end_node"] == "goodbye"  # talked to a person, then the survey
    assert [e["data"]["status"] for e in events if e["kind"] == "transfer_result"] == ["continue"]
    assert [(e["data"]["score"], e["data"]["mode"]) for e in events if e["kind"] == "survey"] == [(5, "dtmf")]
    assert session["flow_id"] == "demo_hotline" and session["caller"] == "13800138000"
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    assert [e["node"] for e in events if e["kind"] == "choice"] == ["main", "billing_menu"]
    assert all(e["channel"] == "voice" for e in events)
    # inherited variables, VIP priority and the queue
    sets = dict(result.variables_set)
    assert sets["__IVR_SESSION"] == session["id"]
    assert sets["__IVR_SUMMARY"].startswith("已验证账户 ****0001 · 查询余额（268.5）")
    assert sets["__IVR_LANGUAGE"] == "zh-CN"
    assert sets["QUEUE_PRIO"] == "10"  # 13800138000 is a VIP in the demo backend
    assert ("Queue", "support,c,,,300") in result.executed
    assert session["summary"] == sets["__IVR_SUMMARY"] or session["summary"].startswith("已验证账户 ****0001")
    # the ID number never reaches the trail, the session row or the wire
    blob = json.dumps([events, session], ensure_ascii=False, default=str)
    assert "110105199003071239" not in blob
    assert "110105199003071239" not in result.raw_received.decode("utf-8", "replace")


async def test_same_call_in_simulator_gives_the_same_trail(server, tmp_path):
    from ivr.engine import Engine
    from ivr.session import CallDriver
    from ivr.sim import SimFace

    _, session, voice_events = await call(server, DEMO_KEYS)
    driver = CallDriver(Engine(server.registry.get), server.store, server.lookups,
                        backend_url=server.driver.backend_url, clock=lambda: OFFICE_HOURS)
    sim = await driver.run(SimFace(list(DEMO_KEYS), quiet=True), server.registry.get("demo_hotline"),
                           {"caller": "13800138000", "dialed": "unknown", "channel": "sim"})
    sim_events = await server.store.events(sim.session_id)

    def shape(events):
        return [(e["kind"], e["node"], {k: v for k, v in e["data"].items() if k not in ("latency_ms", "channel", "talk_seconds")})
                for e in events]

    assert shape(sim_events) == shape(voice_events)
    assert sim.outcome == session["outcome"] == "transfer"


async def test_menu_retries_and_keys_on_the_wire(server):
    result, session, events = await call(server, ["1", SILENCE, "7", "3", "1"])
    # SILENCE -> WAIT FOR DIGIT timed out; 7 -> no match; 3 -> outages; 1 -> goodbye
    assert [e["kind"] for e in events if e["kind"] in ("noinput", "nomatch")] == ["noinput", "nomatch"]
    assert session["outcome"] == "completed" and session["end_node"] == "goodbye"
    waits = [c for c in result.commands if c.startswith("WAIT FOR DIGIT")]
    assert waits and all(c == "WAIT FOR DIGIT 5000" for c in waits)
    assert result.commands[-1] == "HANGUP"
    streams = [c for c in result.commands if c.startswith("STREAM FILE ivr/zh-CN/main")]
    assert streams and streams[0].endswith('"12380*#"')  # 8: continue on screen (visual IVR)


async def test_hangup_at_every_command_ends_cleanly(server, caplog):
    """Hang up during each command of a full demo call in turn."""
    full, _, _ = await call(server, DEMO_KEYS)
    count = len(full.commands)
    assert count > 15
    caplog.set_level(logging.WARNING)
    seen_nodes = set()
    for n in range(1, count + 1):
        result, session, events = await call(server, DEMO_KEYS, hangup_after=n)
        assert result.server_closed, n
        if session is None:  # hung up before the session began (ANSWER / SET VARIABLE)
            assert n <= 2, n
            continue
        assert session["ended_at"] is not None, n
        assert session["outcome"] in ("hangup", "transfer", "completed"), (n, session["outcome"])
        assert events[-1]["kind"] == "session_end", n
        if session["outcome"] == "hangup":
            hang = [e for e in events if e["kind"] == "hangup"]
            assert hang and hang[-1]["node"] == session["end_node"], n
            seen_nodes.add(session["end_node"])
    assert {"language", "main", "ask_account", "ask_id", "billing_menu"} <= seen_nodes
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def test_unknown_flow_sets_result_and_closes(server):
    result, session, _ = await call(server, ["1"], script="no_such_flow")
    assert session is None
    assert ("IVR_RESULT", "noflow") in result.variables_set
    assert result.server_closed


async def test_missing_prompt_file_is_not_a_hangup(server):
    result, session, _ = await call(server, ["1", "3", "1"], missing_files={"ivr/zh-CN/main_menu"})
    assert session["outcome"] == "completed"
    assert "STREAM FILE ivr/zh-CN/main_menu" in " ".join(result.commands)


def _write_flow(flows_dir: Path, name: str, body: str) -> None:
    (flows_dir / f"{name}.yaml").write_text(body, encoding="utf-8")


INJECT_FLOW = """
id: inject
title: Injection
languages: [en-US]
prompts:
  hi: {en-US: "Hello {{ arg_name }}"}
start: hi
nodes:
  hi: {type: say, prompt: hi, next: t}
  t:
    type: transfer
    queue: "support{{ arg_name }}"
    reason: "{{ caller_name }} says {{ arg_name }}"
"""


async def test_caller_text_cannot_inject_agi_commands(server, flows_dir):
    _write_flow(flows_dir, "inject", INJECT_FLOW)
    server.registry.reload()
    evil = "a%0AHANGUP%0Ab%22%5C%0D%0AEXEC%20System%20rm"  # newline, quote, backslash, CR
    result, session, _ = await call(server, [], script=f"inject?name={evil}",
                                    calleridname='Bob\\" "EXEC System x')
    raw = result.raw_received.decode()
    lines = [l for l in raw.split("\n") if l]
    assert len(lines) == len(result.commands), "one line per command, nothing smuggled"
    assert not any(c.startswith("EXEC System") for c in result.commands)
    assert [c for c in result.commands if c == "HANGUP"] in ([], ["HANGUP"])
    reason = dict(result.variables_set)["__IVR_REASON"]
    assert "\n" not in reason and "\r" not in reason and "HANGUP" in reason
    assert reason.startswith('Bob\\" "EXEC System x says a')  # quotes and backslashes round-trip
    queue = [args for app, args in result.executed if app == "Queue"][0]
    assert queue.startswith("supportaHANGUPbEXECSystemrm,c,")  # only a strict alphabet reaches Queue()
    assert session["outcome"] == "transfer"


ERROR_FLOW = """
id: broken_at_runtime
title: Breaks at run time
languages: [en-US]
start: t
nodes:
  t: {type: transfer, queue: "{{ '!!!' }}"}
"""

EMPTY_TARGET_FLOW = """
id: empty_target
title: Empty transfer target
languages: [en-US]
start: t
nodes:
  t: {type: transfer, queue: "{{ nothing }}"}
"""


async def test_unexpected_error_goes_to_safe_destination_others_unaffected(server, flows_dir, caplog):
    _write_flow(flows_dir, "broken_at_runtime", ERROR_FLOW)
    server.registry.reload()
    caplog.set_level(logging.ERROR)
    bad, good = await asyncio.gather(call(server, [], script="broken_at_runtime"), call(server, DEMO_KEYS))
    result, session, events = bad
    assert ("IVR_RESULT", "error") in result.variables_set
    assert "HANGUP" not in result.commands  # the dialplan's fallback takes the call
    assert result.server_closed
    assert session["outcome"] == "error"
    assert any(e["kind"] == "error" for e in events)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged and session["id"] in logged[0].getMessage()
    assert good[1]["outcome"] == "transfer"


async def test_empty_transfer_target_is_a_flow_error(server, flows_dir):
    _write_flow(flows_dir, "empty_target", EMPTY_TARGET_FLOW)
    server.registry.reload()
    result, session, events = await call(server, [], script="empty_target")
    assert session["outcome"] == "error"
    assert not result.executed
    assert ("IVR_RESULT", "error") in result.variables_set
    assert any(e["kind"] == "error" and e["data"]["where"] == "transfer" for e in events)


async def test_flow_reload_new_calls_new_version_old_calls_keep_theirs(server, flows_dir):
    v1 = server.registry.get("demo_hotline").version
    slow = asyncio.create_task(call(server, DEMO_KEYS, prompt_delay=0.05))
    await asyncio.sleep(0.3)
    path = flows_dir / "demo_hotline.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("您好，欢迎致电", "您好，欢迎再次致电"), encoding="utf-8")
    assert [f.id for f in server.registry.reload()] == ["demo_hotline"]
    v2 = server.registry.get("demo_hotline").version
    assert v2 != v1
    _, new_session, new_events = await call(server, ["1", "3", "1"])
    _, old_session, _ = await slow
    assert old_session["flow_version"] == v1 and old_session["outcome"] == "transfer"
    assert new_session["flow_version"] == v2
    assert new_events[2]["data"]["text"].startswith("您好，欢迎再次致电")
    # a broken edit is refused; the good version stays live
    path.write_text("id: demo_hotline\nnodes: [", encoding="utf-8")
    assert server.registry.reload() == []
    assert server.registry.get("demo_hotline").version == v2
    assert str(path) in server.registry.errors


async def test_readyz_and_healthz(server):
    import aiohttp

    base = f"http://127.0.0.1:{server.config.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(base + "/readyz") as r:
            body = await r.json()
            assert r.status == 200 and body["ready"] and "demo_hotline" in body["flows"]
