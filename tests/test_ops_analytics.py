"""Analytics on ~3,000 generated trails with known numbers, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time

import pytest

from ivr.ops import analytics
from ivr.ops.analytics import compute, to_csv
from ivr.store import make_engine, migrate

from . import ops_data as D
from .test_store import Backend, backend  # noqa: F401 - the sqlite/postgresql fixture

TOTAL = sum(D.COUNTS.values())


@pytest.fixture
async def engine(backend: Backend):  # noqa: F811
    engine = make_engine(backend.url, **backend.options)
    await migrate(engine)
    gens = D.generate()
    await D.write(engine, gens)
    try:
        yield engine, gens
    finally:
        await engine.dispose()


async def test_every_figure(engine) -> None:
    eng, gens = engine
    started = time.perf_counter()
    r = await compute(eng, D.FLOW, D.SINCE, D.UNTIL, fcr_days=D.FCR_DAYS)
    elapsed = time.perf_counter() - started
    assert elapsed < 20, f"analytics took {elapsed:.1f} s"
    C = D.COUNTS

    # ---- headline figures, from the archetype counts
    completed = C["balance"] + C["outages"] + C["speech"] + C["visual"] - D.VISUAL_ABANDONED
    assert r.sessions == TOTAL == 3050
    assert r.live == D.LIVE
    assert r.outcomes == {"completed": completed, "transfer": C["agent_key"] + C["noinput"] + C["backend"],
                          "hangup": C["hangup_id"] + C["hangup_main"], "callback": C["callback"],
                          "abandoned": D.VISUAL_ABANDONED}
    s = r.summary()
    assert s["contained"] == completed - C["speech"] == 1460  # the survey calls went to a person first
    assert s["containment"] == pytest.approx(1460 / 3050)
    assert s["transferred"] == 770 and s["transfer_rate"] == pytest.approx(770 / 3050)
    assert s["abandoned"] == 450 and s["abandonment"] == pytest.approx(450 / 3050)
    assert s["failed"] == 0 and s["error"] == 0 and s["other"] == C["callback"] + D.VISUAL_ABANDONED
    assert s["to_person"] == C["agent_key"] + C["noinput"] + C["backend"] + C["speech"] + C["callback"] == 1100
    assert s["callbacks_requested"] == C["callback"] and s["callbacks_completed"] == D.CALLBACKS_DONE
    assert s["links_sent"] == C["visual"] and s["sms_refused"] == 0
    assert s["links_opened"] == D.VISUAL_FINISHED + D.VISUAL_ABANDONED
    assert s["finished_on_screen"] == D.VISUAL_FINISHED
    assert s["worst_node"] == "ask_id"

    # ---- why callers reached a person
    assert r.reasons == [(D.REASON_AGENT, C["agent_key"] + C["callback"]), (D.REASON_FAULT, C["speech"]),
                         (D.REASON_TRIES, C["noinput"]), (D.REASON_LOOKUP, C["backend"])]

    # ---- first-contact resolution (any channel, any flow, also after the range ends)
    usable = TOTAL - D.J_ANON - 20
    assert (s["fcr_contacts"], s["fcr_repeated"]) == (usable, D.B_REPEAT_IN + D.C_REPEAT + D.J_REPEAT_AFTER)
    assert s["fcr_rate"] == pytest.approx(1 - 330 / usable)
    fcr = {row["reason"]: (row["contacts"], row["repeated"]) for row in r.fcr_by_reason}
    assert fcr == {
        D.REASON_AGENT: (650, D.B_REPEAT_IN),
        D.REASON_FAULT: (180, 0),
        D.REASON_TRIES: (150, 0),
        D.REASON_LOOKUP: (120, 0),
        "余额和账单": (C["balance"] + C["hangup_id"] + C["visual"], D.C_REPEAT),
        "停电停网信息": (C["outages"], 0),
        "(no choice)": (C["hangup_main"] - D.J_ANON - 20, D.J_REPEAT_AFTER),
    }
    assert sum(c for c, _ in fcr.values()) == usable

    # ---- satisfaction: 180 answers, scores 1..5 evenly, half per queue
    assert r.survey_by_queue == [
        {"queue": "support", "responses": 90, "mean": 3.0, **{f"score_{k}": 18 for k in range(1, 6)}},
        {"queue": "support-en", "responses": 90, "mean": 3.0, **{f"score_{k}": 18 for k in range(1, 6)}},
    ]
    assert r.survey_by_path == [
        {"path": "故障报修 › 其他问题", "responses": 180, "mean": 3.0, **{f"score_{k}": 36 for k in range(1, 6)}},
    ]

    # ---- per node, against the plain-Python walk of the same sessions
    want = D.expected(gens)
    assert set(r.nodes) == set(want["nodes"])
    for name, exp in want["nodes"].items():
        got = r.nodes[name]
        assert got.entered == exp["entered"], name
        assert got.sessions == len(exp["sessions"]), name
        assert got.hung_up == exp["hung_up"], name
        assert got.escalated == exp["escalated"], name
        assert (got.inputs, got.noinput, got.nomatch, got.failures) == (
            exp["inputs"], exp["noinput"], exp["nomatch"], exp["failures"]), name
        assert got.exits == dict(exp["exits"]), name
        assert got.mean_seconds == pytest.approx(exp["seconds"] / exp["entered"], abs=1e-3), name
        hist, total = (exp["speech"], exp["speech_sum"]) if any(exp["speech"]) else (
            exp["input_speech"], exp["input_speech_sum"])
        assert got.confidence == hist, name
        assert got.confidence_sum == pytest.approx(total), name
    assert r.edges == dict(want["edges"])

    # ---- a few node figures by hand, so the oracle itself is checked
    main, ask_id = r.nodes["main"], r.nodes["ask_id"]
    assert main.entered == TOTAL and main.hung_up == C["hangup_main"]
    assert main.escalated == C["agent_key"] + C["noinput"] + C["callback"]
    assert main.noinput == 3 * C["noinput"] and main.nomatch == C["outages"]
    assert main.inputs == C["balance"] + C["agent_key"] + C["hangup_id"] + 3 * C["noinput"] + 2 * C["outages"] \
        + C["backend"] + C["speech"] + C["callback"] + C["visual"]
    assert main.noinput_rate == pytest.approx(450 / main.inputs)
    assert main.confidence == [36, 36, 36, 36, 36]  # from the recogniser's speech events
    assert r.nodes["fault"].confidence == [0, 0, 0, 90, 90]  # from input events of mode speech
    assert r.nodes["fault"].mean_confidence == pytest.approx(0.8)
    assert ask_id.entered == C["balance"] + C["hangup_id"] + C["backend"] and ask_id.hung_up == C["hangup_id"]
    assert ask_id.drop_rate == pytest.approx(200 / 1220)
    assert r.nodes["balance"].escalated == C["backend"] and r.nodes["fault"].escalated == C["speech"]
    assert r.nodes["main"].exits["agent"] == C["agent_key"] + C["noinput"] + C["callback"]
    assert r.nodes["to_agent"].exits == {"(end) transfer": 770, "survey": C["speech"]}
    assert r.nodes["offer_web"].exits == {"billing_menu": 160, "goodbye": 40}
    # time spent: the main menu of the 150 silent callers took 15 s each
    assert main.seconds_total == pytest.approx(
        4 * (C["balance"] + C["hangup_id"] + C["backend"] + C["visual"] + C["speech"]) + 3 * (C["agent_key"] + C["callback"])
        + 15 * C["noinput"] + 7 * C["outages"] + 6 * C["hangup_main"], abs=0.05)

    # ---- CSV export carries the same numbers
    rows = list(csv.DictReader(io.StringIO(to_csv(r, "nodes"))))
    by_node = {row["node"]: row for row in rows}
    assert int(by_node["ask_id"]["hung_up"]) == 200 and by_node["ask_id"]["drop_rate"] == f"{200 / 1220:.4f}"
    assert int(by_node["main"]["entered"]) == TOTAL
    summary = dict(csv.reader(io.StringIO(to_csv(r, "summary"))))
    assert summary["contained"] == "1460" and summary["worst_node"] == "ask_id"
    reasons = list(csv.reader(io.StringIO(to_csv(r, "reasons"))))
    assert reasons[1] == [D.REASON_AGENT, "650"]
    for table in analytics.CSV_TABLES:
        assert to_csv(r, table).count("\r\n") >= 2, table


async def test_range_and_flow_select_sessions(engine) -> None:
    eng, _ = engine
    # one day only: the sessions of the first 480 three-minute slots (the live ones start at 05:00)
    day = await compute(eng, D.FLOW, D.SINCE, D.SINCE + dt.timedelta(days=1))
    assert day.sessions == 480 and day.live == D.LIVE
    other = await compute(eng, "web_portal", D.SINCE, D.UNTIL + dt.timedelta(days=30))
    assert other.sessions == D.B_REPEAT_IN + D.B_REPEAT_LATE and other.outcomes == {"completed": 250}
    empty = await compute(eng, "no_such_flow", D.SINCE, D.UNTIL)
    assert empty.sessions == 0 and empty.containment == 0 and empty.worst_node is None
    with pytest.raises(ValueError):
        await compute(eng, D.FLOW, D.UNTIL, D.SINCE)
    with pytest.raises(ValueError):
        await compute(eng, D.FLOW, D.SINCE, D.UNTIL, fcr_days=0)


def test_csv_refuses_unknown_table_and_defuses_formulas() -> None:
    r = analytics.Report("f", D.SINCE, D.UNTIL, 7)
    r.reasons = [("=HYPERLINK(\"http://x\")", 3)]
    assert "'=HYPERLINK" in to_csv(r, "reasons")
    with pytest.raises(ValueError):
        to_csv(r, "nope")
