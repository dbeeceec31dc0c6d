"""Hostile flow files: ``ivr validate`` and the live server's reload.

Every file below must give a clear error naming the file (and the line where
there is one) from ``ivr validate``, run as a real process with bounded time
and peak memory (measured per process with ``wait4``); and a running server
that finds it in place of ``demo_hotline.yaml`` must keep the old version:
the reload is refused with a logged error (no traceback) and a demo call
still completes on the old version.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import FakeAsterisk

from ..conftest import ROOT
from .support import wait_ended

DEMO = (ROOT / "flows" / "demo_hotline.yaml").read_text(encoding="utf-8")
MAX_SECONDS = 10.0  # generous: a clean validate takes about one second
MAX_MB = 300.0


@dataclass(frozen=True)
class Case:
    name: str
    message: str  # a fragment of the error
    line: int | None = None  # the line the error must point at, when there is one


def _bomb() -> bytes:
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        rows.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    return ("\n".join(rows) + "\n").encode()


def _merge_bomb() -> bytes:
    rows = ["m0: &m0 {k0: 1, k1: 2, k2: 3}"]
    for i in range(1, 14):
        rows.append(f"m{i}: &m{i}\n  <<: [" + ", ".join([f"*m{i - 1}"] * 9) + f"]\n  x{i}: 1")
    return ("\n".join(rows) + "\n").encode()


def _huge(path: Path) -> None:
    line = b"  " + b"a" * 97 + b"\n"
    with path.open("wb") as fh:
        fh.write(b"id: demo_hotline\nx: |\n")
        for _ in range(50):
            fh.write(line * (1024 * 1024 // len(line) + 1))


def _junk(seed: int, *, nul: bool) -> bytes:
    rnd = random.Random(seed)
    data = bytes(rnd.randrange(256) for _ in range(8192))
    return data if nul else data.replace(b"\x00", b"\x01")


DEMO_BYTES = DEMO.encode("utf-8")
_DUP_LINE = DEMO[: DEMO.index("\nstart:")].count("\n") + 2
_NUL_AT = DEMO_BYTES.index(b"\n", 600)

CASES: dict[str, tuple[Case, object]] = {
    "alias-bomb": (Case("alias-bomb", "too many values"), _bomb()),
    "merge-bomb": (Case("merge-bomb", "missing field 'id'"), _merge_bomb()),
    "huge-50mb": (Case("huge-50mb", "larger than 2048 KiB"), _huge),
    "deep-lists": (Case("deep-lists", "nesting deeper than"), b"a: " + b"[" * 100_000),
    "deep-maps": (Case("deep-maps", "nesting deeper than"), b"{" * 100_000),
    "deep-blocks": (Case("deep-blocks", "nesting deeper than"),
                    "".join(" " * i + "k:\n" for i in range(600)).encode()),
    "junk-with-nul": (Case("junk-with-nul", "NUL bytes"), _junk(1, nul=True)),
    "junk-no-nul": (Case("junk-no-nul", "not valid UTF-8"), _junk(2, nul=False)),
    "utf16-bom": (Case("utf16-bom", "file is UTF-16, not UTF-8", 1), DEMO.encode("utf-16")),
    "utf16le-no-bom": (Case("utf16le-no-bom", "UTF-16 (no byte order mark)", 1), DEMO.encode("utf-16-le")),
    "utf16be-no-bom": (Case("utf16be-no-bom", "UTF-16 (no byte order mark)", 1), DEMO.encode("utf-16-be")),
    "latin1": (Case("latin1", "not valid UTF-8"),
               DEMO.replace("Hello", "Hélló").encode("latin-1", "replace")),
    "gbk": (Case("gbk", "not valid UTF-8", 8), DEMO.encode("gbk", "replace")),
    "nul-inside": (Case("nul-inside", "NUL bytes", DEMO_BYTES[:_NUL_AT].count(b"\n") + 1),
                   DEMO_BYTES[:_NUL_AT] + b"\x00" + DEMO_BYTES[_NUL_AT:]),
    "python-tag": (Case("python-tag", "YAML tag '!!python/object/apply:os.system' is not allowed", 2),
                   b"id: demo_hotline\ntitle: !!python/object/apply:os.system [echo pwned]\n"),
    "python-name-tag": (Case("python-name-tag", "YAML tag '!!python/name:os.system' is not allowed", 1),
                        b"start: !!python/name:os.system ''\n"),
    "duplicate-key": (Case("duplicate-key", "duplicate key 'id'", _DUP_LINE),
                      DEMO.replace("\nstart:", "\nid: other\nstart:", 1).encode()),
    "truncated": (Case("truncated", "YAML syntax error"), DEMO_BYTES[: len(DEMO_BYTES) // 2]),
    "empty": (Case("empty", "file is empty", 1), b""),
    "fifo": (Case("fifo", "not a regular file", 1), "fifo"),
}


def _write(case: str, path: Path) -> None:
    _, body = CASES[case]
    if path.exists() or path.is_symlink():
        path.unlink()
    if body == "fifo":
        os.mkfifo(path)
    elif callable(body):
        body(path)
    else:
        path.write_bytes(body)


def _latin1_line() -> int:
    text = DEMO.replace("Hello", "Hélló")
    return text[: text.index("é")].count("\n") + 1


_PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:], timeout=55)\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def _run_cli(args: list[str], cwd: Path) -> tuple[int, str, float, float]:
    """Run ``ivr`` in a child; (exit code, stderr, seconds, peak RSS in MB) of that child alone."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    err_path = cwd / f".stderr-{time.monotonic_ns()}"
    rss_path = err_path.with_suffix(".rss")
    with err_path.open("wb") as err:
        started = time.monotonic()
        # Through a small wrapper: a child forked straight from this (large) test
        # process would report this process's memory as its own peak.
        proc = subprocess.Popen([sys.executable, "-c", _PEAK_WRAPPER, str(rss_path), sys.executable, "-m", "ivr.cli",
                                 "validate", *args], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        killer = threading.Timer(60, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    err_path.unlink()
    peak_kb = int(rss_path.read_text()) if rss_path.exists() else usage.ru_maxrss
    rss_path.unlink(missing_ok=True)
    return proc.returncode, stderr, seconds, peak_kb / 1024


@pytest.mark.reliability("flows.hostile-files")
def test_validate_cli_refuses_every_hostile_file_in_bounded_time_and_memory(rel, tmp_path):
    worst_s, worst_mb = 0.0, 0.0
    tried = 0
    for name, (case, _) in CASES.items():
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "demo_hotline.yaml"
        _write(name, path)
        code, stderr, seconds, mb = _run_cli([str(path)], folder)
        tried += 1
        worst_s, worst_mb = max(worst_s, seconds), max(worst_mb, mb)
        assert code == 1, (name, code, stderr)
        assert "Traceback" not in stderr, (name, stderr)
        line = _latin1_line() if name == "latin1" else case.line
        prefix = f"{path}:{line}:" if line else f"{path}:"
        problems = [l for l in stderr.splitlines() if l.startswith(prefix) and case.message in l]
        assert problems, (name, prefix, case.message, stderr[-2000:])
        assert f"{path}: invalid" in stderr, (name, stderr)
        assert seconds < MAX_SECONDS, (name, seconds)
        assert mb < MAX_MB, (name, mb)

    # All of them as siblings of a good flow in one folder, as in a flows
    # directory: each is named with its error and the good one still passes.
    folder = tmp_path / "together"
    folder.mkdir()
    for name in CASES:
        _write(name, folder / f"{name}.yaml")
    (folder / "demo_hotline.yaml").write_text(DEMO, encoding="utf-8")
    code, stderr, seconds, mb = _run_cli(["-q", str(folder)], folder)
    tried += 1
    worst_s, worst_mb = max(worst_s, seconds), max(worst_mb, mb)
    assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
    for name in CASES:
        if name == "fifo":
            continue  # a folder lists *.yaml files; the FIFO is one, and is named too
        assert f"{folder / name}.yaml: invalid" in stderr, (name, stderr[-3000:])
    assert f"{folder / 'fifo'}.yaml: invalid" in stderr
    assert "demo_hotline.yaml: invalid" not in stderr
    assert seconds < MAX_SECONDS * 3 and mb < MAX_MB, (seconds, mb)

    rel.tried(tried)
    rel.figure("validate max seconds", round(worst_s, 2), " s")
    rel.figure("validate max peak RSS", round(worst_mb), " MB")
    rel.note(f"{len(CASES)} hostile files, one `ivr validate` process each plus all in one folder")


async def _demo_call(app) -> tuple[dict, object]:
    fake = FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(["1", "3", "1"]),
                        script="demo_hotline")
    result = await fake.run()
    session = await wait_ended(app, result.variables.get("IVR_SESSION"))
    return session, result


@pytest.mark.reliability("flows.hostile-files")
async def test_running_server_keeps_its_flows_when_a_hostile_file_replaces_them(rel, server, flows_dir, caplog):
    path = flows_dir / "demo_hotline.yaml"
    v1 = server.registry.get("demo_hotline").version
    lost = 0
    worst = 0.0
    stamp = time.time_ns()
    for n, name in enumerate(CASES):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="ivr.flows")
        _write(name, path)
        if name != "fifo":
            stamp += 10**9
            os.utime(path, ns=(stamp, stamp))
        started = time.monotonic()
        if n % 2:  # as the watcher does it, in a thread
            import asyncio

            changed = await asyncio.to_thread(server.registry.reload)
        else:
            changed = server.registry.reload()
        worst = max(worst, time.monotonic() - started)
        assert changed == [], name
        assert server.registry.get("demo_hotline").version == v1, name
        assert str(path) in server.registry.errors, name
        refusals = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(refusals) == 1, (name, [r.getMessage() for r in caplog.records])
        message = refusals[0].getMessage()
        assert refusals[0].exc_info is None and "Traceback" not in message, (name, message)
        assert f"flow file {path} refused" in message and f"version {v1} stays live" in message, message
        assert CASES[name][0].message in message, (name, message)
        session, result = await _demo_call(server)
        if not (session and session["outcome"] == "completed" and session["flow_version"] == v1
                and result.server_closed):
            lost += 1
    # The good file back: nothing changes, no error left.
    path.unlink()
    path.write_text(DEMO, encoding="utf-8")
    server.registry.reload()
    assert server.registry.get("demo_hotline").version == v1 and not server.registry.errors
    rel.tried(len(CASES))
    rel.lost(lost, "demo calls that did not complete on the old version")
    rel.figure("reload max seconds", round(worst, 2), " s")
    assert lost == 0
