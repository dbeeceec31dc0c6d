"""docs/flows.md stays true: its YAML examples load, and it covers every node and field.

Conventions for fenced ```yaml blocks in docs/flows.md (first line of the block):

- no marker: a complete flow (``id:`` and ``nodes:`` at the top level); it must
  load without errors or warnings;
- ``# node snippet``: a mapping of node id -> node. The test wraps it into a
  minimal flow (languages zh-CN and en-US, the first node as ``start``), declares
  every prompt id the nodes use and adds a ``hangup`` node for every exit that
  the snippet does not define;
- ``# flow snippet``: some top-level fields (``settings``, ``prompts``, ``nodes``
  ...), merged over the same minimal flow and completed the same way;
- ``# invalid``: a complete file that must FAIL to load. The next fenced block
  must show its problems (``path:line:col: message`` lines); they must be exactly
  the problems the loader reports, and an ``invalid (N errors)`` line, if shown,
  must give the right count;
- ``# warnings``: a complete file that must load; the next fenced block must show
  exactly its warnings.

A block that is none of these fails the test, so every YAML example is checked.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import ivr.flow.nodes  # noqa: F401  (registers the built-in node types)
from ivr.flow import nodes as node_module
from ivr.flow.loader import FlowDoc, FlowLoadError, load_flow_text
from ivr.flow.model import NODE_TYPES, Node, PromptDef, Settings
from ivr.flow.yamlsrc import load as load_yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "flows.md"
TEXT = DOC.read_text(encoding="utf-8")

FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
PROBLEM = re.compile(r"^(?P<path>\S+?):(?P<line>\d+):(?P<col>\d+): (?P<msg>.*)$")
COUNT = re.compile(r"^\S+: invalid \((\d+) errors?\)$")
LANGS = ["zh-CN", "en-US"]
SPECIAL_TARGETS = {"repeat", "back"}


# ----------------------------------------------------------------- the blocks
def _blocks() -> list[tuple[str, str, int]]:
    """(language, body, line number in the doc) of every fenced block, in order."""
    return [(m.group(1), m.group(2), TEXT.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(TEXT)]


BLOCKS = _blocks()
YAML_BLOCKS = [(i, body, line) for i, (lang, body, line) in enumerate(BLOCKS) if lang == "yaml"]


def _marker(body: str) -> str:
    first = body.split("\n", 1)[0].strip()
    for marker in ("# node snippet", "# flow snippet", "# invalid", "# warnings"):
        if first == marker:
            return marker[2:]
    return "flow"


def _ids(kind: str) -> list[str]:
    return [f"docs/flows.md:{line}" for i, body, line in YAML_BLOCKS if _marker(body) == kind]


def _params(kind: str) -> list[Any]:
    return [pytest.param(body, i, id=f"line{line}") for i, body, line in YAML_BLOCKS if _marker(body) == kind]


def _load(body: str, path: str = "<doc>"):
    try:
        return load_flow_text(body, path)
    except FlowLoadError as exc:
        pytest.fail(f"example does not load:\n{body}\n--- problems:\n" + "\n".join(str(p) for p in exc.problems))


# ------------------------------------------------------------ wrapping snippets
def _prompt_ids(spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, list):
        return [p for item in spec for p in _prompt_ids(item)]
    return []  # inline text per language


def _complete(doc: dict[str, Any]) -> dict[str, Any]:
    """Fill in the start node, missing prompts and missing exit nodes."""
    nodes: dict[str, Any] = doc.setdefault("nodes", {})
    prompts: dict[str, Any] = doc.setdefault("prompts", {})
    languages = doc.setdefault("languages", list(LANGS))
    doc.setdefault("id", "doc_example")
    doc.setdefault("title", "Documentation example")
    if not nodes:
        nodes["doc_start"] = {"type": "hangup"}
    doc.setdefault("start", next(iter(nodes)))

    wanted_prompts: list[str] = []
    wanted_nodes: list[str] = []
    for body in list(nodes.values()):
        cls = NODE_TYPES.get(body.get("type")) if isinstance(body, dict) else None
        if cls is None:
            continue  # the loader reports it
        try:
            node = cls.model_validate(body)
        except Exception:
            continue  # the loader reports it
        for fname in node.prompt_fields:
            value = getattr(node, fname, None)
            if fname == "prompts" and value:
                for spec in value:
                    wanted_prompts += _prompt_ids(spec)
            elif value is not None:
                wanted_prompts += _prompt_ids(value)
        wanted_nodes += [target for _, target in node.targets()]
    settings = doc.get("settings") or {}
    wanted_prompts += [settings[k] for k in ("noinput_prompt", "nomatch_prompt", "confirm_prompt", "keypad_prompt")
                       if settings.get(k)]
    wanted_nodes += [t for t in (settings.get("global_keys") or {}).values() if t not in SPECIAL_TARGETS]
    if settings.get("failure"):
        wanted_nodes.append(settings["failure"])

    for pid in wanted_prompts:
        prompts.setdefault(pid, {lang: f"({pid})" for lang in languages})
    for nid in wanted_nodes:
        nodes.setdefault(nid, {"type": "hangup"})
    return doc


def _wrap(body: str, kind: str) -> str:
    data = load_yaml(body).data
    assert isinstance(data, dict), f"a {kind} must be a YAML mapping:\n{body}"
    if kind == "node snippet":
        assert all(isinstance(v, dict) and "type" in v for v in data.values()), (
            f"a node snippet is a mapping of node id -> node:\n{body}")
        doc: dict[str, Any] = {"nodes": dict(data)}
    else:
        assert not {"id", "start"} & set(data), f"a flow snippet with id/start should be a complete flow:\n{body}"
        doc = dict(data)
    # JSON is YAML: the loader reads the completed flow exactly as built here
    return json.dumps(_complete(doc), ensure_ascii=False, indent=1)


# --------------------------------------------------------- expected problems
def _expected_output(index: int) -> tuple[str, list[str], int | None]:
    """(path, problem lines without path, count of errors) from the block after ``index``."""
    assert index + 1 < len(BLOCKS), "an # invalid / # warnings example needs an output block after it"
    lang, body, line = BLOCKS[index + 1]
    assert lang != "yaml", f"docs/flows.md:{line}: expected the loader's output after the example, found YAML"
    path = None
    problems: list[str] = []
    count = None
    for raw in body.splitlines():
        if (m := COUNT.match(raw)):
            count = int(m.group(1))
            continue
        if (m := PROBLEM.match(raw)):
            path = path or m.group("path")
            assert m.group("path") == path, f"docs/flows.md:{line}: one file per output block"
            problems.append(f"{m.group('line')}:{m.group('col')}: {m.group('msg')}")
    assert problems, f"docs/flows.md:{line}: the output block shows no problems"
    return path or "<doc>", problems, count


def _strip_path(problem: Any, path: str) -> str:
    text = str(problem)
    assert text.startswith(path + ":")
    return text[len(path) + 1:]


# ====================================================================== tests
def test_doc_has_yaml_examples_of_every_kind():
    kinds = {_marker(body) for _, body, _ in YAML_BLOCKS}
    assert kinds == {"flow", "node snippet", "flow snippet", "invalid", "warnings"}


@pytest.mark.parametrize("body,index", _params("flow"))
def test_complete_flows_load(body: str, index: int):
    data = load_yaml(body).data
    assert isinstance(data, dict) and "id" in data and "nodes" in data, (
        "a YAML block without a marker must be a complete flow (id: and nodes: at the top level); "
        "mark snippets with '# node snippet' or '# flow snippet':\n" + body)
    flow = _load(body)
    assert flow.warnings == [], f"complete examples should load without warnings: {flow.warnings}"


@pytest.mark.parametrize("body,index", _params("node snippet"))
def test_node_snippets_load(body: str, index: int):
    flow = _load(_wrap(body, "node snippet"))
    for node_id in load_yaml(body).data:
        assert node_id in flow.nodes


@pytest.mark.parametrize("body,index", _params("flow snippet"))
def test_flow_snippets_load(body: str, index: int):
    _load(_wrap(body, "flow snippet"))


@pytest.mark.parametrize("body,index", _params("invalid"))
def test_invalid_examples_fail_with_the_messages_shown(body: str, index: int):
    path, shown, count = _expected_output(index)
    with pytest.raises(FlowLoadError) as info:
        load_flow_text(body, path)
    actual = [_strip_path(p, path) for p in info.value.problems]
    assert actual == shown
    errors = [p for p in info.value.problems if p.severity == "error"]
    if count is not None:
        assert count == len(errors)


@pytest.mark.parametrize("body,index", _params("warnings"))
def test_warning_examples_show_their_warnings(body: str, index: int):
    path, shown, _ = _expected_output(index)
    flow = _load(body, path)
    assert flow.warnings, "a '# warnings' example should have warnings"
    assert [_strip_path(w, path) for w in flow.warnings] == shown


def test_shown_versions_match_the_examples():
    """`ivr validate` output quoted in the doc shows the version of the example it follows."""
    import hashlib

    for i, (lang, body, line) in enumerate(BLOCKS):
        for m in re.finditer(r"^(\S+): ok \(flow (\S+), version ([0-9a-f]{16}), (\d+) nodes", body, re.M):
            flow_id, version, n_nodes = m.group(2), m.group(3), int(m.group(4))
            sources = [b for lng, b, _ in BLOCKS[:i] if lng == "yaml"
                       and isinstance(load_yaml(b).data, dict) and load_yaml(b).data.get("id") == flow_id]
            assert sources, f"docs/flows.md:{line}: no example of flow {flow_id} before this output"
            source = sources[-1]
            assert hashlib.sha256(source.encode()).hexdigest()[:16] == version, (
                f"docs/flows.md:{line}: version of {flow_id} is not the hash of its example")
            assert len(load_yaml(source).data["nodes"]) == n_nodes


# ----------------------------------------------------------- coverage of code
def _section(heading: re.Pattern[str]) -> str:
    """Text from the first heading matching ``heading`` to the next heading of the same or a higher level."""
    lines = TEXT.splitlines()
    in_fence = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not heading.match(line):
            continue
        level = len(line) - len(line.lstrip("#"))
        out = [line]
        fence = False
        for nxt in lines[i + 1:]:
            if nxt.startswith("```"):
                fence = not fence
            if not fence and nxt.startswith("#"):
                nlevel = len(nxt) - len(nxt.lstrip("#"))
                if nxt[nlevel:nlevel + 1] == " " and nlevel <= level:
                    break
            out.append(nxt)
        return "\n".join(out)
    pytest.fail(f"docs/flows.md has no heading matching {heading.pattern!r}")


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _nested_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    """Models used inside ``model``'s fields (choices, cases ...), recursively."""
    found: list[type[BaseModel]] = []

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp not in found:
                found.append(tp)
                for f in tp.model_fields.values():
                    walk(f.annotation)
            return
        for arg in typing.get_args(tp):
            walk(arg)

    for f in model.model_fields.values():
        walk(f.annotation)
    return found


def _mentioned(section: str, name: str) -> bool:
    return f"`{name}`" in section


def _row(section: str, name: str) -> bool:
    """``name`` has its own row in a fields table of ``section``."""
    return re.search(rf"^\| `{re.escape(name)}` \|", section, re.M) is not None


COMMON = re.compile(r"^### Fields every node has")
FORM = re.compile(r"^## \d+\. Input semantics")
FORM_BASE = node_module.InputNode


def _node_section(name: str) -> str:
    return _section(re.compile(rf"^### `{re.escape(name)}`\s*$"))


@pytest.mark.parametrize("name", sorted(NODE_TYPES))
def test_every_node_type_has_its_section(name: str):
    section = _node_section(name)
    assert "```yaml" in section, f"section `{name}` has no YAML example"
    assert re.search(rf"^\s+type: {re.escape(name)}\s*$", section, re.M), f"no example of type {name} in its section"
    assert "| field | type | default | meaning |" in section or not (
        set(NODE_TYPES[name].model_fields) - set(Node.model_fields)), f"section `{name}` has no fields table"


@pytest.mark.parametrize("name", sorted(NODE_TYPES))
def test_every_node_field_is_documented(name: str):
    cls = NODE_TYPES[name]
    section = _node_section(name)
    common = _section(COMMON)
    form = _section(FORM)
    missing = []
    for fname in _field_names(cls):
        if fname in Node.model_fields:
            where, text = "Fields every node has", common
        elif issubclass(cls, FORM_BASE) and fname in FORM_BASE.model_fields:
            where, text = "Input semantics", form
            if not _mentioned(section, fname):
                missing.append(f"{fname} (not named in the `{name}` section)")
        else:
            where, text = f"`{name}`", section
        if not _row(text, fname):
            missing.append(f"{fname} (no table row in section {where})")
    for sub in _nested_models(cls):
        for fname in _field_names(sub):
            if not _row(section, fname):
                missing.append(f"{sub.__name__}.{fname} (section `{name}`)")
    assert not missing, f"node type {name}: fields not documented: {missing}"


def test_every_node_type_is_mentioned_in_the_index():
    common = _section(COMMON)
    for name in NODE_TYPES:
        assert f"[`{name}`](#" in common, f"node type {name} is missing from the list of node types"


def test_top_level_settings_and_prompt_fields_are_documented():
    layout = _section(re.compile(r"^## \d+\. File layout"))
    settings = _section(re.compile(r"^### Settings"))
    prompts = _section(re.compile(r"^## \d+\. Prompts and languages"))
    missing = [f"top level: {f}" for f in _field_names(FlowDoc) if not _row(layout, f)]
    missing += [f"settings: {f}" for f in _field_names(Settings) if not _row(settings, f)]
    missing += [f"prompts: {f}" for f in _field_names(PromptDef) if not _row(prompts, f)]
    assert not missing, missing


def test_sections_named_in_the_brief_exist():
    for heading in ("A two-minute tour", "File layout and top-level fields", "Prompts and languages",
                    "Templates, expressions and filters", "Input semantics", "Node reference", "Global keys",
                    "Masking and privacy", "The handoff summary", "Validation errors",
                    "Testing a flow with `ivr call`", "Versioning and hot reload"):
        _section(re.compile(rf"^## \d+\. {re.escape(heading)}"))


# ------------------------------------------------------------ filter outputs
FILTER_ROW = re.compile(r"^\| `(\{\{.*?\}\})` \| `(.*?)` \| `(.*?)` \|$", re.M)


def test_filter_table_shows_real_outputs():
    from ivr.flow import expr

    rows = FILTER_ROW.findall(_section(re.compile(r"^### Filters that speak")))
    assert len(rows) >= 5
    for template, zh, en in rows:
        template = template.replace("\\|", "|")
        assert expr.render(template, {"lang": "zh-CN"}) == zh, template
        assert expr.render(template, {"lang": "en-US"}) == en, template
