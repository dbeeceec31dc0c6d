"""The rows of ``docs/reliability.md``: every fault and hostile input the suite tries.

A test joins a row with ``@pytest.mark.reliability("row-id")`` and reports what it
tried through the ``rel`` fixture (``rel.tried(n)``, ``rel.lost(n, what)``,
``rel.figure(name, value)``). A row is green when every test marked with it
passed and nothing was lost; it is ``open`` when listed in :data:`OPEN` (its tests
are then strict ``xfail``: they fail the run the day the finding is fixed, so the
row cannot stay open by mistake).

Each area keeps its own block so that parallel work does not collide.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    id: str
    area: str
    fault: str
    #: what must survive: the claim the row's tests check
    survives: str


_ROWS: list[Row] = []

#: Findings that stay open, with their reason: row id -> reason. Set it in the
#: row's own block: ``OPEN["row-id"] = "why it cannot be fixed now"``.
OPEN: dict[str, str] = {}


def row(id: str, area: str, fault: str, survives: str) -> None:
    _ROWS.append(Row(id, area, fault, survives))


# --- Faults: FastAGI -------------------------------------------------------
row("agi.hangup-every-command", "Faults: FastAGI",
    "Caller hangs up at every AGI command of every path through every shipped flow",
    "session ends `hangup` at the right node, trail complete, no traceback, no task or socket left")
row("agi.reset-mid-command", "Faults: FastAGI",
    "Connection reset by the peer in the middle of a command",
    "session ends `hangup`, trail complete, no traceback, no task or socket left")
row("agi.silent-peer", "Faults: FastAGI",
    "Peer stops answering (command timeout)",
    "call ends within the command timeout, trail complete, socket closed")
row("agi.garbage-peer", "Faults: FastAGI",
    "Peer sends garbage (environment or replies)",
    "typed protocol error, session ends cleanly, server keeps serving")
row("agi.sigterm-under-load", "Faults: FastAGI",
    "`ivr serve` receives SIGTERM under load",
    "calls in progress finish or go to a safe destination; every trail complete")

# --- Faults: AMI -----------------------------------------------------------
row("ami.drop-during-originate", "Faults: AMI",
    "AMI link drops during a callback's Originate",
    "callback neither lost nor dialled twice")
row("ami.drop-during-queue-call", "Faults: AMI",
    "AMI link drops while a caller waits in or talks through a queue",
    "call and trail unaffected; who answered is still recorded when the link returns or marked unknown")
row("ami.asterisk-restart", "Faults: AMI",
    "Asterisk restarts (AMI refuses, then comes back)",
    "client reconnects with capped back-off; pending callbacks dialled once; desk pops work again")

# --- Faults: database ------------------------------------------------------
row("db.pg-terminate-backend", "Faults: database",
    "PostgreSQL connections killed (`pg_terminate_backend`) while 200 calls run",
    "calls go on; no trail event lost once the database is back")
row("db.sqlite-locked", "Faults: database",
    "SQLite locked by another writer",
    "calls go on; no trail event lost once the lock is released")
row("db.writer-back-pressure", "Faults: database",
    "Database down for longer than the trail buffer holds",
    "memory stays bounded; what cannot be buffered is spilled or refused with a count, never silently dropped")

# --- Faults: speech --------------------------------------------------------
row("speech.model-missing", "Faults: speech",
    "Vosk model missing or corrupt",
    "menus fall back to keys; the trail says why")
row("speech.pool-exhausted", "Faults: speech",
    "Recogniser pool exhausted",
    "the caller who finds no recogniser gets keys; others unaffected")
row("speech.audiosocket-never-connects", "Faults: speech",
    "AudioSocket never connects",
    "menu falls back to keys within its timeout")
row("speech.audiosocket-drops", "Faults: speech",
    "AudioSocket disconnects mid-utterance",
    "menu falls back to keys; the call goes on")

# --- Faults: back-end look-ups ---------------------------------------------
row("lookup.timeout", "Faults: look-ups",
    "Back-end look-up times out", "flow takes its failure branch within the timeout")
row("lookup.http-500", "Faults: look-ups",
    "Back-end returns 500", "flow takes its failure branch")
row("lookup.malformed-json", "Faults: look-ups",
    "Back-end returns malformed JSON", "flow takes its failure branch")
row("lookup.huge-body", "Faults: look-ups",
    "Back-end returns a huge body", "flow takes its failure branch; memory bounded")

# --- Faults: SMS -----------------------------------------------------------
row("sms.gateway-down", "Faults: SMS",
    "SMS gateway down", "caller is told, the trail says why, the call goes on")
row("sms.gateway-slow", "Faults: SMS",
    "SMS gateway slow", "nothing blocks: the call goes on within the send timeout")

# --- Hostile input: parsers ------------------------------------------------
row("fuzz.agi-reply", "Hostile input: parsers",
    "Generated AGI replies and environments (hypothesis)",
    "no crash; every bad input a typed error")
row("fuzz.ami-message", "Hostile input: parsers",
    "Generated AMI messages (hypothesis)", "no crash; every bad input a typed error")
row("fuzz.audiosocket-frame", "Hostile input: parsers",
    "Generated AudioSocket frames (hypothesis)", "no crash; every bad input a typed error")

# --- Hostile input: AGI injection -----------------------------------------
row("inject.agi", "Hostile input: AGI injection",
    "Newlines, quotes, backslashes and non-UTF-8 bytes in caller ID, digits, speech, look-up results, flow variables",
    "no extra AGI command on the wire (asserted on the bytes sent)")

# --- Hostile input: flow files ---------------------------------------------
row("flows.hostile-files", "Hostile input: flow files",
    "YAML alias bombs, huge files, deep nesting, binary junk, wrong encodings",
    "clear error, bounded time and memory, the server keeps its old flows")

# --- Hostile input: web ----------------------------------------------------
row("web.link-tokens", "Hostile input: web",
    "Tampered, expired, replayed and guessed link tokens", "4xx, no session opened, nothing leaked")
row("web.csrf", "Hostile input: web",
    "POST without or with a wrong CSRF token", "refused with 403; nothing changed")
row("web.script-injection", "Hostile input: web",
    "Script injection through every variable a page or the desk shows", "escaped; no script runs")
row("web.bad-posts", "Hostile input: web",
    "Oversized and malformed form posts", "4xx, never a traceback")
row("web.agent-isolation", "Hostile input: web",
    "An agent reads another agent's pops or sessions by id", "refused")
row("web.brute-force", "Hostile input: web",
    "Brute-force sign-in", "rate limited, locked out, logged")

# --- Hostile input: masked values ------------------------------------------
row("mask.sinks", "Hostile input: masked values",
    "Masked input (`mask: true`) searched in every sink after a call",
    "absent from logs, database rows, pages, pops, SMS and metrics")

# --- Load and soak ----------------------------------------------------------
row("soak.short", "Load and soak",
    "Short soak in CI: 40 concurrent paced calls for 45 s through the demo flow, 20 % answering by voice",
    "zero errors, every trail complete, memory growth within 25 %, turnaround p99 under 2 s")
row("soak.200-calls-10-min", "Load and soak",
    "200 concurrent paced calls for 10 minutes through the demo flow, 15 % answering by voice (`./dev.sh soak`)",
    "memory flat within 10 % after the warm-up, p99 steady (no minute above 2 × the median minute + 20 ms, "
    "no upward trend), zero errors, every trail complete")


ROWS: dict[str, Row] = {r.id: r for r in _ROWS}
assert len(ROWS) == len(_ROWS), "duplicate row id"

#: Rows produced by the separate soak command, not by the CI suite.
SOAK_ONLY = frozenset({"soak.200-calls-10-min"})
