"""Faults on the FastAGI link: hang-ups, resets, a silent or garbage-sending
peer, SIGTERM under load. Real server, real sockets, real SQLite trail; the
fake Asterisk (ivr.testing.fake_asterisk) plays the peer and injects faults.

Each test checks what survives: the session's outcome and end node, a
complete trail (``session_start`` first, ``session_end`` last, ``ended_at``
set), no ERROR record or traceback in the logs, and no task or socket left
behind.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ivr.agi.protocol import DEAD_CHANNEL_VERBS
from ivr.logs import current_call
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import SILENCE, AppOutcome, FakeAsterisk, FakeCallResult, PeerFault, build_env
from ivr.testing.paths import explore

from ..conftest import ROOT

# ---------------------------------------------------------------------------
# Shared helpers

#: Start variants of a call: who calls, and what the queue does.
CALLERS = {"known": "13800138000", "unknown": "13700000000", "busy": "13800138000"}
#: How deep each start variant is explored (see ivr.testing.paths.explore).
STARTS = {"known": 14, "unknown": 4, "busy": 4}
#: Entries the demo back end tells apart: an account that exists and one that
#: does not; the holder's ID, one with a bad check digit, another person's.
SAMPLES = {
    "account": ["20240001#", "99999999#"],
    "id_number": ["110105199003071239#", "110105199003071230#", "110108198511202340#"],
}
#: The demo call: Chinese, billing, account + ID, balance, 0 for a person, survey 5.
DEMO_KEYS = ["1", "1", "20240001#", "110105199003071239#", "1", "0", "5"]
BATCH = 20


def _apps(start: str) -> dict[str, Any] | None:
    # "busy": nobody answers in the queue, so the flow's failure exit runs
    return {"queue": AppOutcome(0, {"QUEUESTATUS": "TIMEOUT"})} if start == "busy" else None


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def agi_socket_fds(port: int) -> int:
    """File descriptors of this process that are TCP sockets to or from ``port``
    (both ends of every FastAGI call live in the test process)."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            if state != "0A" and port in (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)):
                inodes.add(inode)  # 0A: the listening socket
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


_seq = itertools.count()


class Timeline(logging.Handler):
    """Trail events as logged (ivr.trail), stamped in one order with the
    commands the fakes receive: tells which node each command belonged to."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: dict[str, list[tuple[int, str, str | None, dict[str, Any]]]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        _, session_id = current_call()
        if event and session_id:
            try:
                data = json.loads(record.args[3])  # type: ignore[index]
            except (TypeError, IndexError, ValueError):
                data = {}
            self.events.setdefault(session_id, []).append((next(_seq), event["kind"], event["node"], data))


@dataclass
class Recorded:
    """One whole call: the fake's record and, per command, what the session was doing."""

    result: FakeCallResult
    session: dict[str, Any] | None
    events: list[dict[str, Any]]
    stamps: list[int] = field(default_factory=list)
    #: per command: node of the last trail event before it (None: no session yet)
    node: list[str | None] = field(default_factory=list)
    #: per command: the session had ended before it (goodbye prompt, final HANGUP)
    ended: list[bool] = field(default_factory=list)
    #: per command: the caller had been put through to a person before it
    talked: list[bool] = field(default_factory=list)


async def wait_ended(app, session_id: str | None, timeout: float = 10.0) -> dict[str, Any] | None:
    """The session row once ``ended_at`` is set (None when there is no session)."""
    if not session_id:
        return None
    deadline = time.monotonic() + timeout
    session = await app.store.get_session(session_id)
    while (session is None or session["ended_at"] is None) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        session = await app.store.get_session(session_id)
    return session


async def place(app, flow_id: str, start: str, inputs, timeline: Timeline | None = None, **kw) -> Recorded:
    """One call. With a ``timeline`` the trail comes from the log (fast, for
    exploring) and each command gets its node; without, from the database."""
    stamps: list[int] = []
    fake = FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(list(inputs)), script=flow_id,
                        callerid=CALLERS[start], apps=_apps(start),
                        on_exchange=lambda line, reply: stamps.append(next(_seq)), **kw)
    result = await fake.run()
    session_id = result.variables.get("IVR_SESSION")
    if timeline is None:
        session = await wait_ended(app, session_id)
        events = await app.store.events(session["id"]) if session else []
        return Recorded(result, session, events, stamps)
    logged = timeline.events.get(session_id or "", [])
    events = [{"kind": kind, "node": node, "data": data} for _, kind, node, data in logged]
    ends = [e for e in events if e["kind"] == "session_end"]
    session = {"id": session_id, "outcome": ends[-1]["data"].get("outcome") if ends else None} if session_id else None
    rec = Recorded(result, session, events, stamps)
    for stamp in stamps:
        before = [e for e in logged if e[0] < stamp]
        rec.node.append(before[-1][2] if before else None)
        rec.ended.append(any(e[1] == "session_end" for e in before))
        rec.talked.append(any(e[1] == "transfer_result" for e in before))
    return rec


def trail_problems(session: dict[str, Any] | None, events: list[dict[str, Any]]) -> list[str]:
    """What is wrong with a finished session's trail (empty: complete)."""
    if session is None:
        return []
    out = []
    if session["ended_at"] is None:
        out.append("ended_at not set")
    kinds = [e["kind"] for e in events]
    if not kinds or kinds[0] != "session_start":
        out.append(f"trail does not start with session_start: {kinds[:2]}")
    if not kinds or kinds[-1] != "session_end":
        out.append(f"trail does not end with session_end: {kinds[-2:]}")
    if kinds.count("session_end") != 1:
        out.append(f"{kinds.count('session_end')} session_end events")
    return out


def log_problems(caplog) -> list[str]:
    bad = [f"{r.levelname} {r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelno >= logging.ERROR]
    if "Traceback" in caplog.text:
        bad.append("a traceback in the log")
    return bad


class Leaks:
    """Tasks and file descriptors before a test, compared after it.

    Take it after :func:`warm_up`: the look-ups' HTTP keep-alive pool (and the
    web server's handler task per kept-alive connection) belongs to the server,
    not to any call, and grows up to the number of calls run at once.
    """

    def __init__(self, app) -> None:
        self.app = app
        self.tasks = set(asyncio.all_tasks())
        self.fds = open_fds()

    async def problems(self, fd_slack: int = 2 * BATCH) -> list[str]:
        app = self.app
        port = app.config.agi_port
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (app.agi.active_calls or app.live_calls or self._new_tasks()
                                               or agi_socket_fds(port) or open_fds() > self.fds + fd_slack):
            await asyncio.sleep(0.05)
        out = []
        if app.agi.active_calls:
            out.append(f"{app.agi.active_calls} FastAGI connections still open")
        if app.live_calls:
            out.append(f"{len(app.live_calls)} calls still in the live-call registry")
        if self._new_tasks():
            out.append(f"tasks left behind: {sorted({t.get_coro().__qualname__ for t in self._new_tasks()})}")
        if agi_socket_fds(port):
            out.append(f"{agi_socket_fds(port)} FastAGI sockets still open")
        if open_fds() > self.fds + fd_slack:
            out.append(f"file descriptors: {open_fds()} after, {self.fds} before")
        return out

    def _new_tasks(self) -> set[asyncio.Task]:
        return {t for t in asyncio.all_tasks() - self.tasks
                if not t.done() and t is not asyncio.current_task()
                and not t.get_coro().__qualname__.startswith("RequestHandler.")}  # HTTP keep-alive


async def warm_up(app) -> None:
    """A batch of whole calls at once: the server's pools reach their working size."""
    await asyncio.gather(*(place(app, "demo_hotline", "known", DEMO_KEYS) for _ in range(BATCH)))


def shipped_flows(app) -> list[str]:
    ids = [app.registry.find(p.stem).id for p in sorted((ROOT / "flows").glob("*.yaml")) if app.registry.find(p.stem)]
    assert ids, "no shipped flow loaded"
    return ids


# ---------------------------------------------------------------------------
# agi.hangup-every-command


#: Commands the fake Asterisk answers in full before the line drops when the
#: caller hangs up during them (the others answer ``result=-1`` at once).
_COMPLETE_THEN_DROP = ("SET VARIABLE", "GET VARIABLE", "GET FULL", "VERBOSE", "CHANNEL STATUS", "HANGUP", "NOOP")
#: Commands the server still sends once the channel is dead (no hang-up seen on them).
_SENT_WHEN_DEAD = ("SET VARIABLE", "GET VARIABLE", "GET FULL", "VERBOSE")


def _expected(full: Recorded, k: int) -> tuple[set[str | None], set[str]]:
    """Nodes and outcomes a hang-up during command ``k`` (0-based) may end with.

    A command Asterisk completes before the line drops shows the hang-up at
    the next command that needs a live channel (index ``j``): the session may
    have gone on to that command's node meanwhile, and no further.
    """
    commands = full.result.commands
    j = k
    if commands[k].startswith(_COMPLETE_THEN_DROP):
        j = k + 1
        while j < len(commands) - 1 and commands[j].startswith(_SENT_WHEN_DEAD):
            j += 1
        j = min(j, len(commands) - 1)
    first = next((n for n in full.node if n is not None), None)
    nodes = {n if n is not None else first for n in full.node[k:j + 1]}
    if full.ended[k]:
        return nodes, {full.session["outcome"]}
    outcomes = {"hangup"}
    if any(full.talked[i] or commands[i].startswith(("EXEC Queue", "EXEC Dial")) for i in range(k, j + 1)):
        outcomes.add("transfer")
    return nodes, outcomes


@pytest.mark.reliability("agi.hangup-every-command")
async def test_hangup_at_every_command_of_every_path(server, rel, caplog):
    caplog.set_level(logging.WARNING)
    timeline = Timeline()
    trail_log = logging.getLogger("ivr.trail")
    old_level = trail_log.level
    trail_log.setLevel(logging.INFO)
    trail_log.addHandler(timeline)
    await warm_up(server)
    leaks = Leaks(server)
    problems: list[str] = []
    points = paths = 0
    explore_s = 0.0
    t_all = time.monotonic()
    try:
        for flow_id in shipped_flows(server):
            flow = server.registry.get(flow_id)

            async def run(start, inputs):
                rec = await place(server, flow_id, start, inputs, timeline)
                return rec.events, rec

            t0 = time.monotonic()
            found = await explore(flow, run, starts=STARTS, samples=SAMPLES, max_runs=1200, concurrency=BATCH)
            explore_s += time.monotonic() - t0
            assert len(found.covered & found.declared) >= 0.85 * len(found.declared), sorted(found.uncovered)
            rel.note(f"{flow_id}: {len(found.paths)} paths cover {len(found.covered & found.declared)} of "
                     f"{len(found.declared)} declared edges ({found.runs} exploring calls); not steerable by the "
                     f"caller: {', '.join(f'{a}->{b}' for a, b in sorted(found.uncovered))}")
            jobs = []
            seen: set[tuple] = set()
            for path in found.paths:
                full = path.result
                assert full.result.commands and len(full.node) == len(full.result.commands)
                for k in range(len(full.result.commands)):
                    # the same exchange up to this command (another start or
                    # path that has not diverged yet): the same hang-up point
                    key = (tuple(full.result.commands[:k + 1]), tuple(map(tuple, full.result.replies[:k])))
                    if key not in seen:
                        seen.add(key)
                        jobs.append((path, k))
            paths += len(found.paths)
            points += len(jobs)

            async def one(path, k):
                rec = await place(server, flow_id, path.start, path.inputs, hangup_after=k + 1)
                where = f"{flow_id} {path.start} {list(map(str, path.inputs))} hang-up at command {k + 1} " \
                        f"({path.result.result.commands[k][:40]!r})"
                out = [f"{where}: {p}" for p in trail_problems(rec.session, rec.events)]
                if not rec.result.server_closed:
                    out.append(f"{where}: the server did not close the socket")
                nodes, outcomes = _expected(path.result, k)
                if rec.session is None:
                    if k > 0:
                        out.append(f"{where}: no session")
                    return out
                if rec.session["outcome"] not in outcomes:
                    out.append(f"{where}: outcome {rec.session['outcome']}, expected {outcomes}")
                if rec.session["end_node"] not in nodes:
                    out.append(f"{where}: ended at {rec.session['end_node']}, expected {nodes}")
                if rec.session["outcome"] in ("hangup", "transfer") and not path.result.ended[k]:
                    # the caller's hang-up is on the trail where the session ended (or,
                    # hanging up in the queue, the transfer's end: who can tell whether
                    # an agent had answered)
                    hang = [e for e in rec.events if e["kind"] == "hangup"
                            or (e["kind"] == "transfer_result" and e["data"].get("status") == "ended")]
                    if not hang or hang[-1]["node"] != rec.session["end_node"]:
                        out.append(f"{where}: hangup event at {hang[-1]['node'] if hang else None}, "
                                   f"session ended at {rec.session['end_node']}")
                return out

            for i in range(0, len(jobs), BATCH):
                for found_problems in await asyncio.gather(*(one(p, k) for p, k in jobs[i:i + BATCH])):
                    problems.extend(found_problems)
    finally:
        trail_log.removeHandler(timeline)
        trail_log.setLevel(old_level)
    problems += await leaks.problems()
    problems += log_problems(caplog)
    rel.tried(points)
    rel.note(f"{paths} paths, {points} distinct hang-up points")
    rel.figure("exploring", round(explore_s, 1), " s")
    rel.figure("hang-up sweep", round(time.monotonic() - t_all - explore_s, 1), " s")
    rel.lost(len(problems), "; ".join(problems[:5]))
    assert not problems, "\n".join(problems[:30])
