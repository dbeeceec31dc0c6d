"""A few thousand demo-hotline trails with known numbers, for the analytics tests.

Sessions are written straight into the ``sessions`` and ``events`` tables (the
store's own schema, on SQLite or PostgreSQL) so that every timestamp is known:
each archetype below is one way through ``flows/demo_hotline.yaml`` (plus the
node kinds of the features built beside it: speech, SMS links and the web
face, callbacks, agent connect, surveys), repeated a known number of times.

:func:`expected` walks the same generated sessions in plain Python (no SQL) to
give the per-node figures; the headline figures are written out by hand in the
test from the archetype counts.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert

from ivr.store.models import events_table, sessions_table

FLOW = "demo_hotline"
SINCE = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
UNTIL = dt.datetime(2026, 10, 8, tzinfo=dt.UTC)
SPACING = dt.timedelta(minutes=3)

REASON_AGENT = "客户在“主菜单”要求人工服务"
REASON_TRIES = "在“主菜单”多次输入无效"
REASON_LOOKUP = "“balance”查询失败"
REASON_FAULT = "流程转人工（to_agent）"

# archetype -> how many sessions (in the range, ended)
COUNTS = {
    "balance": 900,        # A: verified, balance, goodbye: completed
    "agent_key": 500,      # B: key 0 at the main menu: transfer
    "hangup_id": 200,      # C: hung up while asked for the ID number
    "noinput": 150,        # D: three silences at the main menu, failure exit: transfer
    "outages": 400,        # E: a wrong key, then outages, silence at the end: completed
    "backend": 120,        # F: balance look-up fails: transfer
    "speech": 180,         # G: speech menus, fault "something else", agent, survey: completed
    "callback": 150,       # H: key 0 after hours, callback requested: callback
    "visual": 200,         # I: SMS link; 120 finish on screen, 40 give up there, 40 never open it
    "hangup_main": 250,    # J: hung up at the main menu
}
CALLBACKS_DONE = 100       # of H, callback_result answered
CALLBACKS_NOANSWER = 30    # of H, callback_result noanswer (20 have no result yet)
VISUAL_FINISHED = 120
VISUAL_ABANDONED = 40      # opened, then the web session timed out: outcome "abandoned"
LIVE = 20
FCR_DAYS = 7
# repeat contacts
B_REPEAT_IN = 200          # first 200 B callers come back on the web 2 days later
B_REPEAT_LATE = 50         # the next 50 come back after 10 days (outside the window)
C_REPEAT = 100             # first 100 C callers call again 3 hours later (they are A sessions)
J_ANON = 50                # J sessions 0..49 are anonymous, 50..69 have no number
J_REPEAT_AFTER = 30        # J sessions 100..129 call again just after the range ends


@dataclass
class Visit:
    node: str
    type: str
    dwell: float = 0.0  # seconds until the next node (or the end)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # after node_enter
    channel: str = "voice"


@dataclass
class Gen:
    id: str
    archetype: str
    caller: str | None
    started: dt.datetime
    visits: list[Visit]
    outcome: str | None  # None: live
    reason: str | None
    end_channel: str = "voice"
    after: list[tuple[str, str | None, dict[str, Any], str]] = field(default_factory=list)  # kind, node, data, channel
    flow: str = FLOW


# ----------------------------------------------------------------- path pieces

def dtmf(value: str) -> tuple[str, dict[str, Any]]:
    return "input", {"mode": "dtmf", "value": value, "confidence": 1.0, "utterance": None}


def silence() -> tuple[str, dict[str, Any]]:
    return "input", {"mode": "noinput", "value": None, "confidence": 1.0, "utterance": None}


def choice(key: str, label: str) -> tuple[str, dict[str, Any]]:
    return "choice", {"key": key, "label": label, "mode": "dtmf"}


def prompt(pid: str) -> tuple[str, dict[str, Any]]:
    return "prompt", {"id": pid, "text": "…", "lang": "zh-CN"}


def start() -> list[Visit]:
    return [
        Visit("welcome", "say", 0, [prompt("welcome")]),
        Visit("language", "language", 2.0, [prompt("choose_language"), dtmf("1"), ("language", {"language": "zh-CN"})]),
        Visit("identify", "lookup", 0.2, [("lookup", {"name": "identify", "ok": False, "status": 404, "latency_ms": 12})]),
    ]


def main_key(key: str, label: str, dwell: float = 4.0) -> Visit:
    return Visit("main", "menu", dwell, [prompt("main_menu"), dtmf(key), choice(key, label)])


def verify_path() -> list[Visit]:
    return [
        Visit("billing", "branch", 0, [("branch", {"when": "else", "next": "ask_account"})]),
        Visit("ask_account", "input", 6.0, [prompt("ask_account"), dtmf("20240001"),
                                            ("input_ok", {"var": "account", "value": "20240001"})]),
        Visit("ask_id", "input", 10.0, [prompt("ask_id"), dtmf("****"), ("input_ok", {"var": "id_number"})]),
        Visit("verify", "lookup", 0.3, [("lookup", {"name": "verify", "ok": True, "status": 200, "latency_ms": 30})]),
        Visit("verify_check", "branch", 0, [("branch", {"when": "verified", "next": "verified_ok"})]),
        Visit("verified_ok", "set", 0, [("summary", {"text": "已验证账户 ****0001"})]),
        Visit("billing_menu", "menu", 3.0, [prompt("billing_menu"), dtmf("1"), choice("1", "查询余额")]),
    ]


def to_agent(reason: str, queue: str = "support") -> list[Visit]:
    return [
        Visit("agent", "hours", 0, [("hours", {"open": True})]),
        Visit("to_agent", "transfer", 30.0, [prompt("to_agent"),
                                             ("transfer", {"queue": queue, "reason": reason, "priority": 0})]),
    ]


def goodbye() -> Visit:
    return Visit("goodbye", "hangup", 1.0, [prompt("goodbye")])


# ----------------------------------------------------------------- archetypes

def build(i: int, kind: str) -> tuple[list[Visit], str, str | None, str, list]:
    """(visits, outcome, reason, end channel, events after the end) of session ``i`` of ``kind``."""
    after: list = []
    if kind == "balance":
        visits = [*start(), main_key("1", "余额和账单"), *verify_path(),
                  Visit("balance", "lookup", 0.2, [("lookup", {"name": "balance", "ok": True, "status": 200})]),
                  Visit("say_balance", "say", 0, [prompt("balance")]),
                  Visit("anything_else", "menu", 5.0, [prompt("anything_else"), dtmf("1"), choice("1", "结束通话")]),
                  goodbye()]
        return visits, "completed", None, "voice", after
    if kind == "agent_key":
        visits = [*start(), Visit("main", "menu", 3.0, [prompt("main_menu"), dtmf("0"),
                                                         ("global_key", {"key": "0", "meaning": "agent", "target": "agent"})]),
                  *to_agent(REASON_AGENT)]
        visits[-1].events.append(("transfer_result", {"status": "ended", "queue": "support"}))
        return visits, "transfer", REASON_AGENT, "voice", after
    if kind == "hangup_id":
        visits = [*start(), main_key("1", "余额和账单"), *verify_path()[:3]]
        visits[-1] = Visit("ask_id", "input", 12.0, [prompt("ask_id"), ("hangup", {"reason": "caller"})])
        return visits, "hangup", "caller", "voice", after
    if kind == "noinput":
        main = Visit("main", "menu", 15.0, [prompt("main_menu")])
        for attempt in (1, 2, 3):
            main.events += [silence(), ("noinput", {"attempt": attempt})]
        main.events.append(("failure", {"tries": 3}))
        visits = [*start(), main, *to_agent(REASON_TRIES)]
        visits[-1].events.append(("transfer_result", {"status": "ended", "queue": "support"}))
        return visits, "transfer", REASON_TRIES, "voice", after
    if kind == "outages":
        main = Visit("main", "menu", 7.0, [prompt("main_menu"), dtmf("7"),
                                           ("nomatch", {"attempt": 1, "reason": "not a choice", "value": "7"}),
                                           dtmf("3"), choice("3", "停电停网信息")])
        visits = [*start(), main,
                  Visit("outages", "lookup", 0.1, [("lookup", {"name": "outages", "ok": True, "status": 200})]),
                  Visit("say_outages", "say", 0, [prompt("outages")]),
                  Visit("anything_else", "menu", 5.0, [prompt("anything_else"), silence(),
                                                       ("noinput", {"attempt": 1})]),
                  goodbye()]
        return visits, "completed", None, "voice", after
    if kind == "backend":
        visits = [*start(), main_key("1", "余额和账单"), *verify_path(),
                  Visit("balance", "lookup", 3.0, [("lookup", {"name": "balance", "ok": False, "status": 503})]),
                  Visit("backend_down", "say", 0, [prompt("backend_down")]),
                  *to_agent(REASON_LOOKUP)]
        visits[-1].events.append(("transfer_result", {"status": "failed", "queue": "support"}))
        return visits, "transfer", REASON_LOOKUP, "voice", after
    if kind == "speech":
        c_main = (0.15, 0.35, 0.55, 0.75, 0.95)[i % 5]
        c_fault = (0.9, 0.7)[i % 2]
        main = Visit("main", "menu", 4.0, [
            prompt("main_menu"),
            ("speech", {"choice": "2", "utterance": "报修", "confidence": c_main, "grammar": ["报修"]}),
            ("input", {"mode": "speech", "value": "2", "confidence": c_main, "utterance": "报修"}),
            choice("2", "故障报修")])
        fault = Visit("fault", "menu", 3.0, [
            prompt("fault_menu"),
            ("input", {"mode": "speech", "value": "3", "confidence": c_fault, "utterance": "其他"}),
            choice("3", "其他问题")])
        queue = "support" if i % 2 == 0 else "support-en"
        visits = [*start(), main, fault, *to_agent(REASON_FAULT)]
        visits[-1].events += [("agent_connect", {"agent": "alice", "interface": "PJSIP/1001", "queue": queue}),
                              ("transfer_result", {"status": "continue", "queue": "support", "talk_seconds": 60})]
        visits.append(Visit("survey", "survey", 8.0, [prompt("survey"), dtmf(str(1 + i % 5)),
                                                      ("survey", {"score": 1 + i % 5, "mode": "dtmf"})]))
        visits.append(goodbye())
        return visits, "completed", REASON_FAULT, "voice", after
    if kind == "callback":
        visits = [*start(), Visit("main", "menu", 3.0, [prompt("main_menu"), dtmf("0"),
                                                         ("global_key", {"key": "0", "meaning": "agent", "target": "agent"})]),
                  Visit("agent", "hours", 0, [("hours", {"open": False})]),
                  Visit("closed", "say", 0, [prompt("closed")]),
                  Visit("offer_callback", "callback", 6.0, [prompt("callback"),
                                                            ("callback_requested", {"request": f"cb{i}", "slot": "asap"})])]
        if i < CALLBACKS_DONE:
            after.append(("callback_result", None, {"request": f"cb{i}", "outcome": "answered"}, "callback"))
        elif i < CALLBACKS_DONE + CALLBACKS_NOANSWER:
            after.append(("callback_result", None, {"request": f"cb{i}", "outcome": "noanswer"}, "callback"))
        return visits, "callback", REASON_AGENT, "voice", after
    if kind == "visual":
        offer = Visit("offer_web", "offer_visual", 5.0, [prompt("offer_web"),
                                                         ("sms", {"to": "138****8000", "status": "sent", "gateway": "fake"})])
        visits = [*start(), main_key("1", "余额和账单"), offer]
        if i < VISUAL_FINISHED + VISUAL_ABANDONED:
            offer.events.append(("web_open", {"ua": "phone"}))
            web = [Visit("billing_menu", "menu", 9.0, [prompt("billing_menu"),
                                                      ("input", {"mode": "tap", "value": "1", "confidence": 1.0,
                                                                 "utterance": None}),
                                                      choice("1", "查询余额")], channel="web"),
                   Visit("balance", "lookup", 0.2, [("lookup", {"name": "balance", "ok": True, "status": 200})],
                         channel="web"),
                   Visit("say_balance", "say", 20.0, [prompt("balance")], channel="web")]
            if i < VISUAL_FINISHED:
                return [*visits, *web], "completed", None, "web", after
            return [*visits, *web[:1]], "abandoned", None, "web", after
        visits.append(goodbye())
        return visits, "completed", None, "voice", after
    if kind == "hangup_main":
        visits = [*start(), Visit("main", "menu", 6.0, [prompt("main_menu"), ("hangup", {"reason": "caller"})])]
        return visits, "hangup", "caller", "voice", after
    raise ValueError(kind)


def generate() -> list[Gen]:
    """The sessions (in the range, outside it, of another flow, live)."""
    out: list[Gen] = []
    slot = 0

    def at() -> dt.datetime:
        nonlocal slot
        moment = SINCE + slot * SPACING + dt.timedelta(seconds=7)
        slot += 1
        return moment

    c_times: list[dt.datetime] = []
    order = ["hangup_id", "balance", *[k for k in COUNTS if k not in ("hangup_id", "balance")]]
    for kind in order:
        for i in range(COUNTS[kind]):
            visits, outcome, reason, end_channel, after = build(i, kind)
            caller: str | None = f"1390{len(out):07d}"
            started = at()
            if kind == "hangup_id":
                c_times.append(started)
            if kind == "balance" and i < C_REPEAT:
                caller = f"1390{i:07d}"  # the C session i's caller, calling again 3 hours later
                started = c_times[i] + dt.timedelta(hours=3)
            if kind == "hangup_main" and i < J_ANON:
                caller = "anonymous"
            elif kind == "hangup_main" and i < J_ANON + 20:
                caller = None
            out.append(Gen(f"s{len(out):05d}-{kind}", kind, caller, started, visits, outcome, reason,
                           end_channel, after))
    by_kind: dict[str, list[Gen]] = defaultdict(list)
    for g in out:
        by_kind[g.archetype].append(g)
    extra: list[Gen] = []
    # repeat contacts of B callers: on the web, another flow (2 days later; or 10 days later)
    for i, g in enumerate(by_kind["agent_key"][: B_REPEAT_IN + B_REPEAT_LATE]):
        later = dt.timedelta(days=2 if i < B_REPEAT_IN else 10)
        extra.append(Gen(f"x{len(extra):05d}-repeat", "other", g.caller, g.started + later,
                         [Visit("start", "say", 1.0, [prompt("x")], channel="web")], "completed", None, "web",
                         flow="web_portal"))
    # J callers 100..129 call the hotline again right after the range ends
    for g in by_kind["hangup_main"][100:100 + J_REPEAT_AFTER]:
        extra.append(Gen(f"x{len(extra):05d}-after", "after", g.caller, UNTIL + dt.timedelta(hours=1),
                         *_short_call()))
    # the day before the range: not counted anywhere
    for i in range(30):
        extra.append(Gen(f"x{len(extra):05d}-before", "before", f"1391{i:07d}",
                         SINCE - dt.timedelta(days=1) + i * SPACING, *_short_call()))
    # live sessions in the range
    for i in range(LIVE):
        extra.append(Gen(f"x{len(extra):05d}-live", "live", f"1392{i:07d}", SINCE + dt.timedelta(hours=5, minutes=i),
                         start() + [Visit("main", "menu", 0, [prompt("main_menu")])], None, None))
    return out + extra


def _short_call() -> tuple[list[Visit], str, None]:
    return start() + [Visit("main", "menu", 2.0, [prompt("main_menu"), ("hangup", {"reason": "caller"})])], "hangup", "caller"


# ----------------------------------------------------------------- writing

def rows(g: Gen) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    t = g.started
    seq = 0

    def ev(kind: str, node: str | None, data: dict[str, Any], channel: str, at: dt.datetime) -> None:
        nonlocal seq
        seq += 1
        events.append({"session_id": g.id, "seq": seq, "at": at, "channel": channel, "kind": kind, "node": node,
                       "data": data})

    ev("session_start", "welcome", {"flow": g.flow, "version": "v1", "lang": "zh-CN"}, "voice", t)
    for v in g.visits:
        ev("node_enter", v.node, {"type": v.type}, v.channel, t)
        for kind, data in v.events:
            ev(kind, v.node, data, v.channel, t + dt.timedelta(seconds=v.dwell))
        t = t + dt.timedelta(seconds=v.dwell)
    ended = None
    if g.outcome is not None:
        ev("session_end", g.visits[-1].node, {"outcome": g.outcome, "reason": g.reason}, g.end_channel, t)
        ended = t
        for kind, node, data, channel in g.after:
            t = t + dt.timedelta(minutes=10)
            ev(kind, node, data, channel, t)
    session = {
        "id": g.id, "flow_id": g.flow, "flow_version": "v1", "channel": g.visits[0].channel, "caller": g.caller,
        "dialed": "95598", "uniqueid": None, "language": "zh-CN", "started_at": g.started, "ended_at": ended,
        "outcome": g.outcome, "end_node": g.visits[-1].node if g.outcome else None, "summary": None,
        "state": None, "variables": None, "reason": g.reason,
    }
    return session, events


async def write(engine: Any, gens: list[Gen]) -> None:
    sessions, events = [], []
    for g in gens:
        s, e = rows(g)
        sessions.append(s)
        events.extend(e)
    async with engine.begin() as conn:
        await conn.execute(insert(sessions_table), sessions)
        for i in range(0, len(events), 5000):
            await conn.execute(insert(events_table), events[i:i + 5000])


# ----------------------------------------------------------------- the oracle

PASS = {"say", "set", "branch", "hours", "goto", "transfer", "callback", "subflow", "return", "hangup"}


def expected(gens: list[Gen]) -> dict[str, Any]:
    """Per-node figures and edges of the in-range, ended hotline sessions, by plain iteration."""
    nodes: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "entered": 0, "hung_up": 0, "escalated": 0, "inputs": 0, "noinput": 0, "nomatch": 0, "failures": 0,
        "seconds": 0.0, "exits": Counter(), "speech": [0] * 5, "input_speech": [0] * 5, "speech_sum": 0.0,
        "input_speech_sum": 0.0, "sessions": set()})
    edges: Counter = Counter()
    for g in gens:
        if g.flow != FLOW or g.outcome is None or not (SINCE <= g.started < UNTIL):
            continue
        escalation_seen = False
        last_decision = None
        for n, v in enumerate(g.visits):
            fig = nodes[v.node]
            fig["entered"] += 1
            fig["sessions"].add(g.id)
            fig["seconds"] += v.dwell
            nxt = g.visits[n + 1].node if n + 1 < len(g.visits) else None
            if nxt:
                fig["exits"][nxt] += 1
                edges[(v.node, nxt)] += 1
            else:
                fig["exits"][f"(end) {g.outcome}"] += 1
            if v.type not in PASS:
                if not escalation_seen:
                    last_decision = v.node
            for kind, data in v.events:
                if kind in ("transfer", "callback_requested") and not escalation_seen:
                    escalation_seen = True
                    if last_decision:
                        nodes[last_decision]["escalated"] += 1
                if kind == "input":
                    fig["inputs"] += 1
                    if data["mode"] == "speech":
                        fig["input_speech"][min(int(data["confidence"] / 0.2), 4)] += 1
                        fig["input_speech_sum"] += data["confidence"]
                elif kind == "speech":
                    fig["speech"][min(int(data["confidence"] / 0.2), 4)] += 1
                    fig["speech_sum"] += data["confidence"]
                elif kind == "noinput":
                    fig["noinput"] += 1
                elif kind == "nomatch":
                    fig["nomatch"] += 1
                elif kind == "failure":
                    fig["failures"] += 1
                elif kind == "hangup":
                    fig["hung_up"] += 1
    return {"nodes": nodes, "edges": edges}
