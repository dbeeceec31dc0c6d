"""Log lines that say which call they are about.

Each call runs in its own asyncio task, so the call's Asterisk ``uniqueid`` and
the session id live in context variables: :func:`bind_call` sets them where a
call starts (the FastAGI handler, the call driver), and :class:`CallFilter`
copies them onto every log record made in that task (and in tasks it starts),
whichever module logs. Text lines end with ``[uid=... sid=...]``; JSON lines
(``log_json = true``) carry ``uniqueid`` and ``session_id`` fields.

The trail itself is logged one line per event on the ``ivr.trail`` logger at
INFO (``log_trail = false`` turns that off); masked values are already masked
in the events, and prompt texts are left out.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from typing import Any, Iterable, Mapping

__all__ = [
    "CallFilter",
    "JsonFormatter",
    "TextFormatter",
    "bind_call",
    "current_call",
    "log_trail_events",
    "setup_logging",
]

UNIQUEID: contextvars.ContextVar[str | None] = contextvars.ContextVar("ivr_uniqueid", default=None)
SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("ivr_session_id", default=None)

trail_log = logging.getLogger("ivr.trail")

#: Data fields never written to the log (long or personal text already in the trail).
_QUIET_FIELDS = frozenset({"text", "summary", "utterance"})
_MAX_DATA = 300


_KEEP: Any = object()


def bind_call(*, uniqueid: str | None = _KEEP, session_id: str | None = _KEEP) -> None:
    """Set the current task's call ids; a value not given is left as it is."""
    if uniqueid is not _KEEP:
        UNIQUEID.set(uniqueid)
    if session_id is not _KEEP:
        SESSION_ID.set(session_id)


def current_call() -> tuple[str | None, str | None]:
    """``(uniqueid, session_id)`` of the call the current task serves."""
    return UNIQUEID.get(), SESSION_ID.get()


class CallFilter(logging.Filter):
    """Adds ``uniqueid`` and ``session_id`` (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "uniqueid"):
            record.uniqueid = UNIQUEID.get()
        if not hasattr(record, "session_id"):
            record.session_id = SESSION_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        uid, sid = getattr(record, "uniqueid", None), getattr(record, "session_id", None)
        if uid or sid:
            first, nl, rest = line.partition("\n")
            line = f"{first} [uid={uid or '-'} sid={sid or '-'}]{nl}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, uniqueid, session_id, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("uniqueid", "session_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = event
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(*, level: str = "INFO", json_lines: bool = False, stream: Any = None) -> logging.Handler:
    """Point the root logger at one stderr handler with the call filter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(CallFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    return handler


def _compact(data: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in data.items() if k not in _QUIET_FIELDS and v is not None}
    text = json.dumps(shown, ensure_ascii=False, default=str, separators=(",", ":"))
    return text if len(text) <= _MAX_DATA else text[: _MAX_DATA - 1] + "…"


def log_trail_events(events: Iterable[Mapping[str, Any]], channel: str) -> None:
    """One INFO line per trail event (cheap when INFO is off for ``ivr.trail``)."""
    if not trail_log.isEnabledFor(logging.INFO):
        return
    for event in events:
        data = event.get("data") or {}
        trail_log.info(
            "%s %s node=%s %s", channel, event.get("kind"), event.get("node") or "-", _compact(data),
            extra={"event": {"kind": event.get("kind"), "node": event.get("node"), "channel": channel}},
        )
