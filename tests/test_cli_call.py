"""`ivr call` as a flow designer uses it: scripted, interactive, and through a server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = "1 1 20240001# 110105199003071239# 1 0 5"  # ... a person, then 5 in the survey


def ivr(*args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ivr.cli", *args], capture_output=True, text=True, input=input,
                          cwd=cwd, timeout=120)


def test_call_json_reaches_transfer_with_summary_and_trail(tmp_path):
    out = ivr("call", str(ROOT / "flows" / "demo_hotline.yaml"), "--keys", KEYS, "--json",
              "--at", "2026-11-25T10:00", "--database-url", f"sqlite:///{tmp_path / 't.db'}")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) >= {"outcome", "node", "variables", "summary", "trail"}
    # the agent hung up first (the simulator's default), so the caller rated the
    # call; having talked to a person, the session still counts as a transfer
    assert result["outcome"] == "transfer" and result["node"] == "goodbye"
    assert [e["data"]["queue"] for e in result["trail"] if e["kind"] == "transfer"] == ["support"]
    assert result["summary"].startswith("已验证账户 ****0001 · 查询余额（268.5）")
    assert "满意度 5/5" in result["summary"]
    assert result["variables"]["id_number"] == "****1239"  # masked in the output too
    nodes = [e["node"] for e in result["trail"] if e["kind"] == "node_enter"]
    assert nodes[:4] == ["welcome", "language", "identify", "main"]
    assert nodes[-4:] == ["agent", "to_agent", "survey", "goodbye"]


def test_call_after_hours_goes_to_closed_message(tmp_path):
    out = ivr("call", str(ROOT / "flows" / "demo_hotline.yaml"), "--keys", "1 0", "--json",
              "--at", "2026-11-25T23:30", "--database-url", f"sqlite:///{tmp_path / 't.db'}")
    result = json.loads(out.stdout)
    assert [e["data"]["open"] for e in result["trail"] if e["kind"] == "hours"] == [False]
    assert result["outcome"] == "hangup" and result["node"] == "main"


def test_interactive_call_reads_keys_from_the_terminal(tmp_path):
    out = ivr("call", str(ROOT / "flows" / "demo_hotline.yaml"), "--lang", "en-US", "--at", "2026-11-25T10:00",
              "--database-url", f"sqlite:///{tmp_path / 't.db'}", input="2\n3\n\n1\n")
    assert out.returncode == 0, out.stderr
    assert "For English, press 2." in out.stdout
    assert "For balance and bills, press 1." in out.stdout
    assert "Thank you for calling. Goodbye." in out.stdout
    assert "outcome: completed at goodbye" in out.stdout


def test_call_reports_a_broken_flow(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nnodes: [\n", encoding="utf-8")
    out = ivr("call", str(bad), "--keys", "1")
    assert out.returncode == 1
    assert f"{bad}:3:1: YAML syntax error" in out.stderr


async def test_call_through_a_running_server_gives_the_same_trail(server, tmp_path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ivr.cli", "call", "demo_hotline", "--agi", f"127.0.0.1:{server.config.agi_port}",
        "--keys", KEYS, "--json", "--database-url", server.config.database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    via_agi = json.loads(stdout)
    sim = ivr("call", str(ROOT / "flows" / "demo_hotline.yaml"), "--keys", KEYS, "--json", "--at",
              "2026-11-25T11:00", "--database-url", f"sqlite:///{tmp_path / 's.db'}")
    local = json.loads(sim.stdout)

    def shape(trail):
        return [(e["kind"], e["node"]) for e in trail]

    assert via_agi["outcome"] == local["outcome"] == "transfer"
    assert shape(via_agi["trail"]) == shape(local["trail"])
    assert via_agi["summary"] == local["summary"]
    assert {e["channel"] for e in via_agi["trail"]} == {"voice"}


def test_example_settings_file_is_current_and_loads(tmp_path):
    from ivr.config import Config, example_toml, load_config

    shipped = (ROOT / "ivr.example.toml").read_text(encoding="utf-8")
    assert shipped == example_toml(), "regenerate: python -c 'from ivr.config import example_toml; ...'"
    for name in Config.model_fields:
        assert f"# {name} = " in shipped
    # uncommented, the example is a valid settings file with the defaults
    active = "\n".join(l[2:] for l in shipped.splitlines() if l.startswith("# ") and not l.endswith("= "))
    (tmp_path / "ivr.toml").write_text(active, encoding="utf-8")
    assert load_config(tmp_path / "ivr.toml", env={}) == load_config(None, env={})


def test_bad_settings_are_a_clear_error(tmp_path):
    (tmp_path / "bad.toml").write_text('agi_port = "many"\nunknown_thing = 1\n', encoding="utf-8")
    out = ivr("serve", "--config", str(tmp_path / "bad.toml"))
    assert out.returncode == 2
    assert "agi_port" in out.stderr and "unknown_thing" in out.stderr and "Traceback" not in out.stderr
