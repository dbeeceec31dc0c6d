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
    "Caller hangs up at every AGI command of every path through every shipped flow, in and out of office "
    "hours, with the back end up, down, and down once the caller is verified",
    "session ends `hangup` at the right node, trail complete, no traceback, no task or socket left")
row("agi.reset-mid-command", "Faults: FastAGI",
    "Connection reset by the peer in the middle of a command",
    "session ends `hangup`, trail complete, no traceback, no task or socket left")
row("agi.silent-peer", "Faults: FastAGI",
    "Peer stops answering (command timeout)",
    "call ends `error` with the reason within the command's limit (`command_timeout` plus its own wait for "
    "keys; `agi_exec_timeout` for Queue/Dial), trail complete, socket closed")
row("agi.garbage-peer", "Faults: FastAGI",
    "Peer sends garbage (environment or replies)",
    "typed protocol error, session ends cleanly, server keeps serving")
row("agi.sigterm-under-load", "Faults: FastAGI",
    "`ivr serve` receives SIGTERM under load",
    "calls in progress finish, or past `shutdown_grace` go to the dialplan's fallback (`IVR_RESULT=error`); "
    "calls after SIGTERM refused; every trail complete; exit 0")

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
    "Vosk model missing or corrupt (truncated or garbage files, one of which crashes Kaldi)",
    "the server starts; menus fall back to keys; one warning; the trail says why")
row("speech.pool-exhausted", "Faults: speech",
    "Recogniser pool exhausted (one recogniser, four callers)",
    "the caller who finds no recogniser gets keys with the keypad prompt; others unaffected")
row("speech.audiosocket-never-connects", "Faults: speech",
    "AudioSocket never connects (unreachable, too late, wrong address)",
    "menu falls back to keys within its timeout; nothing left in the AudioSocket server")
row("speech.audiosocket-drops", "Faults: speech",
    "AudioSocket disconnects mid-utterance",
    "menu falls back to keys; the call goes on; no stream, task or socket left")

# --- Faults: back-end look-ups ---------------------------------------------
row("lookup.timeout", "Faults: look-ups",
    "Back-end look-up times out", "flow takes its failure branch within the timeout")
row("lookup.http-500", "Faults: look-ups",
    "Back-end returns 500", "flow takes its failure branch")
row("lookup.malformed-json", "Faults: look-ups",
    "Back-end returns malformed JSON", "flow takes its failure branch")
row("lookup.huge-body", "Faults: look-ups",
    "Back-end returns a 50 MB body (streamed, or with a declared length)",
    "flow takes its failure branch; memory bounded")
row("lookup.connection-reset", "Faults: look-ups",
    "Back-end resets the connection", "flow takes its failure branch")

# --- Faults: SMS -----------------------------------------------------------
row("sms.gateway-down", "Faults: SMS",
    "SMS gateway down (HTTP and SMPP: connection refused)",
    "caller is told, the trail says why, the call goes on")
row("sms.gateway-slow", "Faults: SMS",
    "SMS gateway slow (HTTP relay answers late, SMPP centre never answers)",
    "nothing blocks: the call goes on within the send timeout; other calls unaffected")

# --- Hostile input: parsers ------------------------------------------------
row("fuzz.agi-reply", "Hostile input: parsers",
    "Generated AGI replies and environments (hypothesis): mutated capture lines, random and invalid UTF-8 "
    "bytes, overlong lines, arbitrary TCP splits, over a real StreamReader",
    "no crash; every bad input an `AgiError`; valid replies and environments round-trip; no read waits "
    "once the stream is closed")
row("fuzz.ami-message", "Hostile input: parsers",
    "Generated AMI messages (hypothesis): mutated captures, random bytes, repeated `ActionID`, "
    "arbitrary TCP splits, messages that never end",
    "no crash; every bad block an `AmiProtocolError`, skipped without dropping the link; same result "
    "whatever the split points; valid messages round-trip")
row("fuzz.audiosocket-frame", "Hostile input: parsers",
    "Generated AudioSocket frames (hypothesis): mutated captured frames, random bytes, oversized "
    "lengths, arbitrary TCP splits",
    "no crash; every bad input an `AudioSocketError`; an oversized length fails at once without "
    "waiting for its payload; valid frames round-trip")

# --- Hostile input: AGI injection -----------------------------------------
row("inject.agi", "Hostile input: AGI injection",
    "Newlines, quotes, backslashes, NUL, non-UTF-8 bytes and very long strings in caller ID name and "
    "number, flow arguments, dialled digits (junk `GET DATA` replies), recognised speech (free `ask` "
    "answers and menu values/utterances; the recogniser's output replaced at its boundary) and look-up "
    "results; hostile summaries, reasons and numbers in callbacks over AMI",
    "no extra AGI command or AMI header on the wire (asserted on the bytes sent); the call still transfers")

# --- Hostile input: flow files ---------------------------------------------
row("flows.hostile-files", "Hostile input: flow files",
    "YAML alias bombs, a 50 MB file, 100,000 levels of nesting, binary junk, UTF-16/Latin-1/GBK, NUL "
    "bytes, `!!python` tags, duplicate keys, a truncated file, a FIFO",
    "`ivr validate` names the file and line and exits 1 in bounded time and memory; the running server "
    "keeps its old flows and logs the refusal without a traceback")

# --- Hostile input: web ----------------------------------------------------
row("web.link-tokens", "Hostile input: web",
    "Tampered, truncated, extended, expired, replayed (another device) and guessed visual-IVR link tokens",
    "4xx; one identical 404 page for every made-up token; no session opened, nothing of the call shown; "
    "guessing from one address rate limited (429)")
row("web.csrf", "Hostile input: web",
    "Every state-changing route of the router posted without, with a wrong or with another session's CSRF token",
    "refused with 403; nothing changed in the database")
row("web.script-injection", "Hostile input: web",
    "Script injection through every variable a page or the desk shows (caller ID, flow variables, look-ups, "
    "summary, prompts, labels, agent and queue names, notes)",
    "escaped: in Chromium no dialog, no injected element; CSP on every page, the pages' own scripts still run")
row("web.bad-posts", "Hostile input: web",
    "Oversized, malformed, wrongly typed and wrongly encoded bodies to every POST route; bad WebSocket frames",
    "4xx (400/403/413/415), never a 500 or a traceback; the server keeps serving")
row("web.agent-isolation", "Hostile input: web",
    "An agent reads another agent's pops, sessions, push status or callbacks by id, or takes their interface",
    "refused; pops reach only the agent offered the call and supervisors")
row("web.brute-force", "Hostile input: web",
    "Brute-force sign-in: wrong passwords for one account, many accounts from one address",
    "account locked (even the right password) until the lock expires; address rate limited; every refusal logged")

# --- Hostile input: masked values ------------------------------------------
row("mask.sinks", "Hostile input: masked values",
    "Masked input (`mask: true`) keyed on the phone or typed on the page, searched in every sink after the call",
    "absent from logs, database rows, pages, desk pops, SMS, metrics, /ops and the AGI bytes")

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
