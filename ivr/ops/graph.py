"""Pictures of flows (Graphviz), plain or painted with traffic.

:func:`flow_edges` lists every way out of every node as the engine can take
it: ``next``, menu choices (key and label), ``noinput`` / ``nomatch`` /
``failure`` exits (also the flow-wide default failure exit that input nodes
fall back to), look-up status codes, branch conditions, opening hours,
transfer outcomes, and the flow-level keys. Parallel edges between the same
two nodes are merged into one edge with all their labels.

:func:`flow_graph` turns that into a ``graphviz.Digraph``: one shape and
colour per node type, transfers and hang-ups marked. Given :class:`GraphStats`
(from :mod:`ivr.ops.analytics`) each node is filled by its drop-off rate
(callers who hung up there), each edge's width follows its traffic, and the
worst node gets a thick red frame: the picture on the ``/ops`` dashboard.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import graphviz

from ivr.flow.model import Flow, Node

__all__ = [
    "END_FAILED",
    "GLOBAL",
    "Edge",
    "GraphStats",
    "drop_colour",
    "flow_edges",
    "flow_graph",
    "render",
    "render_async",
]

FONT = "Noto Sans CJK SC,Noto Sans,DejaVu Sans,sans-serif"

#: Pseudo node: the session ends as ``failed`` (tries exhausted, no failure exit).
END_FAILED = "__end_failed"
#: Pseudo node: the flow-level keys, which work at every input node.
GLOBAL = "__global_keys"

# type -> (shape, fill colour, extra style)
TYPE_STYLE: dict[str, tuple[str, str, str]] = {
    "say": ("box", "#E3F2FD", "rounded"),
    "menu": ("hexagon", "#FFF3E0", ""),
    "language": ("hexagon", "#FFF8E1", ""),
    "input": ("parallelogram", "#F3E5F5", ""),
    "ask": ("parallelogram", "#EDE7F6", ""),
    "lookup": ("cylinder", "#E0F2F1", ""),
    "set": ("box", "#F5F5F5", ""),
    "branch": ("diamond", "#F5F5F5", ""),
    "hours": ("octagon", "#FFFDE7", ""),
    "transfer": ("doubleoctagon", "#FFCCBC", "bold"),
    "callback": ("doubleoctagon", "#FFE0B2", "bold"),
    "hangup": ("box", "#CFD8DC", "rounded,bold"),
    "goto": ("cds", "#F5F5F5", ""),
    "subflow": ("box3d", "#E8EAF6", ""),
    "return": ("invhouse", "#E8EAF6", ""),
    "offer_visual": ("tab", "#E1F5FE", ""),
    "record": ("folder", "#FCE4EC", ""),
    "survey": ("note", "#F1F8E9", ""),
}
DEFAULT_STYLE = ("box", "#FFFFFF", "")
# Markers in the first line of a node's label, so a printed page says it too.
TYPE_MARK = {"transfer": "☎ ", "callback": "☎ ", "hangup": "■ "}

# edge kind -> (style, colour)
EDGE_STYLE: dict[str, tuple[str, str]] = {
    "next": ("solid", "#455A64"),
    "choice": ("solid", "#1565C0"),
    "case": ("solid", "#455A64"),
    "status": ("solid", "#6D4C41"),
    "noinput": ("dashed", "#8E24AA"),
    "nomatch": ("dashed", "#F57C00"),
    "failure": ("dashed", "#C62828"),
    "global": ("dotted", "#5D4037"),
    "observed": ("dotted", "#9E9E9E"),
}
_RANK = ["choice", "next", "case", "status", "nomatch", "noinput", "failure", "global", "observed"]


@dataclass
class Edge:
    src: str
    dst: str
    labels: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The most ordinary of the merged kinds (a choice edge that is also a failure exit is drawn solid)."""
        return min(self.kinds, key=lambda k: _RANK.index(k) if k in _RANK else len(_RANK)) if self.kinds else "next"

    @property
    def label(self) -> str:
        return " / ".join(dict.fromkeys(lbl for lbl in self.labels if lbl))


@dataclass
class GraphStats:
    """Traffic painted on a graph.

    ``nodes``: node id -> figures with at least ``entered`` and ``hung_up``.
    ``edges``: (from node, to node) -> how many times callers went that way.
    """

    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    edges: Mapping[tuple[str, str], int] = field(default_factory=dict)
    worst: str | None = None


def _short(text: str, limit: int = 28) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _edge_label(flow: Flow, node: Node, path: str, lang: str) -> tuple[str, str]:
    """(kind, label) of the exit at field ``path`` of ``node``."""
    parts = path.split(".")
    if parts[0] == "choices" and len(parts) == 3:
        choice = node.choices[int(parts[1])]  # type: ignore[attr-defined]
        label = flow.text(getattr(choice, "label", None), lang)
        return "choice", f"{choice.key} {_short(label, 18)}".strip()
    if parts[0] == "cases" and len(parts) == 3:
        return "case", "if " + _short(node.cases[int(parts[1])].when, 26)  # type: ignore[attr-defined]
    if parts[0] == "on_status":
        return "status", f"HTTP {parts[1]}"
    if path == "else":
        return "case", "else"
    if path in ("noinput", "nomatch"):
        return path, "no input" if path == "noinput" else "no match"
    if path == "failure":
        if node.type == "transfer":
            return "failure", "no answer"
        return "failure", "failure"
    if path in ("open", "closed"):
        return "case", path
    if path == "next":
        if node.type == "transfer":
            return "next", "after the agent"
        if node.type == "language":
            keys = [f"{c.key} {c.label if isinstance(c.label, str) else flow.text(c.label, lang) or c.language}"
                    for c in node.choices]  # type: ignore[attr-defined]
            return "choice", _short(" · ".join(keys), 30)
        return "next", ""
    if path == "target":
        return "next", ""
    return "next", path.replace("_", " ")


def flow_edges(flow: Flow, lang: str | None = None) -> list[Edge]:
    """Every exit of every node, parallel exits merged (see the module doc)."""
    lang = lang or flow.default_language
    merged: dict[tuple[str, str], Edge] = {}

    def add(src: str, dst: str, kind: str, label: str) -> None:
        edge = merged.setdefault((src, dst), Edge(src, dst))
        edge.kinds.append(kind)
        edge.labels.append(label)

    for node_id, node in flow.nodes.items():
        fields = set()
        for path, target in node.targets():
            fields.add(path)
            kind, label = _edge_label(flow, node, path, lang)
            add(node_id, target, kind, label)
        # input nodes without a failure exit of their own use the flow's
        # default, or end the session as failed (language nodes keep going)
        if node.waits_for_input and hasattr(node, "tries") and "failure" not in fields and node.type != "language":
            target = flow.settings.failure or END_FAILED
            add(node_id, target, "failure", "failure" if flow.settings.failure is None else "failure (default)")
    for key, target in sorted(flow.settings.global_keys.items()):
        if target in flow.nodes:
            add(GLOBAL, target, "global", f"key {key}")
            # where an input node already has an exit to that node, say that the
            # key goes there too (its traffic is counted on the same edge)
            for node_id, node in flow.nodes.items():
                active = getattr(node, "global_keys", False)
                if (node_id, target) in merged and node.waits_for_input and (
                        active is True or (isinstance(active, list) and key in active)):
                    if not any(getattr(c, "key", None) == key for c in getattr(node, "choices", []) or []):
                        merged[(node_id, target)].labels.append(f"key {key}")
    return list(merged.values())


def drop_colour(rate: float) -> str:
    """Fill for a drop-off rate: white at 0, yellow near 10 %, red from 25 % up."""
    t = max(0.0, min(1.0, rate / 0.25))
    # white (255,255,255) -> amber (255,213,79) -> red (229,57,53)
    if t < 0.5:
        u = t / 0.5
        rgb = (255, 255 - (255 - 213) * u, 255 - (255 - 79) * u)
    else:
        u = (t - 0.5) / 0.5
        rgb = (255 - (255 - 229) * u, 213 - (213 - 57) * u, 79 - (79 - 53) * u)
    return "#%02X%02X%02X" % tuple(round(c) for c in rgb)


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%" if value >= 0.095 or value == 0 else f"{value * 100:.1f}%"


def flow_graph(flow: Flow, *, stats: GraphStats | None = None, lang: str | None = None,
               rankdir: str = "TB") -> graphviz.Digraph:
    """The flow as a Graphviz digraph (see the module doc)."""
    lang = lang or flow.default_language
    g = graphviz.Digraph(flow.id, format="svg")
    g.attr("graph", rankdir=rankdir, fontname=FONT, fontsize="12", nodesep="0.35", ranksep="0.45",
           label=f"{flow.text(flow.title, lang) or flow.id}  ({flow.id} {flow.version})", labelloc="t",
           bgcolor="white")
    g.attr("node", fontname=FONT, fontsize="11", style="filled", margin="0.12,0.06")
    g.attr("edge", fontname=FONT, fontsize="9", arrowsize="0.7")

    edges = flow_edges(flow, lang)
    node_stats = stats.nodes if stats else {}
    for node_id, node in flow.nodes.items():
        shape, fill, extra = TYPE_STYLE.get(node.type, DEFAULT_STYLE)
        title = flow.text(node.label, lang) if node.label else node_id
        lines = [f"{TYPE_MARK.get(node.type, '')}{_short(title, 24)}",
                 f"{node_id} · {node.type}" if title != node_id else node.type]
        if node.type == "transfer":
            target = getattr(node, "queue", None) or getattr(node, "extension", None)
            if target:
                lines.append(f"→ {_short(str(target), 30)}")
        if node.type == "hangup":
            lines.append(f"end: {getattr(node, 'outcome', 'completed')}")
        attrs: dict[str, str] = {"shape": shape, "fillcolor": fill, "id": f"node-{node_id}"}
        if node.type in ("hangup", "transfer", "callback"):
            attrs["peripheries"] = "2"
        styles = ["filled"] + ([extra] if extra else [])
        color, penwidth = "#37474F", "1"
        if stats is not None:
            figures = node_stats.get(node_id) or {}
            entered = int(figures.get("entered") or 0)
            hung = int(figures.get("hung_up") or 0)
            rate = hung / entered if entered else 0.0
            attrs["fillcolor"] = drop_colour(rate) if entered else "#EEEEEE"
            lines.append(f"in {entered} · hung up {hung} ({_pct(rate)})" if entered else "not reached")
            attrs["tooltip"] = f"{node_id}: entered {entered}, hung up here {hung} ({_pct(rate)})"
            if stats.worst == node_id:
                color, penwidth = "#B71C1C", "4"
                lines[0] = "▲ " + lines[0]
        attrs.update(style=",".join(styles), color=color, penwidth=penwidth)
        g.node(node_id, "\n".join(lines), **attrs)

    targets = {e.dst for e in edges} | {e.src for e in edges}
    if END_FAILED in targets:
        g.node(END_FAILED, "✕ failed\n(tries used up)", shape="doublecircle", fillcolor="#FFCDD2",
               style="filled", color="#B71C1C", fontsize="9", id="node-end-failed")
    if GLOBAL in targets:
        keys = ", ".join(f"{k}: {v}" for k, v in sorted(flow.settings.global_keys.items()))
        g.node(GLOBAL, f"keys at any input\n{keys}", shape="note", fillcolor="#EFEBE9", style="filled",
               fontsize="9", id="node-global-keys")

    traffic = dict(stats.edges) if stats else {}
    top = max(traffic.values(), default=0)
    drawn = set()
    for edge in edges:
        style, colour = EDGE_STYLE.get(edge.kind, EDGE_STYLE["next"])
        attrs = {"style": style, "color": colour, "fontcolor": colour}
        label = edge.label
        if stats is not None and edge.src != GLOBAL:
            count = traffic.get((edge.src, edge.dst), 0)
            attrs["penwidth"] = f"{1 + 9 * math.sqrt(count / top):.2f}" if top and count else "0.8"
            label = f"{label} ({count})" if label else f"({count})"
            attrs["tooltip"] = f"{edge.src} → {edge.dst}: {count}"
        drawn.add((edge.src, edge.dst))
        g.edge(edge.src, edge.dst, label=label, **attrs)
    # Ways callers actually went that no exit field names: flow-level keys
    # (key 0 to a person, # back) and subflow returns.
    if stats is not None:
        for (src, dst), count in sorted(traffic.items()):
            if (src, dst) in drawn or src not in flow.nodes or dst not in flow.nodes or not count:
                continue
            style, colour = EDGE_STYLE["observed"]
            g.edge(src, dst, label=f"key/back ({count})", style=style, color=colour, fontcolor=colour,
                   penwidth=f"{1 + 9 * math.sqrt(count / top):.2f}", constraint="false",
                   tooltip=f"{src} → {dst}: {count} (flow-level key or back)")
    return g


def render(flow: Flow, fmt: str = "svg", *, stats: GraphStats | None = None, lang: str | None = None) -> bytes:
    """Run ``dot`` on the flow's graph; ``fmt`` is any Graphviz output format (svg, png, pdf, dot)."""
    graph = flow_graph(flow, stats=stats, lang=lang)
    if fmt in ("dot", "gv"):
        return graph.source.encode("utf-8")
    return graph.pipe(format=fmt)


async def render_async(flow: Flow, fmt: str = "svg", *, stats: GraphStats | None = None,
                       lang: str | None = None) -> bytes:
    """:func:`render` in a worker thread (``dot`` takes tens of milliseconds)."""
    return await asyncio.to_thread(render, flow, fmt, stats=stats, lang=lang)


def inline_svg(svg: bytes) -> str:
    """An SVG document from ``dot`` as an element to place in an HTML page.

    Graphviz escapes every label, so the markup is safe to embed; the XML
    prolog and DOCTYPE are dropped, and the fixed size is replaced by a
    viewBox-driven one that fits the page.
    """
    text = svg.decode("utf-8")
    start = text.find("<svg")
    if start < 0:
        raise ValueError("not an SVG document")
    text = text[start:]
    head_end = text.find(">")
    head = text[:head_end]
    import re

    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    return head + ' class="flow-graph" preserveAspectRatio="xMidYMin meet"' + text[head_end:]
