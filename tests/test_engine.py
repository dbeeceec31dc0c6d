"""The step engine on the simulator's terms: no sockets, every input edge."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ivr.engine import Engine, EngineError, Input, public_state
from ivr.flow.loader import load_flow, load_flow_text

ROOT = Path(__file__).resolve().parents[1]
SHANGHAI_11AM = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.timezone.utc)
SHANGHAI_11PM = dt.datetime(2026, 11, 25, 15, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def minimal():
    return load_flow(ROOT / "tests" / "fixtures" / "flows" / "minimal.yaml")


@pytest.fixture(scope="module")
def demo():
    return load_flow(ROOT / "flows" / "demo_hotline.yaml")


class Run:
    """Drive a flow step by step; the state goes through JSON at every step."""

    def __init__(self, flow, now=SHANGHAI_11AM, **context):
        self.engine = Engine({flow.id: flow})
        self.now = now
        self.turn = self.engine.start(flow, context, now=now)
        self.events = list(self.turn.events)

    def send(self, inp: Input):
        state = json.loads(json.dumps(self.turn.state))  # plain data, always
        self.turn = self.engine.advance(state, inp, now=self.now)
        self.events += self.turn.events
        return self.turn

    def key(self, k: str):
        return self.send(Input.dtmf(k))

    def kinds(self, kind: str):
        return [e for e in self.events if e.kind == kind]

    @property
    def texts(self):
        return [p.text for p in self.turn.prompts]


def test_start_plays_say_then_waits_at_menu(minimal):
    r = Run(minimal, lang="en-US")
    assert r.turn.node == "menu"
    assert r.texts == ["Hello", "Choose"]
    assert r.turn.expect.kind == "choice"
    assert [c.key for c in r.turn.expect.choices] == ["1", "2", "3"]
    assert set(r.turn.expect.global_keys) == {"0", "*", "#"}
    assert r.turn.expect.keys == "123" + "0*#"


def test_language_falls_back_by_prefix_and_default(minimal):
    assert Run(minimal, lang="en").turn.state["lang"] == "en-US"
    assert Run(minimal, lang="fr-FR").turn.state["lang"] == "zh-CN"


def test_noinput_then_nomatch_then_failure_exit(minimal):
    r = Run(minimal, lang="en-US")
    t = r.send(Input.noinput())
    assert t.node == "menu" and t.state["attempt"] == 2
    assert r.texts == ["Once more"]  # the per-attempt prompt
    t = r.key("7")
    # tries: 2 -> exhausted -> settings.failure (agent transfer)
    assert t.node == "agent"
    assert [a.kind for a in t.actions] == ["transfer"]
    assert [e.kind for e in r.events if e.kind in ("noinput", "nomatch", "failure")] == ["noinput", "nomatch", "failure"]
    assert t.actions[0].params["reason"] == "could not get past Main"


def test_global_keys_repeat_back_and_agent(minimal):
    r = Run(minimal, lang="en-US")
    t = r.key("*")
    assert t.node == "menu" and r.texts == ["Choose"] and t.state["attempt"] == 1
    t = r.key("1")
    assert t.node == "sub"
    t = r.key("#")  # back
    assert t.node == "menu"
    t = r.key("0")
    assert t.node == "agent"
    assert r.kinds("global_key")[-1].data == {"key": "0", "meaning": "agent", "target": "agent"}
    assert t.actions[0].params["reason"] == "asked for a person at Main"
    assert t.actions[0].params["queue"] == "support"


def test_input_validation_masking_and_templates(minimal):
    r = Run(minimal, lang="zh-CN")
    r.key("2")
    assert r.turn.expect.kind == "digits" and r.turn.expect.mask
    t = r.key("4111111111111112")  # Luhn fails
    assert t.node == "pin"
    assert r.kinds("nomatch")[-1].data["reason"] == "checksum"
    assert r.kinds("nomatch")[-1].data["value"] == "****1112"
    t = r.key("4111111111111111")
    assert t.ended and t.outcome == "completed"
    assert r.texts == ["余额负35.20元", "再见"]
    # the raw number is in the engine's state (look-ups need it) but nowhere else
    blob = json.dumps([e.to_dict() for e in r.events], ensure_ascii=False)
    assert "4111111111111111" not in blob
    assert "****1111" in blob
    assert "4111111111111111" not in json.dumps(public_state(t.state))
    assert t.state["vars"]["card"] == "4111111111111111"
    assert [e.data["text"] for e in r.kinds("summary")] == ["chose Two", "card ****1111"]


def test_global_key_inside_input_only_when_alone(minimal):
    r = Run(minimal, lang="en-US")
    r.key("2")
    t = r.key("0")  # the whole entry is "0": the flow-level key
    assert t.node == "agent"


def test_transfer_continue_goes_to_survey_and_priority(minimal):
    r = Run(minimal, lang="en-US", vars={"vip": True})
    t = r.key("0")
    assert t.actions[0].params["priority"] == 5
    t = r.send(Input.result({"status": "continue", "talk_seconds": 30}))
    assert t.node == "survey"
    assert t.expect.global_keys == ()
    t = r.key("1")
    assert t.ended and t.outcome == "transfer"  # the caller talked to a person


def test_hangup_in_the_survey_after_a_person_counts_as_transfer(minimal):
    r = Run(minimal, lang="en-US")
    r.key("0")
    r.send(Input.result({"status": "continue"}))
    t = r.send(Input.hangup("caller"))
    assert t.ended and t.outcome == "transfer" and t.node == "survey"
    assert [e.kind for e in t.events] == ["hangup", "session_end"]


def test_transfer_answered_ends_with_transfer(minimal):
    r = Run(minimal)
    r.key("0")
    t = r.send(Input.result({"status": "ended"}))
    assert t.ended and t.outcome == "transfer" and t.node == "agent"


def test_hangup_ends_at_the_node(minimal):
    r = Run(minimal)
    r.key("1")
    t = r.send(Input.hangup("caller"))
    assert t.ended and t.outcome == "hangup" and t.node == "sub"
    assert [e.kind for e in t.events] == ["hangup", "session_end"]
    with pytest.raises(EngineError):
        r.engine.advance(t.state, Input.dtmf("1"))


def test_wrong_input_kind_is_refused(minimal):
    r = Run(minimal)
    with pytest.raises(EngineError):
        r.engine.advance(r.turn.state, Input.result({"ok": True}))
    r.key("0")
    with pytest.raises(EngineError):
        r.engine.advance(r.turn.state, Input.dtmf("1"))


def test_demo_language_hours_and_lookups(demo):
    r = Run(demo, caller="13800138000")
    assert r.turn.node == "language"
    t = r.key("2")
    assert t.state["lang"] == "en-US"
    assert t.actions[0].kind == "lookup" and t.actions[0].params["url"] == "/customers/by-phone/13800138000"
    t = r.send(Input.result({"ok": False, "status": 404, "data": {"error": "unknown number"}}))
    assert t.node == "main"  # on_status 404
    t = r.key("1")
    assert t.node == "ask_account"
    t = r.key("20240001")
    t = r.key("110105199003071239")
    assert t.actions[0].params["json"] == {"id_last6": "071239"}
    t = r.send(Input.result({"ok": True, "status": 200, "data": {"verified": True}}))
    assert t.node == "billing_menu"
    t = r.key("1")
    t = r.send(Input.result({"ok": True, "status": 200, "data": {"balance": -35.2, "due_date": "2026-11-30"}}))
    assert r.texts[0] == "Your balance is minus 35.20 yuan, which is overdue; please pay by November 30, 2026."
    assert t.node == "anything_else"


def test_demo_lookup_failure_goes_to_a_person_and_hours(demo):
    for now, node in ((SHANGHAI_11AM, "to_agent"), (SHANGHAI_11PM, "main")):
        r = Run(demo, now=now, caller="13800138000")
        r.key("1")
        t = r.send(Input.result({"ok": False, "status": None, "error": "timeout"}))
        assert t.node == "main"  # identify failure is harmless
        r.key("3")
        t = r.send(Input.result({"ok": False, "status": 500, "error": "http 500"}))
        assert t.node == node
        assert r.kinds("hours")[-1].data["open"] is (node == "to_agent")


def test_language_failure_keeps_default(demo):
    r = Run(demo)
    t = r.send(Input.noinput())
    assert t.state["lang"] == "zh-CN" and t.actions[0].kind == "lookup"


def test_hours_holiday_closed():
    text = """
id: h
title: H
languages: [en-US]
start: h
nodes:
  h: {type: hours, schedule: {wed: ["00:00-24:00"]}, holidays: ["2026-11-25"], open: o, closed: c}
  o: {type: hangup, outcome: open}
  c: {type: hangup, outcome: closed}
"""
    flow = load_flow_text(text, "h.yaml")
    assert Run(flow).turn.outcome == "closed"
    assert Run(flow, now=SHANGHAI_11AM + dt.timedelta(days=7)).turn.outcome == "open"


def test_subflow_and_return():
    parent = load_flow_text("""
id: parent
title: P
languages: [en-US]
start: s
nodes:
  s: {type: subflow, flow: child, next: done}
  done: {type: hangup, outcome: completed}
""", "p.yaml")
    child = load_flow_text("""
id: child
title: C
languages: [en-US]
prompts: {q: {en-US: Question}}
start: m
nodes:
  m: {type: menu, prompt: q, choices: [{key: 1, label: x, next: r}], failure: r}
  r: {type: return}
""", "c.yaml")
    engine = Engine({"parent": parent, "child": child})
    t = engine.start(parent, {})
    assert t.state["flow"] == "child" and t.node == "m"
    t = engine.advance(t.state, Input.dtmf("1"))
    assert t.ended and t.outcome == "completed" and t.state["flow"] == "parent"


def test_speech_and_tap_share_the_input_shape(minimal):
    r = Run(minimal, lang="en-US")
    t = r.send(Input.speech("1", 0.92, "one please"))
    assert t.node == "sub"
    ev = r.kinds("input")[-1].data
    assert ev == {"mode": "speech", "value": "1", "confidence": 0.92, "utterance": "one please"}
    t = r.send(Input.tap("1"))
    assert t.ended
    assert r.kinds("choice")[-1].data["mode"] == "tap"


def test_currency_setting_summary_on_branch_and_short_values_masked():
    flow = load_flow_text("""
id: c
title: C
languages: [en-US]
settings: {currency: USD}
prompts:
  amount: {en-US: "You owe {{ due | money }}, or {{ due | money('EUR') }}"}
start: pin
nodes:
  pin: {type: input, prompt: amount, var: pin, min_length: 6, max_length: 6, mask: true, next: check}
  check:
    type: branch
    cases: [{when: "pin | length == 6", next: end}]
    else: end
    summary: "PIN {{ 'accepted' if pin else 'missing' }} {{ pin }}"
  end: {type: hangup}
""", "c.yaml")
    r = Run(flow, vars={"due": 12.5})
    assert r.texts == ["You owe 12.50 dollars, or 12.50 euros"]
    t = r.key("123456")
    assert t.ended
    assert [e.data["text"] for e in r.kinds("summary")] == ["PIN accepted ******"]
    assert "123456" not in json.dumps([e.to_dict() for e in r.events])
