"""Helpers for the prompt-audio tests: a small flow, settings, and a worker
wrapper that counts invocations and hangs on request (real processes)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from ivr.prompts.render import PromptSettings

TINY_FLOW = """\
id: tiny
title: {zh-CN: 测试, en-US: Test}
languages: [zh-CN, en-US]
default_language: zh-CN
prompts:
  hello:
    recording: greeting_v2
    zh-CN: 你好。
    en-US: Hello.
  bye:
    zh-CN: 再见。
    en-US: Goodbye.
  amount:
    zh-CN: "余额{{ balance | money }}。"
    en-US: "Your balance is {{ balance | money }}."
start: hello_node
nodes:
  hello_node: {type: say, prompt: [hello, amount], next: thanks}
  thanks:
    type: say
    prompt: {zh-CN: 谢谢。, en-US: Thank you.}
    next: bye_node
  bye_node: {type: hangup, prompt: bye}
"""

# Runs the real worker, after logging "<pid> <job>" to a file; a synthesis whose
# text contains HANG starts a grandchild that sleeps and waits for it forever.
WRAPPER = """\
import os, subprocess, sys
log, args = {log!r}, sys.argv[1:]
data = sys.stdin.buffer.read()
with open(log, "a") as fh:
    fh.write(f"{{os.getpid()}} {{args[0]}}\\n")
if args[0] == "synth" and b"HANG" in data:
    child = subprocess.Popen(["sleep", "3600"])
    with open(log, "a") as fh:
        fh.write(f"{{child.pid}} sleeping\\n")
    child.wait()
sys.exit(subprocess.run([sys.executable, "-m", "ivr.prompts.worker", *args], input=data).returncode)
"""


def write_flow(path: Path, text: str = TINY_FLOW) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def make_settings(tmp: Path, **overrides) -> PromptSettings:
    values = dict(sounds_dir=tmp / "sounds", sounds_prefix="ivr", recordings_dir=tmp / "recordings",
                  cache_dir=tmp / "cache", timeout=30.0, command=(sys.executable, "-m", "ivr.prompts.worker"))
    values.update(overrides)
    return PromptSettings(**values)


def counting_worker(tmp: Path) -> tuple[tuple[str, ...], Path]:
    log = tmp / "worker.log"
    script = tmp / "worker_wrapper.py"
    script.write_text(WRAPPER.format(log=str(log)), encoding="utf-8")
    return (sys.executable, str(script)), log


def worker_runs(log: Path, job: str = "synth") -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[0]) for line in log.read_text().splitlines() if line.split()[1] == job]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for a non-reaping init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def env_without_ivr() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("IVR_")}
