"""Contact-centre figures for one flow and time range, computed from the trail.

Everything here reads the ``sessions`` and ``events`` tables (see
:mod:`ivr.store.models`) and runs unchanged on SQLite and PostgreSQL: counts
are ``GROUP BY`` queries, node-to-node movement and time spent use the window
function ``LEAD`` over each session's ``node_enter`` events, JSON fields are
read with SQLAlchemy's JSON operators (``json_extract`` / ``->>``).

Definitions (the dashboard and ``docs/operations.md`` repeat them):

* A session belongs to the range when it *started* in ``[since, until)``.
  Sessions still live are counted apart (``live``) and left out of the rates.
* **Containment**: sessions that ended ``completed`` without any ``transfer``,
  ``callback_requested`` or ``agent_connect`` event (finished in
  self-service; a call that comes back from an agent to a survey and then
  ends ``completed`` is not contained) ÷ ended sessions. **Transfer rate**:
  outcome ``transfer``. **Abandonment**: outcome ``hangup`` (the caller hung
  up in the IVR).
* **Reached a person**: outcome ``transfer`` or ``callback``, an
  ``agent_connect`` event, or a ``transfer_result`` whose status is one of
  :data:`ANSWERED`. Their ``sessions.reason`` gives the top reasons.
* Per node: **entered** (``node_enter`` events), **exits** (where callers went
  next: another node, or the end of the session with its outcome), **hung up
  here** (``hangup`` events at the node of sessions that ended hung up in the
  IVR: a hang-up after talking to a person is no drop-off), **escalated from here** (the last
  node that asked the caller something or looked something up before the
  session's first ``transfer`` or ``callback_requested``), **no-input /
  no-match rates** (÷ the caller inputs at the node), **mean time spent**
  (from entering the node to entering the next one, or to the end), and the
  **speech confidence** distribution (``speech`` events, or ``input`` events of
  mode ``speech`` where a node has none).
* **Callbacks**: ``callback_requested`` events; completed: ``callback_result``
  events whose outcome is one of :data:`CALLBACK_DONE`.
* **Visual IVR**: links sent (``sms`` events with status ``sent``), opened
  (sessions with a ``web_open`` event), finished on screen (sessions whose
  ``session_end`` came from the ``web`` channel with outcome ``completed``).
* **First-contact resolution**: of the sessions in the range with a usable
  caller number, those whose caller did *not* start another session (any flow,
  any channel) within ``fcr_days`` days after; grouped by what the first
  contact was about: its reason when it reached a person, else the first menu
  choice the caller made (``(no choice)`` when none).
* **Satisfaction**: ``survey`` events (``score`` 1-5), by the queue of the
  session's last ``transfer`` or ``agent_connect`` and by flow path (the menu
  choices the caller made, in order).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ivr.store.models import events_table as EV
from ivr.store.models import sessions_table as SE
from ivr.store.store import ANONYMOUS_CALLERS

__all__ = [
    "ANSWERED",
    "CALLBACK_DONE",
    "END",
    "PASS_THROUGH",
    "PERSON_OUTCOMES",
    "CONFIDENCE_BUCKETS",
    "CSV_TABLES",
    "NodeFigures",
    "Report",
    "compute",
    "to_csv",
]

#: ``callback_result`` outcomes that mean the callback reached the customer.
CALLBACK_DONE = frozenset({"answered", "completed", "connected", "done", "success", "ok"})
#: Outcomes after which the caller is with (or promised) a person.
PERSON_OUTCOMES = ("transfer", "callback")
#: ``transfer_result`` statuses that mean a person took the call.
ANSWERED = ("continue", "answered", "ended")
#: Events that mean the session left self-service.
ESCALATION_KINDS = ("transfer", "callback_requested", "agent_connect")
#: Node types a caller only passes through: never the place an escalation "came from".
PASS_THROUGH = ("say", "set", "branch", "hours", "goto", "transfer", "callback", "subflow", "return", "hangup")
#: Upper bounds of the speech confidence buckets.
CONFIDENCE_BUCKETS = (0.2, 0.4, 0.6, 0.8, 1.0)
CONFIDENCE_LABELS = ("0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1")
STANDARD_OUTCOMES = ("completed", "transfer", "hangup", "failed", "error")
END = "(end)"
NO_REASON = "(no reason given)"
TOP_REASONS = 10


@dataclass
class NodeFigures:
    node: str
    type: str | None = None
    label: str | None = None
    entered: int = 0
    sessions: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    hung_up: int = 0
    escalated: int = 0
    inputs: int = 0
    noinput: int = 0
    nomatch: int = 0
    failures: int = 0
    seconds_total: float = 0.0
    confidence: list[int] = field(default_factory=lambda: [0] * len(CONFIDENCE_BUCKETS))
    confidence_sum: float = 0.0

    @property
    def noinput_rate(self) -> float:
        return self.noinput / self.inputs if self.inputs else 0.0

    @property
    def nomatch_rate(self) -> float:
        return self.nomatch / self.inputs if self.inputs else 0.0

    @property
    def drop_rate(self) -> float:
        return self.hung_up / self.entered if self.entered else 0.0

    @property
    def mean_seconds(self) -> float:
        return self.seconds_total / self.entered if self.entered else 0.0

    @property
    def speech_count(self) -> int:
        return sum(self.confidence)

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.speech_count if self.speech_count else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(noinput_rate=self.noinput_rate, nomatch_rate=self.nomatch_rate, drop_rate=self.drop_rate,
                   mean_seconds=self.mean_seconds, mean_confidence=self.mean_confidence)
        return out


@dataclass
class Report:
    flow_id: str
    since: dt.datetime
    until: dt.datetime
    fcr_days: int
    sessions: int = 0  # ended sessions in the range
    live: int = 0
    contained: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    to_person: int = 0
    callbacks_requested: int = 0
    callbacks_completed: int = 0
    links_sent: int = 0
    sms_refused: int = 0
    links_opened: int = 0
    finished_on_screen: int = 0
    nodes: dict[str, NodeFigures] = field(default_factory=dict)
    edges: dict[tuple[str, str], int] = field(default_factory=dict)
    reasons: list[tuple[str, int]] = field(default_factory=list)
    fcr_contacts: int = 0
    fcr_repeated: int = 0
    fcr_by_reason: list[dict[str, Any]] = field(default_factory=list)
    survey_by_queue: list[dict[str, Any]] = field(default_factory=list)
    survey_by_path: list[dict[str, Any]] = field(default_factory=list)

    # ---- headline rates
    def _rate(self, count: int) -> float:
        return count / self.sessions if self.sessions else 0.0

    @property
    def transferred(self) -> int:
        return self.outcomes.get("transfer", 0)

    @property
    def abandoned(self) -> int:
        return self.outcomes.get("hangup", 0)

    @property
    def containment(self) -> float:
        return self._rate(self.contained)

    @property
    def transfer_rate(self) -> float:
        return self._rate(self.transferred)

    @property
    def abandonment(self) -> float:
        return self._rate(self.abandoned)

    @property
    def fcr_rate(self) -> float:
        return 1 - self.fcr_repeated / self.fcr_contacts if self.fcr_contacts else 0.0

    @property
    def worst_node(self) -> str | None:
        """The node losing the largest share of its callers (among nodes seen by at
        least 2 % of the sessions, and at least 5 callers); ties go to the larger count."""
        floor = max(5, 0.02 * self.sessions)
        best: tuple[float, int] | None = None
        worst = None
        for fig in self.nodes.values():
            if fig.entered < floor or not fig.hung_up:
                continue
            key = (fig.drop_rate, fig.hung_up)
            if best is None or key > best:
                best, worst = key, fig.node
        return worst

    def summary(self) -> dict[str, Any]:
        return {
            "flow": self.flow_id,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "sessions": self.sessions,
            "live": self.live,
            "contained": self.contained,
            "containment": self.containment,
            "transferred": self.transferred,
            "transfer_rate": self.transfer_rate,
            "abandoned": self.abandoned,
            "abandonment": self.abandonment,
            "failed": self.outcomes.get("failed", 0),
            "error": self.outcomes.get("error", 0),
            "other": sum(v for k, v in self.outcomes.items() if k not in STANDARD_OUTCOMES),
            "to_person": self.to_person,
            "callbacks_requested": self.callbacks_requested,
            "callbacks_completed": self.callbacks_completed,
            "links_sent": self.links_sent,
            "sms_refused": self.sms_refused,
            "links_opened": self.links_opened,
            "finished_on_screen": self.finished_on_screen,
            "fcr_days": self.fcr_days,
            "fcr_contacts": self.fcr_contacts,
            "fcr_repeated": self.fcr_repeated,
            "fcr_rate": self.fcr_rate,
            "worst_node": self.worst_node,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "outcomes": dict(self.outcomes),
            "nodes": [n.to_dict() for n in self.nodes.values()],
            "edges": [{"from": a, "to": b, "count": c} for (a, b), c in sorted(self.edges.items())],
            "reasons": [{"reason": r, "count": c} for r, c in self.reasons],
            "fcr_by_reason": self.fcr_by_reason,
            "survey_by_queue": self.survey_by_queue,
            "survey_by_path": self.survey_by_path,
        }


# --------------------------------------------------------------------------- SQL helpers


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _seconds_between(dialect: str, start: Any, end: Any) -> Any:
    """SQL for ``end - start`` in seconds, per backend."""
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)


def _jstr(key: str) -> Any:
    return EV.c.data[key].as_string()


def _jfloat(key: str) -> Any:
    return EV.c.data[key].as_float()


def _naive(value: Any) -> dt.datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite gives naive ones or strings)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return _utc(value)


async def compute(engine: AsyncEngine, flow_id: str, since: dt.datetime, until: dt.datetime, *,
                  fcr_days: int = 7, node_types: dict[str, str] | None = None,
                  node_labels: dict[str, str] | None = None) -> Report:
    """Every figure of the module doc for ``flow_id`` between ``since`` and ``until``.

    ``node_types`` / ``node_labels`` (from the loaded flow) fill in nodes no
    caller reached yet, so the report lists every node of the flow.
    """
    since, until = _utc(since), _utc(until)
    if until <= since:
        raise ValueError("the end of the range must be after its start")
    if fcr_days < 1:
        raise ValueError("fcr_days must be at least 1")
    report = Report(flow_id, since, until, fcr_days)
    dialect = engine.dialect.name
    in_range = and_(SE.c.flow_id == flow_id, SE.c.started_at >= since, SE.c.started_at < until)
    ended = and_(in_range, SE.c.ended_at.is_not(None))
    ended_ids = select(SE.c.id).where(ended)

    def node(name: str) -> NodeFigures:
        fig = report.nodes.get(name)
        if fig is None:
            fig = report.nodes[name] = NodeFigures(name, (node_types or {}).get(name), (node_labels or {}).get(name))
        return fig

    for name in node_types or {}:
        node(name)

    async with engine.connect() as conn:
        # ---- outcomes
        rows = await conn.execute(
            select(SE.c.outcome, SE.c.ended_at.is_(None), func.count()).where(in_range)
            .group_by(SE.c.outcome, SE.c.ended_at.is_(None))
        )
        for outcome, live, count in rows:
            if live:
                report.live += count
            else:
                report.outcomes[outcome or "unknown"] = report.outcomes.get(outcome or "unknown", 0) + count
        report.sessions = sum(report.outcomes.values())

        # ---- self-service, who reached a person, and why
        left = select(EV.c.session_id).where(EV.c.kind.in_(ESCALATION_KINDS), EV.c.session_id.in_(ended_ids))
        report.contained = (await conn.execute(
            select(func.count()).where(ended, SE.c.outcome == "completed", SE.c.id.not_in(left))
        )).scalar_one()
        connected = select(EV.c.session_id).where(
            EV.c.session_id.in_(ended_ids),
            EV.c.kind.in_(("agent_connect", "transfer_result")),
            or_(EV.c.kind == "agent_connect", _jstr("status").in_(ANSWERED)))
        person = and_(ended, or_(SE.c.outcome.in_(PERSON_OUTCOMES), SE.c.id.in_(connected)))
        person_reasons = {sid: reason or NO_REASON
                          for sid, reason in await conn.execute(select(SE.c.id, SE.c.reason).where(person))}
        report.to_person = len(person_reasons)
        tally = Counter(person_reasons.values())
        report.reasons = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]

        # ---- one pass over the range's events for every count by kind: per node
        # (entries, inputs, no-input, no-match, failures, hang-ups, node types,
        # speech confidence) and per session (callbacks, SMS, web). JSON values
        # are grouped through a subquery: PostgreSQL does not take two renderings
        # of one JSON path with separate parameters as the same expression.
        per_node = ("node_enter", "input", "noinput", "nomatch", "failure", "hangup", "speech")
        marks = ("callback_requested", "callback_result", "sms", "web_open", "session_end")
        conf = _jfloat("confidence")
        spoken = and_(or_(EV.c.kind == "speech", and_(EV.c.kind == "input", _jstr("mode") == "speech")),
                      conf.is_not(None))
        bucket = case(*[(conf < bound, i) for i, bound in enumerate(CONFIDENCE_BUCKETS[:-1])],
                      else_=len(CONFIDENCE_BUCKETS) - 1)
        flat = (
            select(
                case((EV.c.kind.in_(per_node), EV.c.node)).label("node"),
                EV.c.kind.label("kind"),
                case((EV.c.kind == "session_end", EV.c.channel)).label("channel"),
                case((EV.c.kind == "node_enter", _jstr("type"))).label("type"),
                case((EV.c.kind.in_(marks), func.coalesce(_jstr("status"), _jstr("outcome")))).label("what"),
                case((spoken, bucket)).label("b"),
                case((spoken, conf)).label("conf"),
                EV.c.session_id.label("sid"),
            )
            .where(
                EV.c.session_id.in_(ended_ids),
                EV.c.kind.in_(per_node + marks),
                # a hang-up after talking to a person (e.g. in the survey) is no
                # drop-off: only sessions that ended hung up in the IVR count
                or_(EV.c.kind != "hangup", EV.c.session_id.in_(select(SE.c.id).where(SE.c.outcome == "hangup"))),
            )
            .subquery()
        )
        columns = (flat.c.node, flat.c.kind, flat.c.channel, flat.c.type, flat.c.what, flat.c.b)
        rows = await conn.execute(
            select(*columns, func.count(), func.count(func.distinct(flat.c.sid)), func.sum(flat.c.conf))
            .group_by(*columns)
        )
        speech: dict[str, dict[str, list[Any]]] = defaultdict(dict)
        for name, kind, channel, ntype, what, b, count, distinct, total in rows:
            if kind in per_node:
                if not name:
                    continue
                fig = node(name)
                if kind == "node_enter":
                    fig.entered += count
                    fig.sessions += distinct
                    if ntype and not fig.type:
                        fig.type = ntype
                elif kind == "input":
                    fig.inputs += count
                elif kind == "noinput":
                    fig.noinput += count
                elif kind == "nomatch":
                    fig.nomatch += count
                elif kind == "failure":
                    fig.failures += count
                elif kind == "hangup":
                    fig.hung_up += count
                if b is not None:
                    hist = speech[name].setdefault(kind, [[0] * len(CONFIDENCE_BUCKETS), 0.0])
                    hist[0][int(b)] += count
                    hist[1] += float(total or 0.0)
            elif kind == "callback_requested":
                report.callbacks_requested += count
            elif kind == "callback_result" and (what or "").lower() in CALLBACK_DONE:
                report.callbacks_completed += count
            elif kind == "sms" and what == "sent":
                report.links_sent += count
            elif kind == "sms" and what in ("refused", "failed"):
                report.sms_refused += count
            elif kind == "web_open":
                report.links_opened += distinct
            elif kind == "session_end" and channel == "web" and what == "completed":
                report.finished_on_screen += distinct
        # the recogniser's own speech events where a node has them, else the engine's speech inputs
        for name, kinds in speech.items():
            hist, total = kinds.get("speech") or kinds["input"]
            fig = node(name)
            fig.confidence, fig.confidence_sum = hist, total

        # ---- movement and time: each node_enter against the next node_enter or session_end
        window = {"partition_by": EV.c.session_id, "order_by": EV.c.seq}
        steps = (
            select(
                EV.c.session_id.label("sid"),
                EV.c.kind.label("kind"),
                EV.c.node.label("node"),
                func.lead(EV.c.kind).over(**window).label("next_kind"),
                func.lead(EV.c.node).over(**window).label("next_node"),
                _seconds_between(dialect, EV.c.at, func.lead(EV.c.at).over(**window)).label("secs"),
            )
            .where(EV.c.session_id.in_(ended_ids), EV.c.kind.in_(("node_enter", "session_end")))
            .subquery()
        )
        rows = await conn.execute(
            select(steps.c.node, steps.c.next_kind, steps.c.next_node, SE.c.outcome, func.count(),
                   func.coalesce(func.sum(steps.c.secs), 0.0))
            .select_from(steps.join(SE, SE.c.id == steps.c.sid))
            .where(steps.c.kind == "node_enter")
            .group_by(steps.c.node, steps.c.next_kind, steps.c.next_node, SE.c.outcome)
        )
        for name, next_kind, next_node, outcome, count, seconds in rows:
            fig = node(name)
            if next_kind == "node_enter":
                key = next_node
                report.edges[(name, next_node)] = report.edges.get((name, next_node), 0) + count
            else:  # session_end, or the trail stops here (a crash before the end)
                key = f"{END} {outcome or 'unknown'}"
            fig.exits[key] = fig.exits.get(key, 0) + count
            fig.seconds_total += float(seconds or 0.0)

        # ---- escalated from here: the last "decision" node before the first transfer / callback request
        first = (
            select(EV.c.session_id.label("sid"), func.min(EV.c.seq).label("seq"))
            .where(EV.c.session_id.in_(ended_ids), EV.c.kind.in_(("transfer", "callback_requested")))
            .group_by(EV.c.session_id).subquery()
        )
        last = (
            select(EV.c.session_id.label("sid"), func.max(EV.c.seq).label("seq"))
            .select_from(EV.join(first, and_(EV.c.session_id == first.c.sid, EV.c.seq < first.c.seq)))
            .where(EV.c.kind == "node_enter", func.coalesce(_jstr("type"), "").not_in(PASS_THROUGH))
            .group_by(EV.c.session_id).subquery()
        )
        rows = await conn.execute(
            select(EV.c.node, func.count())
            .select_from(EV.join(last, and_(EV.c.session_id == last.c.sid, EV.c.seq == last.c.seq)))
            .group_by(EV.c.node)
        )
        for name, count in rows:
            if name:
                node(name).escalated = count

        # ---- first-contact resolution
        await _fcr(conn, report, person_reasons)

        # ---- satisfaction surveys
        await _surveys(conn, report, ended_ids)
    return report


async def _first_choices(conn: Any, session_ids: Iterable[str] | Any) -> dict[str, list[str]]:
    """Menu choice labels per session, in order."""
    rows = await conn.execute(
        select(EV.c.session_id, _jstr("label")).where(EV.c.kind == "choice", EV.c.session_id.in_(session_ids))
        .order_by(EV.c.session_id, EV.c.seq)
    )
    out: dict[str, list[str]] = defaultdict(list)
    for sid, label in rows:
        if label:
            out[sid].append(label)
    return out


async def _fcr(conn: Any, report: Report, reasons: dict[str, str]) -> None:
    days = report.fcr_days
    usable = and_(SE.c.caller.is_not(None), func.lower(func.trim(SE.c.caller)).not_in(sorted(ANONYMOUS_CALLERS)))
    horizon = report.until + dt.timedelta(days=days)
    # every contact of any flow and channel from the start of the range to the horizon
    contacts = (
        select(
            SE.c.id, SE.c.flow_id, SE.c.started_at, SE.c.ended_at,
            func.lead(SE.c.started_at).over(partition_by=SE.c.caller, order_by=(SE.c.started_at, SE.c.id))
            .label("next_at"),
        )
        .where(usable, SE.c.started_at >= report.since, SE.c.started_at < horizon)
        .subquery()
    )
    rows = (await conn.execute(
        select(contacts.c.id, contacts.c.started_at, contacts.c.next_at)
        .where(contacts.c.flow_id == report.flow_id, contacts.c.started_at < report.until,
               contacts.c.ended_at.is_not(None))
    )).all()
    ids_without_reason = [sid for sid, _, _ in rows if sid not in reasons]
    choices: dict[str, list[str]] = {}
    for i in range(0, len(ids_without_reason), 500):
        choices.update(await _first_choices(conn, ids_without_reason[i:i + 500]))
    window = dt.timedelta(days=days)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sid, started, next_at in rows:
        key = reasons.get(sid) or (choices[sid][0] if choices.get(sid) else "(no choice)")
        started, next_at = _naive(started), _naive(next_at)
        repeated = next_at is not None and started is not None and next_at - started <= window
        groups[key][0] += 1
        groups[key][1] += int(repeated)
        report.fcr_contacts += 1
        report.fcr_repeated += int(repeated)
    report.fcr_by_reason = sorted(
        ({"reason": key, "contacts": n, "repeated": r, "fcr": 1 - r / n if n else 0.0}
         for key, (n, r) in groups.items()),
        key=lambda d: (-d["contacts"], d["reason"]),
    )


async def _surveys(conn: Any, report: Report, ended_ids: Any) -> None:
    score = _jfloat("score")
    rows = (await conn.execute(
        select(EV.c.session_id, score).where(EV.c.session_id.in_(ended_ids), EV.c.kind == "survey",
                                             score.is_not(None))
        .order_by(EV.c.session_id, EV.c.seq)
    )).all()
    if not rows:
        return
    sids = sorted({sid for sid, _ in rows})
    queues: dict[str, str] = {}
    paths: dict[str, list[str]] = {}
    for i in range(0, len(sids), 500):
        chunk = sids[i:i + 500]
        q = await conn.execute(
            select(EV.c.session_id, _jstr("queue")).where(
                EV.c.session_id.in_(chunk), EV.c.kind.in_(("transfer", "agent_connect")), _jstr("queue").is_not(None))
            .order_by(EV.c.session_id, EV.c.seq)
        )
        for sid, queue in q:
            if queue:
                queues[sid] = queue  # the last one wins
        paths.update(await _first_choices(conn, chunk))
    by_queue: dict[str, list[float]] = defaultdict(list)
    by_path: dict[str, list[float]] = defaultdict(list)
    for sid, value in rows:
        value = float(value)
        if not 1 <= value <= 5:
            continue  # not a 1-5 score: ignored rather than skewing the mean
        by_queue[queues.get(sid, "(no queue)")].append(value)
        by_path[" › ".join(paths.get(sid, [])[:4]) or "(no choice)"].append(value)

    def table(groups: dict[str, list[float]], name: str) -> list[dict[str, Any]]:
        out = []
        for key, scores in groups.items():
            dist = Counter(int(round(s)) for s in scores)
            out.append({name: key, "responses": len(scores), "mean": sum(scores) / len(scores),
                        **{f"score_{k}": dist.get(k, 0) for k in range(1, 6)}})
        return sorted(out, key=lambda d: (-d["responses"], d[name]))

    report.survey_by_queue = table(by_queue, "queue")
    report.survey_by_path = table(by_path, "path")


# --------------------------------------------------------------------------- CSV


def _rows_summary(report: Report) -> tuple[list[str], list[list[Any]]]:
    return ["figure", "value"], [[k, v] for k, v in report.summary().items()]


def _rows_nodes(report: Report) -> tuple[list[str], list[list[Any]]]:
    head = ["node", "type", "label", "entered", "sessions", "hung_up", "drop_rate", "escalated", "inputs",
            "noinput", "noinput_rate", "nomatch", "nomatch_rate", "failures", "mean_seconds", "speech_results",
            "mean_confidence", *[f"confidence_{b}" for b in CONFIDENCE_LABELS], "exits"]
    rows = []
    for n in report.nodes.values():
        exits = "; ".join(f"{k}={v}" for k, v in sorted(n.exits.items(), key=lambda kv: -kv[1]))
        rows.append([n.node, n.type or "", n.label or "", n.entered, n.sessions, n.hung_up, f"{n.drop_rate:.4f}",
                     n.escalated, n.inputs, n.noinput, f"{n.noinput_rate:.4f}", n.nomatch, f"{n.nomatch_rate:.4f}",
                     n.failures, f"{n.mean_seconds:.3f}", n.speech_count,
                     "" if n.mean_confidence is None else f"{n.mean_confidence:.4f}", *n.confidence, exits])
    return head, rows


def _rows_exits(report: Report) -> tuple[list[str], list[list[Any]]]:
    rows = [[n.node, dst, count] for n in report.nodes.values() for dst, count in sorted(n.exits.items())]
    return ["node", "exit", "count"], rows


def _rows_reasons(report: Report) -> tuple[list[str], list[list[Any]]]:
    return ["reason", "count"], [[r, c] for r, c in report.reasons]


def _rows_fcr(report: Report) -> tuple[list[str], list[list[Any]]]:
    return (["reason", "contacts", "repeated", "fcr"],
            [[d["reason"], d["contacts"], d["repeated"], f"{d['fcr']:.4f}"] for d in report.fcr_by_reason])


def _survey_rows(items: list[dict[str, Any]], name: str) -> tuple[list[str], list[list[Any]]]:
    head = [name, "responses", "mean", *[f"score_{k}" for k in range(1, 6)]]
    return head, [[d[name], d["responses"], f"{d['mean']:.3f}", *[d[f"score_{k}"] for k in range(1, 6)]]
                  for d in items]


CSV_TABLES = {
    "summary": _rows_summary,
    "nodes": _rows_nodes,
    "exits": _rows_exits,
    "reasons": _rows_reasons,
    "fcr": _rows_fcr,
    "survey_queue": lambda r: _survey_rows(r.survey_by_queue, "queue"),
    "survey_path": lambda r: _survey_rows(r.survey_by_path, "path"),
}


def to_csv(report: Report, table: str) -> str:
    """One table of the report as CSV text (``CSV_TABLES`` names them)."""
    try:
        make = CSV_TABLES[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r} (have: {', '.join(CSV_TABLES)})") from None
    head, rows = make(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(head)
    for row in rows:
        # a cell starting with = + - @ would run as a formula in a spreadsheet
        writer.writerow([("'" + v) if isinstance(v, str) and v[:1] in ("=", "+", "-", "@") else v for v in row])
    return buf.getvalue()

