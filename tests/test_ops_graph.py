"""``ivr graph``: the demo flow drawn by Graphviz, every node and exit present."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ivr.flow.loader import load_flow
from ivr.ops.graph import END_FAILED, GLOBAL, GraphStats, drop_colour, flow_edges, flow_graph, render

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "flows" / "demo_hotline.yaml"
SVG = "{http://www.w3.org/2000/svg}"


def _ivr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ivr.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=60)


def _svg_parts(path: Path) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """(node id -> its label text, (from, to) -> edge label text) of a dot SVG."""
    root = ET.parse(path).getroot()
    nodes, edges = {}, {}
    for g in root.iter(f"{SVG}g"):
        title = g.find(f"{SVG}title")
        text = " ".join(t.text or "" for t in g.iter(f"{SVG}text"))
        if g.get("class") == "node":
            nodes[title.text] = text
        elif g.get("class") == "edge":
            src, dst = title.text.split("->")
            edges[(src, dst)] = text
    return nodes, edges


def test_cli_draws_every_node_and_exit(tmp_path: Path) -> None:
    out = tmp_path / "flow.svg"
    result = _ivr("graph", str(DEMO), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "demo_hotline" in result.stdout and out.stat().st_size > 10_000
    flow = load_flow(DEMO)
    nodes, edges = _svg_parts(out)
    assert set(flow.nodes) <= set(nodes)
    assert GLOBAL in nodes and "0: agent" in nodes[GLOBAL]
    # every exit field of every node is an edge
    for node_id, node in flow.nodes.items():
        for _, target in node.targets():
            assert (node_id, target) in edges, (node_id, target)
    # choices carry key and label; no input / no match / failure exits are drawn
    assert "1 余额和账单" in edges[("main", "billing")]
    assert "3 停电停网信息" in edges[("main", "outages")]
    assert "no input" in edges[("anything_else", "goodbye")]
    assert "failure (default)" in edges[("ask_id", "agent")] and "key 0" in edges[("ask_id", "agent")]
    assert "failure" in edges[("balance", "backend_down")]
    assert "HTTP 404" in edges[("verify", "account_not_found")]
    assert "open" in edges[("agent", "to_agent")] and "closed" in edges[("agent", "closed")]
    # transfers and hang-ups are marked
    assert nodes["to_agent"].startswith("☎") and "support" in nodes["to_agent"]
    assert nodes["goodbye"].startswith("■") and "end: completed" in nodes["goodbye"]


def test_shapes_styles_and_failed_end() -> None:
    flow = load_flow(DEMO)
    source = flow_graph(flow).source
    assert "doubleoctagon" in source and "hexagon" in source and "cylinder" in source and "parallelogram" in source
    kinds = {(e.src, e.dst): e.kind for e in flow_edges(flow)}
    assert kinds[("main", "billing")] == "choice" and kinds[("ask_id", "agent")] == "failure"
    assert kinds[(GLOBAL, "agent")] == "global"


def test_input_without_failure_exit_ends_failed(tmp_path: Path) -> None:
    text = DEMO.read_text(encoding="utf-8").replace("  failure: agent\n", "", 1)
    path = tmp_path / "demo_hotline.yaml"
    path.write_text(text, encoding="utf-8")
    flow = load_flow(path)
    edges = {(e.src, e.dst) for e in flow_edges(flow)}
    assert ("ask_id", END_FAILED) in edges and ("ask_id", "agent") not in edges
    assert ("language", END_FAILED) not in edges  # a language menu keeps the current language instead


def test_stats_paint_drop_off_and_traffic() -> None:
    flow = load_flow(DEMO)
    stats = GraphStats(nodes={"main": {"entered": 100, "hung_up": 5}, "ask_id": {"entered": 40, "hung_up": 20}},
                       edges={("main", "billing"): 60, ("main", "outages"): 6, ("main", "welcome"): 3},
                       worst="ask_id")
    source = flow_graph(flow, stats=stats).source
    assert drop_colour(0.5) == "#E53935" and drop_colour(0) == "#FFFFFF"
    ask_id = re.search(r"\n\s*ask_id \[(.*?)\]\n", source, re.S).group(1)
    assert 'fillcolor="#E53935"' in ask_id and "penwidth=4" in ask_id and "▲" in ask_id
    widths = {}
    for pair in (("main", "billing"), ("main", "outages")):
        attrs = re.search(rf"\n\s*{pair[0]} -> {pair[1]} \[(.*?)\]\n", source, re.S).group(1)
        widths[pair] = float(re.search(r'penwidth="?([0-9.]+)', attrs).group(1))
    assert widths[("main", "billing")] == 10.0 and widths[("main", "billing")] > widths[("main", "outages")] > 1
    # a way callers went that no exit names (a flow-level key) is drawn dotted
    assert "main -> welcome" in source and "key/back (3)" in source


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".dot", b"digraph")])
def test_other_formats(tmp_path: Path, suffix: str, magic: bytes) -> None:
    out = tmp_path / f"flow{suffix}"
    result = _ivr("graph", "demo_hotline", "--flows", str(ROOT / "flows"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(magic)


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    result = _ivr("graph", "no_such_flow", "-o", str(tmp_path / "x.svg"))
    assert result.returncode != 0 and "no flow file" in result.stderr and "Traceback" not in result.stderr
    result = _ivr("graph", str(DEMO), "-o", str(tmp_path / "x.gif"))
    assert result.returncode == 2 and "cannot write .gif" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nstart: nowhere\nnodes: {}\n", encoding="utf-8")
    result = _ivr("graph", str(bad), "-o", str(tmp_path / "bad.svg"))
    assert result.returncode != 0 and "not a valid flow" in result.stderr and "Traceback" not in result.stderr


def test_render_in_english() -> None:
    svg = render(load_flow(DEMO), "svg", lang="en-US").decode()
    assert "Balance and bills" in svg and "余额和账单" not in svg
