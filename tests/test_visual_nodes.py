"""offer_visual and guide in the pure engine (no sockets)."""

from __future__ import annotations

import pytest

from ivr.engine import Engine, Input
from ivr.flow.loader import FlowLoadError, load_flow_text
from visual_ivr.nodes import ON_SCREEN
from visual_ivr.phone import classify, mask_number

FLOW = """
id: vis
title: Visual
languages: [zh-CN, en-US]
settings: {failure: bye, global_keys: {"0": bye}}
prompts:
  offer: {zh-CN: 按1发短信, en-US: Press 1 for a text}
  sent: {zh-CN: 请看屏幕, en-US: Continue on screen}
  refused: {zh-CN: 发不了, en-US: Cannot text you}
  landline: {zh-CN: 需要手机, en-US: Needs a mobile}
  intro: {zh-CN: 指南, en-US: A guide}
  menu: {zh-CN: 菜单, en-US: Menu}
start: o
nodes:
  o:
    type: offer_visual
    mode: MODE
    prompt: offer
    sms: {zh-CN: "链接 {{ link }}", en-US: "Link {{ link }}"}
    sent_prompt: sent
    refused_prompt: refused
    unavailable_prompt: landline
    next: m
    hold_timeout: 60
  m:
    type: menu
    prompt: menu
    choices: [{key: 1, label: Guide, next: g}]
  g:
    type: guide
    title: {zh-CN: 重启, en-US: Restart}
    prompt: intro
    steps:
      - {zh-CN: 第一步, en-US: "Step one for {{ caller }}"}
      - {zh-CN: 第二步, en-US: Step two}
    next: m
  bye: {type: hangup}
"""


def flow(mode: str = "offer"):
    return load_flow_text(FLOW.replace("MODE", mode), "vis.yaml")


def start(mode: str = "offer", caller: str | None = "13800138000", lang: str = "en-US"):
    f = flow(mode)
    eng = Engine({f.id: f})
    return eng, eng.start(f, {"caller": caller, "lang": lang})


def kinds(turn, kind):
    return [e.data for e in turn.events if e.kind == kind]


@pytest.mark.parametrize("number,kind", [
    ("13800138000", "mobile"), ("+8613912345678", "mobile"), ("01065529988", "landline"),
    ("anonymous", "withheld"), ("", "withheld"), (None, "withheld"), ("12345", "invalid"),
    ("4008001234", "other"),
])
def test_classify_numbers(number, kind):
    assert classify(number, "CN").kind == kind


def test_mask_number():
    assert mask_number("+8613800138000") == "+86138****8000"
    assert "0013" not in mask_number("+8613800138000")


def test_offer_mode_accept_sends_then_holds():
    eng, t = start("offer")
    assert t.node == "o" and [p.text for p in t.prompts] == ["Press 1 for a text"]
    assert kinds(t, "offer_visual") == [{"status": "offered", "to": "+86138****8000"}]
    t = eng.advance(t.state, Input.dtmf("1"))
    (action,) = t.actions
    assert action.kind == "visual_link" and action.await_result
    assert action.params["to"] == "+8613800138000" and action.params["page"] == "m"
    assert action.params["sms"] == "Link {{ link }}" and action.params["lang"] == "en-US"
    t = eng.advance(t.state, Input.result({"kind": "link", "status": "sent"}))
    assert [p.text for p in t.prompts] == ["Continue on screen"]
    assert t.actions[0].kind == "visual_hold" and t.actions[0].params["timeout"] == 60
    t = eng.advance(t.state, Input.result({"kind": "hold", "status": "abandoned", "opened": False}))
    assert t.node == "m" and kinds(t, "visual_hold") == [{"status": "abandoned", "opened": False}]


def test_offer_declined_and_silence_go_on():
    eng, t = start("offer")
    assert eng.advance(t.state, Input.dtmf("2")).node == "m"
    t2 = eng.advance(t.state, Input.noinput())
    assert t2.node == "m" and kinds(t2, "offer_visual") == [{"status": "noinput"}]


def test_send_mode_and_refusal_is_told():
    eng, t = start("send", lang="zh-CN")
    assert t.actions[0].kind == "visual_link" and t.actions[0].params["sms"] == "链接 {{ link }}"
    t = eng.advance(t.state, Input.result({"kind": "link", "status": "refused", "reason": "limit_number"}))
    assert t.node == "m" and [p.text for p in t.prompts][0] == "发不了"


@pytest.mark.parametrize("caller,line", [("01065529988", "landline"), ("anonymous", "withheld"), (None, "withheld")])
def test_landlines_and_withheld_skip_the_offer(caller, line):
    _, t = start("offer", caller=caller)
    assert t.node == "m" and not any(a.kind == "visual_link" for a in t.actions)
    assert kinds(t, "offer_visual") == [{"status": "skipped", "line": line}]
    assert [p.text for p in t.prompts][0] == "Needs a mobile"


def test_on_screen_the_offer_is_skipped():
    eng, t = start("offer")
    t2 = eng.resume({**t.state, ON_SCREEN: True}, node="o")
    assert t2.node == "m" and kinds(t2, "offer_visual") == [{"status": "on_screen"}]
    assert [e.kind for e in t2.events][:2] == ["resume", "node_enter"]


def test_guide_steps_forward_back_and_done():
    eng, t = start("send")
    t = eng.advance(t.state, Input.result({"kind": "link", "status": "failed"}))
    t = eng.advance(t.state, Input.dtmf("1"))
    assert t.node == "g" and [p.text for p in t.prompts] == ["A guide", "Step one for 13800138000"]
    assert [c.key for c in t.expect.choices] == ["1"] and t.expect.choices[0].label == "Next"
    t = eng.advance(t.state, Input.tap("1"))
    assert [p.text for p in t.prompts] == ["Step two"]
    assert [(c.key, c.label) for c in t.expect.choices] == [("1", "Done"), ("2", "Previous step")]
    assert kinds(t, "guide_step") == [{"step": 2, "of": 2}]
    t = eng.advance(t.state, Input.tap("2"))
    assert [p.text for p in t.prompts] == ["Step one for 13800138000"]
    t = eng.advance(t.state, Input.tap("9"))
    assert kinds(t, "nomatch")
    t = eng.advance(t.state, Input.tap("1"))
    t = eng.advance(t.state, Input.tap("1"))
    assert t.node == "m" and kinds(t, "guide_done") == [{"steps": 2}]


def test_engine_finish_ends_from_outside():
    eng, t = start("offer")
    t = eng.finish(t.state, "callback", reason="asked on screen")
    assert t.ended and t.outcome == "callback" and t.state["reason"] == "asked on screen"
    assert [e.kind for e in t.events] == ["session_end"]


def test_hangup_moved_is_not_a_caller_hangup():
    eng, t = start("offer")
    t = eng.advance(t.state, Input.hangup("moved"))
    assert t.outcome == "moved" and kinds(t, "hangup") == [{"reason": "moved"}]


@pytest.mark.parametrize("patch,message", [
    (('sms: {zh-CN: "链接 {{ link }}", en-US: "Link {{ link }}"}', 'sms: "no link here"'),
     "the text message must contain the link"),
    (("    prompt: offer\n", ""), "mode 'offer' needs a prompt"),
    (("    hold_timeout: 60", "    region: XX"), "is not a region code"),
])
def test_loader_rejects_bad_offers(patch, message):
    text = FLOW.replace("MODE", "offer").replace(*patch)
    with pytest.raises(FlowLoadError) as info:
        load_flow_text(text, "vis.yaml")
    assert message in str(info.value) and "node 'o'" in str(info.value)
