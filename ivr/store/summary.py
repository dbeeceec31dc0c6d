"""What a person reads in three seconds when a call reaches them.

:func:`build_summary` turns a session's trail into one short line such as
``Verified account ****3321 · checked balance (-35.20) · tried to pay, card
declined · asked for a person``. :func:`handoff` packs it with the rest of the
screen pop. Both are pure functions of the trail; the store calls them when a
session ends, the agent desk when a call is connected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

__all__ = ["MAX_SUMMARY", "SEPARATOR", "build_summary", "handoff", "person_reason"]

#: Longest summary, in characters.
MAX_SUMMARY = 200
SEPARATOR = " · "
ELLIPSIS = "…"
ASKED_FOR_PERSON = "asked for a person"

# The words the summary adds itself, in the agents' language (the engine puts
# the flow's ``agent_language`` on ``session_start``); English otherwise.
PHRASES = {
    "en": {"asked": ASKED_FOR_PERSON, "lookup_failed": "look-up {name} failed",
           "noinput": "{n} no-input", "nomatch": "{n} no-match"},
    "zh": {"asked": "客户要求人工服务", "lookup_failed": "{name}查询失败",
           "noinput": "{n}次无输入", "nomatch": "{n}次输入有误"},
}


def _phrases(trail: list[Mapping[str, Any]]) -> dict[str, str]:
    for event in trail:
        if event.get("kind") == "session_start":
            lang = str(_data(event).get("agent_lang") or "")
            return PHRASES.get(lang.split("-")[0].lower(), PHRASES["en"])
    return PHRASES["en"]


def _as_dict(event: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    """Accept stored event dicts as well as engine ``Event`` objects."""
    if isinstance(event, Mapping):
        return event
    to_dict = getattr(event, "to_dict", None)
    if callable(to_dict):
        return cast(Mapping[str, Any], to_dict())
    raise TypeError(f"not an event: {event!r}")


def _data(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("data")
    return data if isinstance(data, Mapping) else {}


def _text(value: Any) -> str:
    """One clean line of text (whitespace and newlines folded)."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _unique(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = item.casefold()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def person_reason(events: Iterable[Mapping[str, Any] | Any]) -> str | None:
    """Why the caller came to a person, if they did.

    The last ``transfer`` event with a ``reason`` wins; otherwise a global key
    meaning ``agent`` gives "asked for a person".
    """
    trail = [_as_dict(e) for e in events]
    reason: str | None = None
    asked = False
    for raw in trail:
        event = _as_dict(raw)
        kind = event.get("kind")
        data = _data(event)
        if kind == "transfer" and _text(data.get("reason")):
            reason = _text(data.get("reason"))
        elif kind == "global_key" and data.get("meaning") == "agent":
            asked = True
    if reason:
        return reason
    return _phrases(trail)["asked"] if asked else None


def _fit(parts: list[str], limit: int) -> str:
    """Join ``parts``; when too long, drop parts from the middle, then characters.

    The first part (what the caller did first, often who they are) and the last
    parts (what went wrong, why they want a person) are the ones worth keeping.
    """
    text = SEPARATOR.join(parts)
    if len(text) <= limit:
        return text
    kept = list(parts)
    while len(kept) > 2:
        # Always removing the middle element keeps the removed ones contiguous:
        # each removal is next to the previous gap, and the gap is where it was.
        gap = len(kept) // 2
        del kept[gap]
        text = SEPARATOR.join([*kept[:gap], ELLIPSIS, *kept[gap:]])
        if len(text) <= limit:
            return text
    # Still too long (one or two very long parts): cut characters from the middle.
    tail = (limit - len(ELLIPSIS)) // 2
    head = limit - len(ELLIPSIS) - tail
    return text[:head].rstrip() + ELLIPSIS + text[len(text) - tail :].lstrip()


def build_summary(events: Iterable[Mapping[str, Any] | Any], *, limit: int = MAX_SUMMARY) -> str:
    """One or two lines summing up a trail for a person.

    Rules, in this order:

    1. the ``summary`` fragments the flow designer wrote (``data["text"]``), in
       order, without repeats; when there are none, the labels of the menu
       choices the caller made (``choice`` events, ``data["label"]``);
    2. each failed look-up: ``look-up <name> failed``;
    3. ``N no-input / N no-match`` (each only when above zero);
    4. the reason for the person, if any (see :func:`person_reason`).

    Longer than ``limit`` characters, the middle is replaced by ``…``.
    """
    trail = [_as_dict(e) for e in events]
    words = _phrases(trail)
    fragments: list[str] = []
    labels: list[str] = []
    failures: list[str] = []
    noinput = nomatch = 0
    for event in trail:
        kind = event.get("kind")
        data = _data(event)
        if kind == "summary":
            fragments.append(_text(data.get("text")))
        elif kind == "choice":
            labels.append(_text(data.get("label")))
        elif kind == "lookup" and data.get("ok") is False:
            name = _text(data.get("name")) or _text(event.get("node")) or "?"
            failures.append(words["lookup_failed"].format(name=name))
        elif kind == "noinput":
            noinput += 1
        elif kind == "nomatch":
            nomatch += 1

    parts = _unique(fragments) or _unique(labels)
    parts += _unique(failures)
    counts = [words[what].format(n=n) for n, what in ((noinput, "noinput"), (nomatch, "nomatch")) if n]
    if counts:
        parts.append(" / ".join(counts))
    reason = person_reason(trail)
    if reason and reason.casefold() not in {p.casefold() for p in parts}:
        parts.append(reason)
    return _fit(parts, limit)


def handoff(
    session: Mapping[str, Any], events: Iterable[Mapping[str, Any] | Any]
) -> dict[str, Any]:
    """The screen pop for the person taking the call.

    ``session`` is a dict as returned by ``TrailStore.get_session`` and
    ``events`` the session's trail. A stored summary or reason wins over one
    computed now from the trail (a live session has neither stored yet).
    """
    trail = [dict(_as_dict(e)) for e in events]
    return {
        "session_id": session.get("id"),
        "caller": session.get("caller"),
        "language": session.get("language"),
        "summary": session.get("summary") or build_summary(trail),
        "reason": session.get("reason") or person_reason(trail),
        "events": trail,
    }
