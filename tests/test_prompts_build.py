"""``ivr prompts build`` on the demo flow, and prompt audio in a FastAGI call."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import wave
from pathlib import Path

import pytest

from ivr.agi.voice import prompt_file_name
from ivr.engine import PromptOut
from ivr.flow.loader import load_flow

from .conftest import ROOT
from .prompt_helpers import env_without_ivr
from .test_agi_server import DEMO_KEYS, call

pytestmark = pytest.mark.timeout(180)

DEMO = ROOT / "flows" / "demo_hotline.yaml"
JOBS = max(2, os.cpu_count() or 1)


def ivr_command(*args: str, cwd: Path, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**env_without_ivr(), **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "ivr", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=170, **kw)


def table(stdout: str) -> dict[str, dict[str, int]]:
    lines = stdout.splitlines()
    head = lines[0].split()
    assert head == ["language", "recorded", "synthesised", "cached", "failed", "dynamic"], stdout
    rows = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != len(head) or not parts[1].isdigit():
            break
        rows[parts[0]] = dict(zip(head[1:], map(int, parts[1:])))
    return rows


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory):
    """The demo flow rendered once for this module, into a private folder and cache."""
    tmp = tmp_path_factory.mktemp("demo-prompts")
    out, cache = tmp / "sounds", tmp / "cache"
    result = ivr_command("prompts", "build", str(DEMO), "--out", str(out), "--cache-dir", str(cache),
                         "--jobs", str(JOBS), cwd=tmp)
    return tmp, out, cache, result


def static_prompts() -> dict[str, dict[str, str]]:
    flow = load_flow(DEMO)
    return {pid: p.texts() for pid, p in flow.prompts.items() if "{" not in "".join(p.texts().values())}


def test_build_renders_both_languages_of_the_demo(demo_build):
    tmp, out, cache, result = demo_build
    assert result.returncode == 0, result.stderr
    static = static_prompts()
    dynamic = len(load_flow(DEMO).prompts) - len(static)
    assert len(static) > 15 and dynamic > 2  # the demo has both kinds
    rows = table(result.stdout)
    assert rows == {lang: {"recorded": 0, "synthesised": len(static), "cached": 0, "failed": 0, "dynamic": dynamic}
                    for lang in ("zh-CN", "en-US")}
    for lang in ("zh-CN", "en-US"):
        files = sorted(p.stem for p in (out / lang).glob("*.wav"))
        assert files == sorted(static), lang
        for pid in files:
            with wave.open(str(out / lang / f"{pid}.wav")) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2), pid
                assert w.getnframes() > 8000 * 0.5, pid
    # the two languages really differ (Mandarin and English voices, not one text twice)
    assert (out / "zh-CN" / "welcome.wav").read_bytes() != (out / "en-US" / "welcome.wav").read_bytes()
    manifest = json.loads((out / ".prompts.json").read_text())["entries"]
    total = 2 * len(static_prompts())
    assert len(manifest) == total and manifest["en-US/welcome"]["voice_lang"] == "en-US"
    # not a terminal: plain progress lines, one per prompt
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == total and progress[-1].startswith(f"[{total}/{total}]")
    assert f"{total} worker run(s)" in result.stdout


def test_second_build_does_no_work_and_shows_a_progress_bar_on_a_terminal(demo_build):
    tmp, out, cache, first = demo_build
    assert first.returncode == 0
    before = {p: p.stat().st_ino for p in out.glob("*/*.wav")}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        env = {**env_without_ivr(), "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
        proc = subprocess.Popen([sys.executable, "-m", "ivr", "prompts", "build", str(DEMO), "--out", str(out),
                                 "--cache-dir", str(cache)], cwd=tmp, env=env, stdout=subprocess.PIPE,
                                stderr=slave, text=True)
        os.close(slave)
        slave = -1
        stdout, _ = proc.communicate(timeout=120)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        bar = b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert proc.returncode == 0, bar
    rows = table(stdout)
    assert {lang: (r["synthesised"], r["cached"]) for lang, r in rows.items()} == {"zh-CN": (0, len(static_prompts())), "en-US": (0, len(static_prompts()))}
    assert "0 worker run(s)" in stdout and "(nothing to do)" in stdout
    total = 2 * len(static_prompts())
    assert re.search(rf"100%\|[^\n]*\| {total}/{total}", bar), bar  # tqdm's bar, not plain lines
    assert {p: p.stat().st_ino for p in out.glob("*/*.wav")} == before


def test_build_exits_non_zero_when_a_prompt_fails(demo_build, tmp_path):
    _, out, cache, first = demo_build
    assert first.returncode == 0
    shutil.copytree(out, tmp_path / "sounds")
    result = ivr_command("prompts", "build", str(DEMO), "--out", str(tmp_path / "sounds"), "--cache-dir", str(cache),
                         cwd=tmp_path, env={"IVR_PROMPT_VOICES": "en-US=klingon"})
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["zh-CN"]["cached"] == len(static_prompts()) and rows["zh-CN"]["failed"] == 0
    assert rows["en-US"]["failed"] == len(static_prompts())
    assert "failed: en-US/welcome (demo_hotline): espeak-ng has no voice 'klingon'" in result.stderr
    bad = ivr_command("prompts", "build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert bad.returncode == 1 and "nope.yaml" in bad.stderr


async def test_a_call_plays_rendered_files_and_a_missing_one_falls_back_to_synthesis(demo_build, server):
    _, out, _, first = demo_build
    assert first.returncode == 0
    sounds = Path(server.config.sounds_dir)
    shutil.copytree(out, sounds, dirs_exist_ok=True)
    service = server.voice_hooks["prompt_files"].__self__
    await service.load_manifest()

    result, session, _ = await call(server, DEMO_KEYS)
    assert session["outcome"] == "transfer"
    ours = [name for name in result.played if name.startswith("ivr/")]
    assert {"ivr/zh-CN/welcome", "ivr/zh-CN/main_menu", "ivr/zh-CN/ask_id", "ivr/zh-CN/to_agent"} <= set(ours)
    balance = [n for n in ours if n.startswith("ivr/zh-CN/balance-")]
    assert len(balance) == 1, ours  # rendered during the call: the amount is in it
    for name in ours:  # every file Asterisk was asked for is there, in its format
        with wave.open(str(sounds / f"{name.removeprefix('ivr/')}.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2), name

    flow = server.registry.get("demo_hotline")
    text = flow.prompts["main_menu"].texts()["zh-CN"]
    expected = prompt_file_name(PromptOut("main_menu", text, "zh-CN", dynamic=True))
    result, session, _ = await call(server, ["1", "3", "1"], missing_files={"ivr/zh-CN/main_menu"})
    assert session["outcome"] == "completed"
    i = result.played.index("ivr/zh-CN/main_menu")
    assert result.played[i + 1] == expected, result.played  # replayed at once, synthesised
    assert any(c.startswith(f"STREAM FILE {expected} ") for c in result.commands)
    fallback = sounds / "zh-CN" / f"{expected.rsplit('/', 1)[1]}.wav"
    with wave.open(str(fallback)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.getnframes() == wave.open(str(sounds / "zh-CN" / "main_menu.wav")).getnframes()
    assert service.fallbacks >= 1
