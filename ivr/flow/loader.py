"""Load a flow file into a validated :class:`Flow`, reporting every problem.

Each problem is reported as ``path:line:col: node 'id': message`` so a flow
designer can jump straight to it. Loading never stops at the first problem.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import ivr.flow.nodes  # noqa: F401  (registers the built-in node types)
import ivr.flow.speech_nodes  # noqa: F401  (registers ask and record)
from ivr.flow import expr
from ivr.flow.model import ID_RE, LANG_RE, NODE_TYPES, Flow, Node, PromptDef, Settings, Text
from ivr.flow.yamlsrc import Pos, Source, YamlError, read_file
from ivr.flow.yamlsrc import load as load_yaml

SPECIAL_TARGETS = {"repeat", "back"}


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    col: int
    message: str
    node: str | None = None
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = f"node '{self.node}': " if self.node else ""
        sev = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}:{self.col}: {sev}{where}{self.message}"


class FlowLoadError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid flow")


class FlowDoc(BaseModel):
    """Top level of a flow file (nodes are checked one by one afterwards)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_RE)
    title: Text
    languages: list[str] = Field(min_length=1)
    default_language: str | None = None
    settings: Settings = Field(default_factory=Settings)
    prompts: dict[str, PromptDef] = Field(default_factory=dict)
    start: str
    nodes: dict[str, dict[str, Any]] = Field(min_length=1)


def _fmt_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_message(err: dict[str, Any]) -> tuple[str, bool]:
    """(message, points_at_key)."""
    kind = err["type"]
    loc = err["loc"]
    name = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        return f"unknown field '{name}'", True
    if kind == "missing":
        return f"missing field '{_fmt_loc(loc)}'", False
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = f"'{_fmt_loc(loc)}': " if loc else ""
    if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        return f"{where}{msg} (got {err['input']!r})", False
    return f"{where}{msg}", False


class _Collector:
    def __init__(self, path: str, src: Source | None):
        self.path = path
        self.src = src
        self.problems: list[Problem] = []

    def add(self, loc: tuple[Any, ...], message: str, *, node: str | None = None, key: bool = False,
            severity: str = "error") -> None:
        pos = self.src.pos(loc, key=key) if self.src else Pos(1, 1)
        self.problems.append(Problem(self.path, pos.line, pos.col, message, node, severity))

    def add_validation(self, base: tuple[Any, ...], exc: ValidationError, node: str | None = None) -> None:
        for err in exc.errors():
            loc = tuple(err["loc"])
            # pydantic puts union member names into loc (e.g. 'str', 'list[str]'): drop them
            loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool"))))
            message, at_key = _pydantic_message({**err, "loc": loc})
            self.add(base + loc, message, node=node, key=at_key)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def load_flow(path: str | os.PathLike[str], *, known_flows: Callable[[str], bool] | None = None) -> Flow:
    """Load and validate ``path``; raise :class:`FlowLoadError` listing every problem."""
    try:
        data = read_file(path)
    except OSError as exc:
        raise FlowLoadError([Problem(str(path), 1, 1, f"cannot read file: {exc.strerror}")]) from None
    except YamlError as exc:
        raise FlowLoadError([Problem(str(path), exc.pos.line, exc.pos.col, exc.message)]) from None
    return load_flow_text(data, str(path), known_flows=known_flows)


def load_flow_text(data: bytes | str, path: str = "<flow>", *,
                   known_flows: Callable[[str], bool] | None = None) -> Flow:
    raw = data.encode() if isinstance(data, str) else data
    try:
        src = load_yaml(raw)
    except YamlError as exc:
        raise FlowLoadError([Problem(path, exc.pos.line, exc.pos.col, exc.message)]) from None
    col = _Collector(path, src)
    if not isinstance(src.data, dict):
        col.add((), "a flow file must be a mapping with id, title, languages, start and nodes")
        raise FlowLoadError(col.problems)

    # --- the top level, with node bodies left for later
    try:
        doc = FlowDoc.model_validate(src.data)
    except ValidationError as exc:
        col.add_validation((), exc)
        doc = None
    top = src.data
    languages = [l for l in top.get("languages", []) if isinstance(l, str)] if isinstance(top.get("languages"), list) else []
    for i, lang in enumerate(languages):
        if not LANG_RE.match(lang):
            col.add(("languages", i), f"'{lang}' is not a language tag like zh-CN or en-US")
    default_language = top.get("default_language") or (languages[0] if languages else "en-US")
    if languages and default_language not in languages:
        col.add(("default_language",), f"default language '{default_language}' is not in languages")

    # --- nodes, one by one
    node_bodies = top.get("nodes") if isinstance(top.get("nodes"), dict) else {}
    nodes: dict[str, Node] = {}
    for node_id, body in node_bodies.items():
        loc = ("nodes", node_id)
        if not isinstance(body, dict):
            col.add(loc, "a node must be a mapping with a 'type'", node=node_id)
            continue
        if not re.match(ID_RE, node_id):
            col.add(loc, "node ids use letters, digits, '_', '-' and '.'", node=node_id, key=True)
        ntype = body.get("type")
        cls = NODE_TYPES.get(ntype) if isinstance(ntype, str) else None
        if cls is None:
            known = ", ".join(sorted(NODE_TYPES))
            col.add(loc + ("type",), f"unknown node type {ntype!r} (known: {known})", node=node_id)
            continue
        try:
            nodes[node_id] = cls.model_validate(body)
        except ValidationError as exc:
            col.add_validation(loc, exc, node=node_id)

    settings = doc.settings if doc else Settings()
    prompts: dict[str, PromptDef] = dict(doc.prompts) if doc else {}

    # --- prompts: every declared language, templates parse
    for pid, pdef in prompts.items():
        texts = pdef.texts()
        for lang, text in texts.items():
            if languages and lang not in languages:
                col.add(("prompts", pid, lang), f"prompt '{pid}': '{lang}' is not a declared language", key=True)
            elif not isinstance(text, str):
                col.add(("prompts", pid, lang), f"prompt '{pid}': text must be a string")
            elif (problem := expr.check_template(text)):
                col.add(("prompts", pid, lang), f"prompt '{pid}': {problem}")
        for lang in languages:
            if lang not in texts:
                col.add(("prompts", pid), f"prompt '{pid}' has no text for {lang}", key=True)

    # --- prompt references in nodes (inline prompts get ids '<node>.<field>')
    node_prompts: dict[str, dict[str, tuple[str, ...]]] = {}
    for node_id, node in nodes.items():
        fields: dict[str, tuple[str, ...]] = {}
        for fname in node.prompt_fields:
            value = getattr(node, fname, None)
            if value is None:
                continue
            if fname == "prompts":
                for i, spec in enumerate(value):
                    fields[f"prompts.{i}"] = _prompt_refs(col, prompts, languages, node_id, (fname, i), spec)
            else:
                fields[fname] = _prompt_refs(col, prompts, languages, node_id, (fname,), value)
        node_prompts[node_id] = fields
    for sname in ("noinput_prompt", "nomatch_prompt", "confirm_prompt", "keypad_prompt"):
        pid = getattr(settings, sname)
        if pid and pid not in prompts:
            col.add(("settings", sname), f"unknown prompt '{pid}'")

    # --- targets, templates, expressions
    start = top.get("start")
    if isinstance(start, str) and nodes is not None and start not in node_bodies:
        col.add(("start",), f"start node '{start}' does not exist")
    for node_id, node in nodes.items():
        for fpath, target in node.targets():
            if target not in node_bodies:
                col.add(("nodes", node_id, *_split(fpath)), f"'{fpath}' goes to '{target}', which does not exist",
                        node=node_id)
        for fpath, text in node.templates():
            if (problem := expr.check_template(text)):
                col.add(("nodes", node_id, *_split(fpath)), problem, node=node_id)
        for fpath, expression in node.expressions():
            if (problem := expr.check_expression(expression)):
                col.add(("nodes", node_id, *_split(fpath)), problem, node=node_id)
        if node.type == "language":
            for i, choice in enumerate(node.choices):  # type: ignore[attr-defined]
                if languages and choice.language not in languages:
                    col.add(("nodes", node_id, "choices", i, "language"),
                            f"'{choice.language}' is not one of the flow's languages", node=node_id)
        if known_flows is not None and node.type == "subflow" and not known_flows(node.flow):  # type: ignore[attr-defined]
            col.add(("nodes", node_id, "flow"), f"subflow '{node.flow}' is not a known flow", node=node_id)  # type: ignore[attr-defined]
        if node.waits_for_input and node.type != "transfer":
            if not (getattr(node, "failure", None) or settings.failure) and node.type != "language":
                col.add(("nodes", node_id), "no failure exit and no settings.failure: the call ends as 'failed' "
                        "when tries run out", node=node_id, severity="warning")
    for key, target in settings.global_keys.items():
        if target not in SPECIAL_TARGETS and target not in node_bodies:
            col.add(("settings", "global_keys", key), f"global key '{key}' goes to '{target}', which does not exist")
    if settings.failure and settings.failure not in node_bodies:
        col.add(("settings", "failure"), f"failure node '{settings.failure}' does not exist")

    # --- graph checks (reachability only when every node loaded: a broken
    # node's exits are unknown)
    _check_cycles(col, nodes)
    if len(nodes) == len(node_bodies) and isinstance(start, str) and start in nodes:
        _check_reachable(col, nodes, start, settings)
    col.problems.sort(key=lambda p: (p.line, p.col))

    if col.errors or doc is None:
        raise FlowLoadError(col.problems)

    flow = Flow(
        id=doc.id,
        title=doc.title if isinstance(doc.title, dict) else {lang: doc.title for lang in languages},
        languages=tuple(languages),
        default_language=default_language,
        settings=settings,
        prompts=prompts,
        start=doc.start,
        nodes=nodes,
        version=hashlib.sha256(raw).hexdigest()[:16],
        path=path,
        source=raw.decode("utf-8-sig", "replace"),
        warnings=[str(p) for p in col.problems if p.severity == "warning"],
        node_prompts=node_prompts,
    )
    return flow


def _split(fpath: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in fpath.split("."))


def _prompt_refs(col: _Collector, prompts: dict[str, PromptDef], languages: list[str], node_id: str,
                 loc: tuple[Any, ...], spec: Any) -> tuple[str, ...]:
    full = ("nodes", node_id) + loc
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, list):
        for i, pid in enumerate(spec):
            if pid not in prompts:
                col.add(full + ((i,) if len(spec) > 1 else ()), f"unknown prompt '{pid}'", node=node_id)
        return tuple(spec)
    # inline text per language
    pid = f"{node_id}.{'.'.join(str(p) for p in loc)}"
    for lang in languages:
        if lang not in spec:
            col.add(full, f"inline prompt has no text for {lang}", node=node_id)
    for lang, text in spec.items():
        if languages and lang not in languages:
            col.add(full + (lang,), f"'{lang}' is not a declared language", node=node_id, key=True)
        elif (problem := expr.check_template(text)):
            col.add(full + (lang,), problem, node=node_id)
    prompts[pid] = PromptDef.model_validate(spec)
    return (pid,)


def _check_cycles(col: _Collector, nodes: dict[str, Node]) -> None:
    """A cycle made only of nodes that never wait for input would spin forever."""
    graph = {
        nid: [t for _, t in node.targets() if t in nodes and not nodes[t].waits_for_input]
        for nid, node in nodes.items()
        if not node.waits_for_input
    }
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    path = " -> ".join(cycle + [m])
                    col.add(("nodes", m), f"cycle that never waits for input: {path}", node=m)
            elif state.get(m) is None:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in graph:
        if state.get(n) is None:
            visit(n, [])


def _check_reachable(col: _Collector, nodes: dict[str, Node], start: str, settings: Settings) -> None:
    roots = [start] + [t for t in settings.global_keys.values() if t in nodes]
    if settings.failure in nodes:
        roots.append(settings.failure)  # type: ignore[arg-type]
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(t for _, t in nodes[n].targets() if t in nodes)
    for nid in nodes:
        if nid not in seen:
            col.add(("nodes", nid), "unreachable from the start node", node=nid, key=True, severity="warning")
