"""Caller scripts that walk every edge of a flow.

:func:`explore` enumerates *edge-coverage* paths through a loaded flow: caller
input scripts (keys, silence) that together take every edge of the flow graph
the caller can steer, instead of every combination. It drives real calls
through a ``run`` callable the caller supplies (a FastAGI call against a
running server, say) and reads what happened from the call's trail:

* a script's call ends when the flow ends it, or when the script runs out and
  the caller hangs up at the next question (as ``ivr call --keys`` does); the
  trail's ``hangup`` event names the node that asked, and the candidate
  answers for that node (:func:`candidates`) extend the script;
* a script is kept, and extended, only when its trail took an edge no earlier
  script of the same start took (breadth first, so kept scripts are short);
  a script whose last answer is one of the given ``samples`` (an account
  number that exists, one that does not ...) is extended even so, once per
  node that then asks and set of samples given so far, since a sample changes
  what happens further on;
* scripts that are a prefix of another kept script of the same start are
  dropped from the result: the longer one plays the same commands first.

Edges are ``(node, next node)`` pairs from the trail's ``node_enter`` events,
plus ``(node, "@noinput")``, ``(node, "@nomatch")``, ``(node, "@failure")``
for re-prompts and exhausted tries, and ``(node, "@end:<outcome>")`` where the
flow ended. :func:`static_edges` lists the edges the flow file declares, so a
report can say how many of them the paths took; edges the caller cannot steer
(a look-up that fails only when the back end is down, office hours against a
fixed clock) stay uncovered and are listed in :attr:`Exploration.uncovered`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ivr.flow.model import Flow
from ivr.testing.fake_asterisk import SILENCE, Input

__all__ = ["CallPath", "Edge", "Exploration", "candidates", "explore", "static_edges", "trail_edges"]

Edge = tuple[str, str]
T = TypeVar("T")

#: Keys tried, in order, as the wrong answer to a menu.
_WRONG_KEYS = "7460539128*"


@dataclass(frozen=True)
class CallPath(Generic[T]):
    """One kept script: where it starts, what the caller does, what it covered.

    ``result`` is what ``run`` returned for the whole call (a fake's record,
    the trail ...), so a test can reuse the whole run.
    """

    start: str
    inputs: tuple[Input, ...]
    edges: frozenset[Edge]
    result: T = field(compare=False, repr=False)


@dataclass
class Exploration(Generic[T]):
    paths: list[CallPath[T]]
    #: every edge some run took
    covered: set[Edge]
    #: edges the flow declares (:func:`static_edges`)
    declared: set[Edge]
    #: calls placed while exploring
    runs: int

    @property
    def uncovered(self) -> set[Edge]:
        return self.declared - self.covered


def static_edges(flow: Flow) -> set[Edge]:
    """The edges the flow file declares: every target of every node, and the
    re-prompt loops of nodes that ask (silence, a wrong answer)."""
    edges: set[Edge] = set()
    for node_id, node in flow.nodes.items():
        for _, target in node.targets():
            edges.add((node_id, target))
        if node.waits_for_input and hasattr(node, "retry"):
            edges.add((node_id, "@noinput"))
            edges.add((node_id, "@nomatch"))
    return edges


def trail_edges(events: Sequence[Mapping[str, Any]]) -> set[Edge]:
    """The edges one call's trail took (see the module docstring)."""
    edges: set[Edge] = set()
    previous: str | None = None
    for event in events:
        kind, node = event.get("kind"), event.get("node")
        if kind == "node_enter" and node:
            if previous is not None:
                edges.add((previous, node))
            previous = node
        elif kind in ("noinput", "nomatch", "failure") and node:
            edges.add((node, f"@{kind}"))
        elif kind == "session_end" and previous is not None:
            edges.add((previous, f"@end:{(event.get('data') or {}).get('outcome')}"))
    return edges


def waiting_node(events: Sequence[Mapping[str, Any]]) -> str | None:
    """The node that asked when the caller hung up (None: the flow ended the call)."""
    hangups = [e for e in events if e.get("kind") == "hangup" and (e.get("data") or {}).get("reason") == "caller"]
    return hangups[-1].get("node") if hangups else None


def candidates(flow: Flow, node_id: str, samples: Mapping[str, Sequence[Input]] | None = None) -> list[Input]:
    """The answers worth trying at ``node_id``: each choice key, the flow's
    global keys, one wrong key and silence; for digit entries the samples
    given for its variable (or a valid-length entry), one too short, silence."""
    samples = samples or {}
    node = flow.nodes[node_id]
    out: list[Input] = []
    var = getattr(node, "var", None)
    if var is not None and hasattr(node, "min_length"):
        out.extend(samples.get(var) or ["1" * node.min_length + "#"])
        if node.min_length > 1:
            out.append("1#")  # too short: a wrong answer
        out.append(SILENCE)
        return _unique(out)
    if node_id in samples:
        return _unique([*samples[node_id], SILENCE])
    choices = getattr(node, "choices", None)
    keys = [str(c.key) for c in choices or () if getattr(c, "key", None) is not None]
    if not keys:
        keys = ["1", "2", "9"]
    glob = getattr(node, "global_keys", True)
    flow_keys = list(flow.settings.global_keys)
    active = flow_keys if glob is True else [] if glob is False else [k for k in flow_keys if k in glob]
    out.extend(keys)
    out.extend(k for k in active if k not in keys)
    wrong = next((k for k in _WRONG_KEYS if k not in keys and k not in active), None)
    if wrong is not None:
        out.append(wrong)
    out.append(SILENCE)
    return _unique(out)


def _unique(items: Iterable[Input]) -> list[Input]:
    seen: list[Input] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


Runner = Callable[[str, tuple[Input, ...]], Awaitable[tuple[Sequence[Mapping[str, Any]], T]]]


async def explore(
    flow: Flow,
    run: Runner[T],
    *,
    starts: Sequence[str] | Mapping[str, int] = ("default",),
    samples: Mapping[str, Sequence[Input]] | None = None,
    max_depth: int = 14,
    max_runs: int = 400,
    concurrency: int = 20,
) -> Exploration[T]:
    """Enumerate edge-coverage paths of ``flow`` (see the module docstring).

    ``run(start, inputs)`` places one call from start variant ``start`` (a
    known caller, an unknown one ...) with the caller ``inputs`` and returns
    ``(trail events, anything)``; ``starts`` may map each start to its own
    ``max_depth`` (a variant that only matters early, like an unknown caller
    ID, need not be explored as deep as the main one). Calls of one
    breadth-first layer run ``concurrency`` at a time; at most ``max_runs``
    calls are placed and no script is longer than ``max_depth`` answers.
    """
    depth = dict(starts) if isinstance(starts, Mapping) else {start: max_depth for start in starts}
    covered: set[Edge] = set()
    by_start: dict[str, set[Edge]] = {start: set() for start in starts}
    states: set[tuple[str, str | None, frozenset[Input]]] = set()
    given = {answer for answers in (samples or {}).values() for answer in answers}
    kept: list[CallPath[T]] = []
    layer: list[tuple[str, tuple[Input, ...]]] = [(start, ()) for start in starts]
    runs = 0
    while layer and runs < max_runs:
        layer = layer[: max_runs - runs]
        results: list[tuple[Sequence[Mapping[str, Any]], T]] = []
        for i in range(0, len(layer), concurrency):
            results.extend(await asyncio.gather(*(run(s, inputs) for s, inputs in layer[i : i + concurrency])))
        runs += len(layer)
        following: list[tuple[str, tuple[Input, ...]]] = []
        for (start, inputs), (events, payload) in zip(layer, results):
            edges = trail_edges(events)
            fresh = not inputs or not edges <= by_start[start]
            asking = waiting_node(events)
            state = (start, asking, frozenset(a for a in inputs if a in given))
            if not fresh and (inputs[-1] not in given or state in states):
                continue
            states.add(state)
            covered |= edges
            by_start[start] |= edges
            if fresh:
                kept.append(CallPath(start, inputs, frozenset(edges), payload))
            if asking is None or asking not in flow.nodes or len(inputs) >= depth[start]:
                continue
            following.extend((start, (*inputs, answer)) for answer in candidates(flow, asking, samples))
        layer = following
    maximal = [p for p in kept
               if not any(q is not p and q.start == p.start and len(q.inputs) > len(p.inputs)
                          and q.inputs[: len(p.inputs)] == p.inputs for q in kept)]
    return Exploration(maximal, covered, static_edges(flow), runs)
