"""Flow loading: good flows load, every problem of a bad one is reported with its place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ivr.flow.loader import FlowLoadError, load_flow, load_flow_text
from ivr.flow.schema import flow_schema

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "flows"


def problems_of(text: str) -> list[str]:
    with pytest.raises(FlowLoadError) as info:
        load_flow_text(text, "f.yaml")
    return [str(p) for p in info.value.problems]


def test_demo_and_minimal_load():
    demo = load_flow(ROOT / "flows" / "demo_hotline.yaml")
    assert demo.languages == ("zh-CN", "en-US")
    assert demo.start == "welcome"
    assert demo.warnings == []
    assert len(demo.version) == 16
    minimal = load_flow(FIX / "minimal.yaml")
    # an inline prompt gets an id of its own with both languages
    assert minimal.node_prompts["pin"]["prompt"] == ("pin.prompt",)
    assert minimal.prompts["pin.prompt"].texts() == {"zh-CN": "请输入卡号", "en-US": "Enter the card number"}


def test_broken_fixture_reports_every_problem_with_place():
    with pytest.raises(FlowLoadError) as info:
        load_flow(FIX / "broken.yaml")
    lines = [str(p) for p in info.value.problems if p.severity == "error"]
    path = str(FIX / "broken.yaml")
    expected = [
        f"{path}:5:3: prompt 'hello' has no text for en-US",
        f"{path}:9:43: node 'hello': 'next' goes to 'nowhere', which does not exist",
        f"{path}:13:5: node 'menu': unknown field 'colour'",
        f"{path}:18:17: node 'weird': unknown node type 'teleport'",
        f"{path}:19:7: node 'tr': give exactly one of queue or extension",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)
    assert any(":6:16: prompt 'bad': template does not parse" in l for l in lines)
    assert any(":17:33: node 'loop_b': expression does not parse" in l for l in lines)
    # sorted by position
    positions = [(p.line, p.col) for p in info.value.problems]
    assert positions == sorted(positions)


BASE = """\
id: t
title: T
languages: [zh-CN, en-US]
prompts:
  p: {zh-CN: 好, en-US: ok}
start: a
nodes:
"""


def test_cycle_without_input_is_an_error():
    text = BASE + "  a: {type: say, prompt: p, next: b}\n  b: {type: goto, target: a}\n"
    msgs = problems_of(text)
    assert any("cycle that never waits for input: a -> b -> a" in m or "b -> a -> b" in m for m in msgs), msgs


def test_cycle_through_a_menu_is_fine():
    text = BASE + (
        "  a: {type: say, prompt: p, next: m}\n"
        "  m: {type: menu, prompt: p, failure: a, choices: [{key: 1, label: x, next: a}]}\n"
    )
    flow = load_flow_text(text, "f.yaml")
    assert flow.start == "a"


def test_unreachable_node_is_a_warning_not_an_error():
    text = BASE + "  a: {type: hangup}\n  orphan: {type: hangup}\n"
    flow = load_flow_text(text, "f.yaml")
    assert flow.warnings == ["f.yaml:9:3: warning: node 'orphan': unreachable from the start node"]


@pytest.mark.parametrize(
    "body, message",
    [
        ("  a: {type: say, prompt: nope, next: a2}\n  a2: {type: hangup}\n", "node 'a': unknown prompt 'nope'"),
        ("  a: {type: input, prompt: p, var: 1x, next: a}\n", "node 'a': 'var': String should match pattern"),
        ("  a: {type: input, prompt: p, var: x, min_length: 5, max_length: 2, next: a}\n",
         "min_length is larger than max_length"),
        ("  a: {type: input, prompt: p, var: x, pattern: '[', next: a}\n", "pattern does not compile"),
        ("  a: {type: menu, prompt: p, choices: [{key: 1, label: x, next: a}, {key: 1, label: y, next: a}]}\n",
         "key '1' is used by two choices"),
        ("  a: {type: menu, prompt: p, choices: [{key: 12, label: x, next: a}]}\n", "'choices.0.key'"),
        ("  a: {type: hours, schedule: {mon: ['9-17']}, open: a, closed: a}\n", "'9-17' is not HH:MM-HH:MM"),
        ("  a: {type: hours, timezone: Mars/Base, schedule: {}, open: a, closed: a}\n", "unknown time zone"),
        ("  a: {type: branch, cases: [{when: 'x ==', next: a}], else: a}\n", "expression does not parse"),
        ("  a: {type: say, prompt: {zh-CN: 好}, next: a}\n", "inline prompt has no text for en-US"),
        ("  a: {type: lookup, url: /x, next: a}\n", "missing field 'failure'"),
        ("  a: {type: say, prompt: p, next: a, tries: 3}\n", "unknown field 'tries'"),
    ],
)
def test_node_problems(body, message):
    msgs = problems_of(BASE + body)
    assert any(message in m for m in msgs), msgs
    assert all(m.startswith("f.yaml:") for m in msgs)


def test_top_level_problems_have_places():
    msgs = problems_of("id: t\ntitle: T\nlanguages: [chinese]\nstart: a\nnodes:\n  a: {type: hangup}\nextra: 1\n")
    assert "f.yaml:3:13: 'chinese' is not a language tag like zh-CN or en-US" in msgs
    assert any(m.startswith("f.yaml:7:1: unknown field 'extra'") for m in msgs), msgs


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "file is empty"),
        (b"id: [\n", "YAML syntax error"),
        (b"\xff\xfe\x00x", "file is UTF-16, not UTF-8"),
        (b"id: x\x00\n", "NUL bytes"),
        (b"id: \xc3\x28\n", "not valid UTF-8"),
        (b"a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
         b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
         "too many values"),
        (b"a: " + b"[" * 100 + b"]" * 100, "nesting deeper"),
        (b"a: " + b"[" * 5000 + b"]" * 5000, "nesting deeper"),
        (b"x" * (3 * 1024 * 1024), "larger than"),
        (b"a: 1\na: 2\n", "duplicate key 'a'"),
        (b"- 1\n- 2\n", "must be a mapping"),
        (b"a: !!python/object:os.system x\n", "YAML tag '!!python/object:os.system' is not allowed"),
        (b"a: !!python/object/apply:os.system [x]\n", "is not allowed in a flow file"),
    ],
)
def test_hostile_yaml_is_a_clear_error(data, message):
    with pytest.raises(FlowLoadError) as info:
        load_flow_text(data, "f.yaml")
    assert any(message in str(p) for p in info.value.problems), info.value.problems


def test_cli_validate_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "ivr.cli", "validate", str(ROOT / "flows")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "demo_hotline.yaml: ok" in ok.stdout
    broken = tmp_path / "demo_copy.yaml"
    text = (ROOT / "flows" / "demo_hotline.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("next: ask_id", "next: ask_idd").replace("type: say\n", "type: sya\n", 1),
                      encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "ivr.cli", "validate", str(broken)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "node 'ask_account': 'next' goes to 'ask_idd', which does not exist" in bad.stderr
    assert "unknown node type 'sya'" in bad.stderr
    assert f"{broken}:" in bad.stderr


def test_shipped_schema_is_current_and_accepts_the_demo():
    import jsonschema
    import yaml

    shipped = json.loads((ROOT / "flows" / "flow.schema.json").read_text(encoding="utf-8"))
    assert shipped == flow_schema(), "flows/flow.schema.json is stale: run `ivr schema -o flows/flow.schema.json`"
    jsonschema.validate(yaml.safe_load((ROOT / "flows" / "demo_hotline.yaml").read_text(encoding="utf-8")), shipped)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": "x", "title": "x", "languages": ["en-US"], "start": "a",
                             "nodes": {"a": {"type": "say", "prompt": "p"}}}, shipped)


def test_language_choice_must_be_a_declared_language():
    msgs = problems_of(BASE + "  a: {type: language, prompt: p, next: b, choices: [{key: 1, language: fr-FR}]}\n"
                              "  b: {type: hangup}\n")
    assert any("node 'a': 'fr-FR' is not one of the flow's languages" in m for m in msgs), msgs


def test_validate_matches_subflows_by_flow_id(tmp_path):
    (tmp_path / "main.yaml").write_text(
        "id: main\ntitle: M\nlanguages: [en-US]\nstart: s\nnodes:\n"
        "  s: {type: subflow, flow: verify_identity, next: e}\n  e: {type: hangup}\n", encoding="utf-8")
    (tmp_path / "identity-v2.yaml").write_text(
        "id: verify_identity\ntitle: V\nlanguages: [en-US]\nstart: r\nnodes:\n  r: {type: return}\n", encoding="utf-8")
    ok = subprocess.run([sys.executable, "-m", "ivr.cli", "validate", str(tmp_path / "main.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "identity-v2.yaml").unlink()
    bad = subprocess.run([sys.executable, "-m", "ivr.cli", "validate", str(tmp_path / "main.yaml")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "subflow 'verify_identity' is not a known flow" in bad.stderr
