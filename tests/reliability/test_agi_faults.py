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
import contextlib
import datetime as dt
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

from ivr import names
from ivr.logs import current_call
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import SILENCE, AppOutcome, FakeAsterisk, FakeCallResult, PeerFault, build_env
from ivr.testing.paths import explore

from ..conftest import ROOT, free_port, running_server
from .support import wait_ended

# ---------------------------------------------------------------------------
# Shared helpers

#: Start variants of a call: who calls, and what the queue does.
CALLERS = {"known": "13800138000", "unknown": "13700000000", "busy": "13800138000", "callback": "13800138000"}
#: How deep each start variant is explored (see ivr.testing.paths.explore).
STARTS = {"known": 14, "unknown": 4, "busy": 4, "callback": 4}
#: Entries the demo back end tells apart: an account that exists and one that
#: does not; the holder's ID, one with a bad check digit, another person's.
SAMPLES = {
    "account": ["20240001#", "99999999#"],
    "id_number": ["110105199003071239#", "110105199003071230#", "110108198511202340#"],
}
#: The demo call: Chinese, billing, account + ID, balance, 0 for a person, survey 5.
DEMO_KEYS = ["1", "1", "20240001#", "110105199003071239#", "1", "0", "5"]
#: The demo call with a silence at the main menu (so a WAIT FOR DIGIT too).
FAULT_KEYS = ["1", SILENCE, "1", "20240001#", "110105199003071239#", "1", "0", "5"]
BATCH = 20


def _apps(start: str) -> dict[str, Any] | None:
    # "busy": nobody answers in the queue, so the flow's failure exit runs;
    # "callback": the caller presses the callback key while waiting in the
    # queue (Queue() leaves to the exit context, no QUEUESTATUS)
    if start == "busy":
        return {"queue": AppOutcome(0, {"QUEUESTATUS": "TIMEOUT"})}
    if start == "callback":
        return {"queue": AppOutcome(0, {"CONTEXT": names.CONTEXT_QUEUE_EXIT, "EXTEN": names.QUEUE_EXIT_CALLBACK_KEY})}
    return None


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


@contextlib.contextmanager
def timeline_on():
    timeline = Timeline()
    trail_log = logging.getLogger("ivr.trail")
    old_level = trail_log.level
    trail_log.setLevel(logging.INFO)
    trail_log.addHandler(timeline)
    try:
        yield timeline
    finally:
        trail_log.removeHandler(timeline)
        trail_log.setLevel(old_level)


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


def _expected(full: Recorded, k: int, *, seen_at_once: bool = False) -> tuple[set[str | None], set[str]]:
    """Nodes and outcomes a hang-up during command ``k`` (0-based) may end with.

    A command Asterisk completes before the line drops shows the hang-up at
    the next command that needs a live channel (index ``j``): the session may
    have gone on to that command's node meanwhile, and no further. With
    ``seen_at_once`` (the connection itself broke) the command shows it.
    """
    commands = full.result.commands
    j = k
    if commands[k].startswith(_COMPLETE_THEN_DROP) and not seen_at_once:
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


#: 02:00 in Shanghai on a Thursday: the demo's agents are out (its hours node says closed).
NIGHT = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.timezone.utc)
#: Edges of a shipped flow no condition below can take, with the reason (none today).
UNREACHABLE: dict[str, dict[tuple[str, str], str]] = {}


@contextlib.asynccontextmanager
async def refused_port():
    """A local port bound but never listening: every connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def verify_only_backend():
    """The demo back end (:mod:`ivr.demo_backend`, real HTTP) that goes down
    once the caller is verified: only the verify look-up answers, every other
    request gets 503. Takes the failure branch of look-ups behind the check."""
    from aiohttp import web

    from ivr.demo_backend import DEMO_PREFIX, create_demo_backend

    @web.middleware
    async def only_verify(request, handler):
        if request.method == "POST" and request.path.endswith("/verify"):
            return await handler(request)
        return web.json_response({"error": "backend unavailable", "detail": ""}, status=503)

    webapp = web.Application(middlewares=[only_verify])
    webapp.add_subapp(DEMO_PREFIX, create_demo_backend())
    runner = web.AppRunner(webapp, shutdown_timeout=0.5, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}{DEMO_PREFIX}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def condition_server(name: str, tmp_path: Path, flows_dir: Path, prompt_cache: Path):
    """A server under one condition (``office hours``: the usual test server).

    Its text limits are out of reach: a replayed path must text the caller
    again where the explored one did (the limit per number and hour would
    otherwise refuse the fourth link, and the call go on another way)."""
    where = tmp_path / name.replace(" ", "-")
    where.mkdir()
    async with contextlib.AsyncExitStack() as stack:
        settings: dict[str, Any] = {"sms_limit_per_number": 1_000_000, "sms_limit_per_hour": 1_000_000}
        if name == "office hours":
            pass
        elif name == "night":
            settings["clock"] = lambda: NIGHT
        elif name == "backend-down":
            settings["backend_url"] = f"http://127.0.0.1:{await stack.enter_async_context(refused_port())}"
        elif name == "backend-down-after-verify":
            settings["backend_url"] = await stack.enter_async_context(verify_only_backend())
        else:
            raise ValueError(name)
        yield await stack.enter_async_context(running_server(where, flows_dir, prompt_cache, **settings))


#: Conditions each flow is explored and swept under besides office hours with
#: the back end up (explored with STARTS): what the caller cannot steer, and
#: the start variants worth exploring there, and how deep. A condition only
#: changes a call where it meets the hours node or a look-up, all within five
#: answers of the start; at night nobody reaches the queue (so the busy and
#: callback starts are the known caller's), with the back end down the
#: identify look-up fails (every caller is unknown to it).
CONDITIONS = {
    "night": {"known": 5},
    "backend-down": {"known": 5, "busy": 3, "callback": 3},
    "backend-down-after-verify": {"known": 5},
}


async def _sweep(server, condition: str, covered: dict[str, dict[str, set]], declared: dict[str, set],
                 counts: dict[str, Any]) -> list[str]:
    """Explore every shipped flow on ``server`` and hang up at every distinct
    command of every path found; the problems seen (leaks included)."""
    await warm_up(server)
    leaks = Leaks(server)
    problems: list[str] = []
    with timeline_on() as timeline:
        for flow_id in shipped_flows(server):
            flow = server.registry.get(flow_id)

            async def run(start, inputs):
                rec = await place(server, flow_id, start, inputs, timeline)
                return rec.events, rec

            t0 = time.monotonic()
            starts = CONDITIONS.get(condition, STARTS)
            found = await explore(flow, run, starts=starts, samples=SAMPLES, max_runs=1200, concurrency=BATCH)
            counts["explore_s"] += time.monotonic() - t0
            counts["runs"] += found.runs
            if condition == "office hours":
                assert len(found.covered & found.declared) >= 0.85 * len(found.declared), sorted(found.uncovered)
            covered.setdefault(flow_id, {})[condition] = found.covered & found.declared
            declared[flow_id] = found.declared
            jobs = []
            seen: set[tuple] = set()
            for path in found.paths:
                full = path.result
                assert full.result.commands and len(full.node) == len(full.result.commands)
                # each call has its own session id (IVR_SESSION): not part of the exchange
                session_id = full.result.variables.get("IVR_SESSION") or "\0"
                commands = [c.replace(session_id, "<session>") for c in full.result.commands]
                for k in range(len(commands)):
                    # the same exchange up to this command (another start or
                    # path that has not diverged yet): the same hang-up point
                    key = (tuple(commands[:k + 1]), tuple(map(tuple, full.result.replies[:k])))
                    if key not in seen:
                        seen.add(key)
                        jobs.append((path, k))
            counts["paths"] += len(found.paths)
            counts["points"] += len(jobs)
            counts["by condition"][condition] = len(jobs)

            async def one(path, k):
                rec = await place(server, flow_id, path.start, path.inputs, hangup_after=k + 1)
                where = f"{condition}: {flow_id} {path.start} {list(map(str, path.inputs))} hang-up at command " \
                        f"{k + 1} ({path.result.result.commands[k][:40]!r})"
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

            t0 = time.monotonic()
            for i in range(0, len(jobs), BATCH):
                for found_problems in await asyncio.gather(*(one(p, k) for p, k in jobs[i:i + BATCH])):
                    problems.extend(found_problems)
            counts["sweep_s"] += time.monotonic() - t0
    problems += [f"{condition}: {p}" for p in await leaks.problems()]
    return problems


@pytest.mark.reliability("agi.hangup-every-command")
async def test_hangup_at_every_command_of_every_path(tmp_path, flows_dir, prompt_cache, rel, caplog):
    """Every path of every shipped flow, under office hours with the back end up
    and under each condition the caller cannot steer (night, back end down,
    back end down once the caller is verified): a hang-up at every command."""
    caplog.set_level(logging.WARNING)
    covered: dict[str, dict[str, set]] = {}
    declared: dict[str, set] = {}
    counts: dict[str, Any] = {"explore_s": 0.0, "sweep_s": 0.0, "runs": 0, "paths": 0, "points": 0,
                              "by condition": {}}
    problems: list[str] = []
    for condition in ("office hours", *CONDITIONS):
        async with condition_server(condition, tmp_path, flows_dir, prompt_cache) as app:
            problems += await _sweep(app, condition, covered, declared, counts)
    problems += log_problems(caplog)
    dropped: list[str] = []
    for flow_id, by_condition in covered.items():
        total = set().union(*by_condition.values())
        missing = declared[flow_id] - total
        unreachable = UNREACHABLE.get(flow_id, {})
        per = "; ".join(f"{c} {len(e)}" for c, e in by_condition.items())
        note = f"{flow_id}: {len(total)} of {len(declared[flow_id])} declared edges covered ({per})"
        if missing:
            note += "; not reachable: " + ", ".join(f"{a}->{b} ({unreachable.get((a, b), '?')})"
                                                     for a, b in sorted(missing))
        rel.note(note)
        # coverage cannot drop: every declared edge is taken under some condition
        dropped += [f"{flow_id}: {a}->{b}" for a, b in sorted(missing - set(unreachable))]
    rel.tried(counts["points"])
    rel.note(f"{counts['paths']} paths ({counts['runs']} exploring calls), {counts['points']} distinct hang-up "
             "points (" + "; ".join(f"{c} {n}" for c, n in counts["by condition"].items()) + ")")
    rel.figure("exploring", round(counts["explore_s"], 1), " s")
    rel.figure("hang-up sweep", round(counts["sweep_s"], 1), " s")
    rel.lost(len(problems), "; ".join(problems[:5]))
    assert not problems, "\n".join(problems[:30])
    assert not dropped, f"declared edges no condition covered: {dropped}"


def _hangup_problems(where: str, rec: Recorded, full: Recorded, k: int, *, seen_at_once: bool = False,
                     peer_closes: bool = False) -> list[str]:
    """What is wrong with a call the peer left during command ``k`` of ``full``
    (``peer_closes``: the peer closed the socket itself; Leaks checks the server's end)."""
    out = [f"{where}: {p}" for p in trail_problems(rec.session, rec.events)]
    if not rec.result.server_closed and not peer_closes:
        out.append(f"{where}: the server did not close the socket")
    nodes, outcomes = _expected(full, k, seen_at_once=seen_at_once)
    if rec.session is None:
        if full.node[k] is not None or k > 1:
            out.append(f"{where}: no session")
        return out
    if rec.session["outcome"] not in outcomes:
        out.append(f"{where}: outcome {rec.session['outcome']}, expected {outcomes}")
    if rec.session["end_node"] not in nodes:
        out.append(f"{where}: ended at {rec.session['end_node']}, expected {nodes}")
    if not full.ended[k]:
        hang = [e for e in rec.events if e["kind"] == "hangup"
                or (e["kind"] == "transfer_result" and e["data"].get("status") == "ended")]
        if not hang or hang[-1]["node"] != rec.session["end_node"]:
            out.append(f"{where}: hangup event at {hang[-1]['node'] if hang else None}, "
                       f"session ended at {rec.session['end_node']}")
    return out


# ---------------------------------------------------------------------------
# agi.reset-mid-command

#: Kinds of command a reset is tried at (every occurrence, up to 3 each, along the demo call).
RESET_KINDS = ("ANSWER", "SET VARIABLE", "STREAM FILE", "WAIT FOR DIGIT", "GET DATA", "EXEC Queue",
               "GET VARIABLE", "HANGUP")


@pytest.mark.reliability("agi.reset-mid-command")
async def test_reset_by_peer_mid_command(server, rel, caplog):
    caplog.set_level(logging.WARNING)
    await warm_up(server)
    leaks = Leaks(server)
    with timeline_on() as timeline:
        full = await place(server, "demo_hotline", "known", FAULT_KEYS, timeline)
    assert full.session["outcome"] == "transfer"
    commands = full.result.commands
    points = []
    for kind in RESET_KINDS:
        at = [k for k, c in enumerate(commands) if c.startswith(kind)][:3]
        assert at, f"the demo call sends no {kind}"
        points += at
    # RST right away, and RST after half a reply line
    variants = [PeerFault(k + 1, b"", "reset") for k in points] + \
               [PeerFault(k + 1, b"200 resu", "reset") for k in points]

    async def one(fault: PeerFault):
        k = fault.at - 1
        rec = await place(server, "demo_hotline", "known", FAULT_KEYS, fault=fault)
        where = f"reset at command {fault.at} ({commands[k][:40]!r}, sent {fault.send!r})"
        if len(rec.result.commands) != fault.at or rec.result.commands[-1].split()[:2] != commands[k].split()[:2]:
            return [f"{where}: the call did not go as the whole one up to the reset: {rec.result.commands[-2:]}"]
        return _hangup_problems(where, rec, full, k, seen_at_once=True, peer_closes=True)

    problems: list[str] = []
    for i in range(0, len(variants), BATCH):
        for found in await asyncio.gather(*(one(f) for f in variants[i:i + BATCH])):
            problems += found
    problems += await leaks.problems()
    problems += log_problems(caplog)
    rel.tried(len(variants))
    rel.note(f"{len(variants)} resets at {len(points)} commands of {len(RESET_KINDS)} kinds along the demo call")
    rel.lost(len(problems), "; ".join(problems[:5]))
    assert not problems, "\n".join(problems[:30])


# ---------------------------------------------------------------------------
# agi.silent-peer

SHORT_INPUT_FLOW = """
id: short_input
title: A short entry (GET DATA with a short wait)
languages: [en-US]
prompts:
  ask: {en-US: "Two digits please."}
start: ask
nodes:
  ask: {type: input, prompt: ask, var: code, min_length: 2, max_length: 2, timeout: 1, next: bye}
  bye: {type: hangup}
"""

COMMAND_TIMEOUT = 1.0
EXEC_TIMEOUT = 2.0


@pytest.mark.reliability("agi.silent-peer")
async def test_silent_peer_ends_within_the_command_timeout(server, flows_dir, rel, caplog):
    caplog.set_level(logging.WARNING)
    (flows_dir / "short_input.yaml").write_text(SHORT_INPUT_FLOW, encoding="utf-8")
    server.registry.reload()
    # small timeouts for the test; in production they are config options
    server.agi.command_timeout = COMMAND_TIMEOUT
    server.config.agi_exec_timeout = EXEC_TIMEOUT
    await warm_up(server)
    leaks = Leaks(server)
    with timeline_on() as timeline:
        demo = await place(server, "demo_hotline", "known", FAULT_KEYS, timeline)
        short = await place(server, "short_input", "known", ["12"], timeline)

    def first(rec: Recorded, prefix: str) -> int:
        return next(k for k, c in enumerate(rec.result.commands) if c.startswith(prefix))

    cases = []  # (flow, keys, recorded whole call, command index, longest legitimate wait)
    for prefix, wait in (("ANSWER", 0), ("SET VARIABLE __IVR_SESSION", 0), ("STREAM FILE", 0),
                         ("WAIT FOR DIGIT", 3.0), ("SET VARIABLE __IVR_SUMMARY", 0), ("GET VARIABLE", 0)):
        cases.append(("demo_hotline", FAULT_KEYS, demo, first(demo, prefix), COMMAND_TIMEOUT + wait))
    cases.append(("demo_hotline", FAULT_KEYS, demo, first(demo, "EXEC Queue"), EXEC_TIMEOUT))
    # GET DATA waits for each of 3 keys (2 + the terminator), 1 s each
    cases.append(("short_input", ["12"], short, first(short, "GET DATA"), COMMAND_TIMEOUT + 3 * 1.0))

    async def one(flow_id, keys, full, k, limit):
        started = time.monotonic()
        rec = await place(server, flow_id, "known", keys, fault=PeerFault(k + 1), idle_timeout=limit + 10)
        took = time.monotonic() - started
        command = full.result.commands[k]
        where = f"{flow_id}: silent at command {k + 1} ({command[:40]!r})"
        out = [f"{where}: {p}" for p in trail_problems(rec.session, rec.events)]
        if not rec.result.server_closed:
            out.append(f"{where}: the server never closed the socket")
        if took > limit + 5:
            out.append(f"{where}: the call took {took:.1f} s, limit {limit} s")
        if full.node[k] is None:  # before the session began
            if rec.session is not None:
                out.append(f"{where}: a session began: {rec.session['id']}")
            return out, took
        if rec.session is None:
            return out + [f"{where}: no session"], took
        if rec.session["outcome"] != "error" or rec.session["end_node"] != full.node[k]:
            out.append(f"{where}: ended {rec.session['outcome']} at {rec.session['end_node']}, "
                       f"expected error at {full.node[k]}")
        if "no reply" not in (rec.session["reason"] or ""):
            out.append(f"{where}: reason {rec.session['reason']!r} does not say why")
        errors = [e for e in rec.events if e["kind"] == "error"]
        if not errors or errors[-1]["data"].get("where") != "face":
            out.append(f"{where}: no error event from the face on the trail")
        return out, took

    results = await asyncio.gather(*(one(*case) for case in cases))
    problems = [p for found, _ in results for p in found]
    problems += await leaks.problems()
    problems += log_problems(caplog)
    if not any("link lost" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING):
        problems.append("no warning says the link was lost")
    rel.tried(len(cases))
    rel.figure("longest overrun past the command's limit", round(max(t - c[4] for (_, t), c in zip(results, cases)), 1),
               " s")
    rel.note(f"silent at {len(cases)} command kinds; command_timeout {COMMAND_TIMEOUT} s, "
             f"agi_exec_timeout {EXEC_TIMEOUT} s in the test")
    rel.lost(len(problems), "; ".join(problems[:5]))
    assert not problems, "\n".join(problems[:30])


# ---------------------------------------------------------------------------
# agi.garbage-peer


def _env(**overrides: str) -> bytes:
    return ("".join(f"{line}\n" for line in build_env(script="demo_hotline", overrides=overrides))).encode()


_GOOD_ENV = _env()
_NO_BLANK = _GOOD_ENV  # build_env's lines end with "\n" each; the block's blank line is missing

#: (name, raw environment, what follows): the environment block is garbage.
ENV_GARBAGE: list[tuple[str, bytes, str]] = [
    ("binary", b"\x00\x01\x02\xff\xfe garbage \x80\n\n", "refused"),
    ("HTTP probe", b"GET /demo_hotline HTTP/1.1\r\nHost: ivr\r\n\r\n", "refused"),
    ("no blank line, then EOF", _NO_BLANK, "refused"),
    ("no blank line, stays open", _NO_BLANK, "refused-timeout"),
    ("oversized line", b"agi_network: yes\nagi_request: " + b"A" * 70_000 + b"\n\n", "refused"),
    ("300 lines", b"agi_arg_1: x\n" * 300 + b"\n", "refused"),
    ("key without agi_", b"agi_network: yes\nnetwork_script: demo_hotline\n\n", "refused"),
    ("only the blank line", b"\n", "noflow"),
    ("no agi_network_script", _env().replace(b"agi_network_script: demo_hotline\n", b"") + b"\n", "noflow"),
    ("non-UTF-8 caller ID", _GOOD_ENV.replace(b"agi_callerid: 13800138000", b"agi_callerid: \xff\xfe\xc0")
     + b"\n", "call"),
    ("non-UTF-8 script", _GOOD_ENV.replace(b"agi_network_script: demo_hotline", b"agi_network_script: demo\xff")
     + b"\n", "noflow"),
    ("CR LF line ends", _GOOD_ENV.replace(b"\n", b"\r\n") + b"\r\n", "call"),
]

#: (name, bytes sent instead of a reply, then): the replies are garbage. "lenient":
#: a command whose result the server does not use may take it as it is;
#: "silent": the server's command timeout or the peer's idle time ends it.
REPLY_GARBAGE: list[tuple[str, bytes, str]] = [
    ("text", b"garbage\n", "go on"),
    ("binary", b"\x00\xff\xfe\x80\x01\n", "go on"),
    ("empty line", b"\n", "go on"),
    ("no result=", b"200\n", "go on"),
    ("result not a number", b"200 result=abc\n", "go on lenient"),
    ("unterminated (", b"200 result=1 (data\n", "go on"),
    ("bad endpos", b"200 result=0 endpos=x\n", "go on"),
    ("unknown code 299", b"299 result=0\n", "go on"),
    ("unknown code 404", b"404 Not Found\n", "go on"),
    ("unknown code 600", b"600 result=0\n", "go on"),
    ("continuation line", b"200-result=0\n", "go on"),
    ("overlong line", b"200 result=" + b"1" * 70_000 + b"\n", "go on"),
    ("only a notice, then silence", b"100 Trying...\n", "go on silent"),
    ("partial line, then EOF", b"200 resu", "close"),
    ("usage block cut, then EOF", b"520-Invalid command syntax.  Proper usage follows:\n", "close"),
    ("binary, then EOF", b"\xff\xfe\x00", "close"),
    ("garbage, then reset", b"\x13\x37 junk\n", "reset after garbage"),
]

GARBAGE_COMMAND_TIMEOUT = 1.5


def _generated(strategy, n: int) -> list:
    """``n`` values of a hypothesis strategy, the same every run."""
    from hypothesis import HealthCheck, Phase, given, settings

    out: list = []

    @settings(max_examples=n, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def collect(value) -> None:
        out.append(value)

    collect()
    return out


@pytest.mark.reliability("agi.garbage-peer")
async def test_garbage_from_the_peer_is_a_typed_error(server, rel, caplog):
    from hypothesis import strategies as st

    caplog.set_level(logging.WARNING)
    server.agi.env_timeout = 1.0
    server.agi.command_timeout = GARBAGE_COMMAND_TIMEOUT
    await warm_up(server)
    leaks = Leaks(server)
    with timeline_on() as timeline:
        full = await place(server, "demo_hotline", "known", FAULT_KEYS, timeline)
    commands = full.result.commands
    # garbage instead of the reply to: the first prompt, WAIT FOR DIGIT, GET DATA,
    # SET VARIABLE (transfer), EXEC Queue, GET VARIABLE, ANSWER
    at = [next(k for k, c in enumerate(commands) if c.startswith(p))
          for p in ("STREAM FILE", "WAIT FOR DIGIT", "GET DATA", "SET VARIABLE __IVR_SUMMARY", "EXEC Queue",
                    "GET VARIABLE", "ANSWER")]
    cases: list[tuple[str, dict[str, Any], str, int | None]] = []
    for name, raw, follows in ENV_GARBAGE:
        idle = {"refused-timeout": 4.0, "refused": 0.5}.get(follows, 5.0)
        cases.append((f"environment: {name}", {"raw_env": raw, "idle_timeout": idle}, follows, None))
    expect = {"go on": "error", "go on lenient": "error or call", "go on silent": "error or hangup",
              "close": "hangup", "reset after garbage": "error"}
    for name, data, then in REPLY_GARBAGE:
        for k in at:
            fault = PeerFault(k + 1, data, "reset" if then.startswith("reset") else then.split()[0])
            cases.append((f"reply to {commands[k][:30]!r}: {name}", {"fault": fault, "idle_timeout": 3.0},
                          expect[then], k))
    # generated: any bytes as the environment, or instead of one reply
    lines = st.binary(min_size=0, max_size=300).map(lambda b: b + b"\n")
    listed = len(cases)
    for raw in _generated(st.binary(min_size=0, max_size=400), 40):
        cases.append((f"generated environment {raw[:20]!r}", {"raw_env": raw, "idle_timeout": 0.5}, "any", None))
    for k, data, then in _generated(st.tuples(st.sampled_from(at), lines, st.sampled_from(["go on", "close", "reset"])),
                                    100):
        cases.append((f"generated reply to {commands[k][:30]!r}: {data[:20]!r} then {then}",
                      {"fault": PeerFault(k + 1, data, then)}, "any", k))

    async def one(name: str, kw: dict[str, Any], follows: str, k: int | None) -> list[str]:
        rec = await place(server, "demo_hotline", "known", FAULT_KEYS, **kw)
        where = name
        out = [f"{where}: {p}" for p in trail_problems(rec.session, rec.events)]
        fault = kw.get("fault")
        # the server closes, unless the peer did first (closed, reset, gave up
        # waiting): then Leaks checks that the server's end is closed too
        if not (rec.result.server_closed or rec.result.idle_timed_out or (fault and fault.then in ("close", "reset"))):
            out.append(f"{where}: the server did not close the socket")
        outcome = rec.session["outcome"] if rec.session else None
        if follows.startswith("refused"):
            if rec.result.commands or rec.session:
                out.append(f"{where}: garbage environment, yet the server sent {rec.result.commands[:2]}")
        elif follows == "noflow":
            if rec.session or ("IVR_RESULT", "noflow") not in rec.result.variables_set:
                out.append(f"{where}: expected IVR_RESULT=noflow and no session, got {rec.result.variables_set}")
        elif follows == "call":
            if outcome not in ("hangup", "transfer") or len(rec.result.commands) < 5:
                out.append(f"{where}: a valid (if odd) environment, yet the call ended {outcome}")
        elif follows == "error or call" and outcome not in ("error", "transfer", "hangup", None):
            out.append(f"{where}: ended {outcome}")
        elif follows in ("error", "hangup", "error or hangup") and k is not None:
            node = full.node[k]
            if node is None:  # before the session began
                if rec.session is not None:
                    out.append(f"{where}: a session began")
            elif outcome not in follows.split(" or ") or rec.session["end_node"] != node:
                out.append(f"{where}: ended {outcome} at {rec.session and rec.session['end_node']}, "
                           f"expected {follows} at {node}")
            elif outcome == "error" and "AGI" not in (rec.session["reason"] or ""):
                out.append(f"{where}: the reason does not say the AGI link broke: {rec.session['reason']!r}")
        return out

    problems: list[str] = []
    for i in range(0, len(cases), BATCH):
        for found in await asyncio.gather(*(one(*case) for case in cases[i:i + BATCH])):
            problems += found
        # the server keeps serving normal calls between the batches
        normal = await place(server, "demo_hotline", "known", DEMO_KEYS)
        if normal.session is None or normal.session["outcome"] != "transfer":
            problems.append(f"a normal call after batch {i // BATCH + 1} ended "
                            f"{normal.session and normal.session['outcome']}")
    problems += await leaks.problems()
    problems += log_problems(caplog)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING
              and r.name in ("ivr.agi", "ivr.session", "ivr.server")]
    if len(warned) < len(ENV_GARBAGE) // 2:
        problems.append(f"only {len(warned)} warnings for {len(cases)} garbage inputs")
    rel.tried(len(cases))
    rel.note(f"{len(ENV_GARBAGE)} environments and {len(REPLY_GARBAGE)} replies × {len(at)} commands listed, "
             f"plus {len(cases) - listed} generated by hypothesis; a normal call after every {BATCH}")
    rel.lost(len(problems), "; ".join(problems[:5]))
    assert not problems, "\n".join(problems[:40])


# ---------------------------------------------------------------------------
# agi.sigterm-under-load

LOAD_CALLS = 40
#: Outages five times, then goodbye: self-service only, so the real clock
#: (office hours) of the `ivr serve` process does not matter.
LOAD_KEYS = ["1", *["3", "9"] * 4, "3", "1"]


def _sigterm_under_load(tmp_path: Path, grace: float, prompt_delay: float) -> dict[str, Any]:
    """A real ``ivr serve``; LOAD_CALLS paced calls; SIGTERM while they run;
    one more call after the signal. Returns what each side saw."""
    agi, http = free_port(), free_port()
    db = tmp_path / "t.db"
    # this checkout's code, not whatever `ivr` the virtualenv has installed
    env = {"PATH": "/usr/bin:/bin", "IVR_SHUTDOWN_GRACE": str(grace), "IVR_LOG_LEVEL": "INFO",
           "PYTHONPATH": str(ROOT), "IVR_PROMPT_CACHE_DIR": str(tmp_path / "cache")}
    log_path = tmp_path / "serve.log"  # a file, not a pipe: 40 calls' trail lines would fill a pipe
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ivr.cli", "serve", "--agi-port", str(agi), "--http-port", str(http),
             "--database-url", f"sqlite:///{db}", "--flows", str(ROOT / "flows")],
            stderr=log_file, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", agi), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)

        async def scenario():
            def fake(keys):
                return FakeAsterisk("127.0.0.1", agi, inputs=SimLikeCaller(keys), script="demo_hotline",
                                    prompt_delay=prompt_delay, idle_timeout=grace + 30)

            tasks = [asyncio.create_task(fake(LOAD_KEYS).run()) for _ in range(LOAD_CALLS)]
            await asyncio.sleep(1.5)
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.5)
            try:  # a call after SIGTERM
                late: Any = await fake(["1"]).run()
            except OSError as exc:
                late = exc
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, late, signalled

        results, late, signalled = asyncio.run(scenario())
        code = proc.wait(timeout=grace + 40)
        log = log_path.read_text(encoding="utf-8", errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    con = sqlite3.connect(db)
    sessions = {row[0]: row[1:] for row in con.execute("SELECT id, ended_at, outcome, reason FROM sessions")}
    last = dict(con.execute("SELECT session_id, kind FROM events e WHERE seq = "
                            "(SELECT MAX(seq) FROM events WHERE session_id = e.session_id)"))
    con.close()
    return {"results": results, "late": late, "code": code, "log": log, "sessions": sessions, "last": last}


def _check_shutdown(run: dict[str, Any], *, all_finish: bool) -> tuple[list[str], int]:
    problems: list[str] = []
    if run["code"] != 0:
        problems.append(f"exit code {run['code']}")
    if "Traceback" in run["log"]:
        problems.append("a traceback on stderr: " + run["log"][run["log"].index("Traceback"):][:300])
    if "stopping: " not in run["log"]:
        problems.append("the server did not log its stop")
    late = run["late"]
    if not (isinstance(late, OSError) or (not late.commands and not late.variables_set)):
        problems.append(f"a call after SIGTERM was served: {late.commands[:3] if not isinstance(late, OSError) else late}")
    handed_back = 0
    for i, res in enumerate(run["results"]):
        if isinstance(res, BaseException):
            problems.append(f"call {i}: the fake failed: {res!r}")
            continue
        sid = res.variables.get("IVR_SESSION")
        finished = res.commands[-1:] == ["HANGUP"] and ("IVR_RESULT", "completed") in res.variables_set
        handed = ("IVR_RESULT", "error") in res.variables_set and "HANGUP" not in res.commands
        handed_back += handed
        if not res.server_closed:
            problems.append(f"call {i}: the server never closed the socket")
        if not (finished or handed) or (all_finish and not finished):
            problems.append(f"call {i}: neither finished nor handed back: {res.commands[-3:]} {res.variables_set[-2:]}")
        if sid is None:
            continue
        row = run["sessions"].get(sid)
        if row is None:
            problems.append(f"call {i}: session {sid} is not in the database")
            continue
        ended_at, outcome, reason = row
        if ended_at is None or run["last"].get(sid) != "session_end":
            problems.append(f"call {i}: session {sid} half-written (ended_at {ended_at}, "
                            f"last event {run['last'].get(sid)})")
        if handed and (outcome != "error" or "server stopped" not in (reason or "")):
            problems.append(f"call {i}: handed back, yet the session ended {outcome} ({reason})")
    for sid, (ended_at, _, _) in run["sessions"].items():
        if ended_at is None or run["last"].get(sid) != "session_end":
            problems.append(f"session {sid} half-written")
    return problems, handed_back


@pytest.mark.reliability("agi.sigterm-under-load")
def test_sigterm_under_load_calls_finish_within_grace(tmp_path, rel):
    run = _sigterm_under_load(tmp_path, grace=30, prompt_delay=0.4)
    problems, handed = _check_shutdown(run, all_finish=True)
    if "stopping: 0 calls" in run["log"]:
        problems.append("SIGTERM came after the calls had ended: no load")
    rel.tried(LOAD_CALLS + 1)
    rel.note(f"grace 30 s: {LOAD_CALLS} calls in progress at SIGTERM all finish; a call after it is refused")
    rel.lost(len(problems), "; ".join(problems[:5]))
    assert not problems, "\n".join(problems[:30])


@pytest.mark.reliability("agi.sigterm-under-load")
def test_sigterm_under_load_short_grace_hands_calls_back(tmp_path, rel):
    run = _sigterm_under_load(tmp_path, grace=1, prompt_delay=0.4)
    problems, handed = _check_shutdown(run, all_finish=False)
    if not handed:
        problems.append("no call was still running at the end of the grace: nothing handed back")
    rel.tried(LOAD_CALLS + 1)
    rel.figure("calls handed back to the dialplan (grace 1 s)", handed, f" of {LOAD_CALLS}")
    rel.note("grace 1 s: calls still running get IVR_RESULT=error (the dialplan's fallback), "
             "no HANGUP; every trail complete")
    rel.lost(len(problems), "; ".join(problems[:5]))
    assert not problems, "\n".join(problems[:30])
