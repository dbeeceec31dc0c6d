"""What goes on the AMI wire: safe headers, messages and actions.

AMI is line based: an action is ``Name: value`` lines ended by CRLF and one
empty line. A CR or LF inside a value would end the header early and let the
rest of the value become headers of its own (or a whole new action), so every
value is cleaned here, at the single place where actions are serialised
(:meth:`AmiAction.__str__`), and header names are validated.

``Originate``'s ``Variable:`` header needs one more layer: Asterisk splits each
``Variable:`` value on commas with its application-argument parser
(``man_do_variable_value`` -> ``AST_STANDARD_APP_ARGS`` ->
``__ast_app_separate_args(..., remove_chars=1)``), which also drops double
quotes and backslashes and honours ``()``/``[]`` nesting. A caller-controlled
value with a comma would therefore set a second variable of the caller's
choice. :func:`format_originate_variable` backslash-escapes those characters
so the value arrives literally, as exactly one variable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Union

from panoramisk import actions as pk_actions
from panoramisk.message import Message
from panoramisk.utils import CaseInsensitiveDict

EOL = "\r\n"
BANNER_PREFIX = "Asterisk Call Manager/"

#: A header value as accepted by :func:`clean_value`.
HeaderValue = Union[str, int, float, bool]
#: An action as callers write it: names to one value or a list of values
#: (a list becomes repeated headers, e.g. several ``Variable:`` lines).
ActionHeaders = Mapping[str, Union[HeaderValue, Sequence[HeaderValue]]]

_HEADER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")
# A channel variable, optionally with the inheritance prefix (``_``/``__``),
# or a dialplan function with a simple argument such as ``CALLERID(num)``.
_VARIABLE_NAME = re.compile(r"[A-Za-z0-9_]+(\([A-Za-z0-9_-]*\))?\Z")
_LINE_BREAKS = re.compile(r"[\r\n\x00]+")
# Characters Asterisk's argument parser interprets inside a Variable: value.
_APP_ARG_SPECIALS = re.compile(r'([\\",()\[\]])')


def validate_header_name(name: str) -> str:
    """Return ``name`` if it is a plain AMI header name, else raise ValueError."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise ValueError(f"invalid AMI header name: {name!r}")
    return name


def validate_variable_name(name: str) -> str:
    """Return ``name`` if it is a safe channel variable (or function) name."""
    if not isinstance(name, str) or not _VARIABLE_NAME.match(name):
        raise ValueError(f"invalid channel variable name: {name!r}")
    return name


def clean_value(value: HeaderValue) -> str:
    """Render a header value; CR, LF and NUL runs become one space.

    Nothing a caller can influence (caller ID, recognised speech, digits,
    look-up results) can therefore add a header or an action.
    """
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(f"AMI header value must be str, int, float or bool, "
                        f"not {type(value).__name__}")
    return _LINE_BREAKS.sub(" ", text)


def escape_app_arg(value: HeaderValue) -> str:
    """Clean ``value`` and backslash-escape what Asterisk's argument parser
    would interpret (``\\ " , ( ) [ ]``), so it arrives literally."""
    return _APP_ARG_SPECIALS.sub(r"\\\1", clean_value(value))


def format_originate_variable(name: str, value: HeaderValue) -> str:
    """One ``Variable:`` header value for ``Originate``: ``NAME=escaped``."""
    return f"{validate_variable_name(name)}={escape_app_arg(value)}"


def _header_lines(headers: Iterable[tuple[str, object]]) -> list[str]:
    lines: list[str] = []
    for name, value in headers:
        validate_header_name(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            lines.append(f"{name}: {clean_value(item)}")  # type: ignore[arg-type]
    return lines


class AmiAction(pk_actions.Action):
    """A panoramisk :class:`~panoramisk.actions.Action`, made safe and strict.

    Differences from panoramisk's class, each on purpose:

    - serialisation validates every header name and cleans every value
      (see the module docstring), and keeps the caller's header order
      (``Action`` first, as in the captures) instead of sorting;
    - an action expects a list of messages only when Asterisk says so
      (``EventList: start``, or the older ``... will follow``). Panoramisk
      also guessed from ``successfully queued`` and ``Added ... to queue``:
      with that guess an async ``Originate`` resolves only when its
      ``OriginateResponse`` arrives (up to the dial timeout later) and a
      ``QueueAdd`` never resolves.
    """

    @property
    def name(self) -> str:
        """The action name (``Originate``, ``Ping`` ...)."""
        return str(self.get("Action", ""))

    def __str__(self) -> str:
        return EOL.join(_header_lines(self.items())) + EOL + EOL

    @property
    def multi(self) -> bool:
        if self.as_list is not None:
            return bool(self.as_list)
        first = self.responses[0]
        if str(first.get("EventList", "")).lower() == "start":
            return True
        return "will follow" in str(first.get("Message", "")).lower()


class AmiMessage(Message):
    """A panoramisk :class:`~panoramisk.message.Message` (case-insensitive
    headers, repeated headers as lists) with a stricter parser.

    Panoramisk treats every message starting ``Response: Fail`` as having a
    free-text body and moves its last line out of the headers; that is right
    for the old ``Response: Follows`` command output only, so a
    ``Response: Failure`` would lose its ``Message:`` header. Here only
    ``Follows`` keeps panoramisk's body handling.

    Panoramisk's constructor also stores an empty ``content`` pseudo-header
    in every message; here it is stored only when there is a body, so the
    headers are exactly what Asterisk sent.
    """

    def __init__(self, headers: Mapping[str, str | list[str]], content: str = "") -> None:
        CaseInsensitiveDict.__init__(self, headers)
        self.manager = None
        if content:
            self["content"] = content

    @classmethod
    def from_line(cls, line: str) -> "AmiMessage | None":
        if line.startswith("Response: Follows"):
            parsed = Message.from_line(line)
            if parsed is None:
                return None
            return cls({k: v for k, v in parsed.items() if k != "content"}, parsed.content)
        headers: dict[str, str | list[str]] = {}
        for text in line.split(EOL):
            key, sep, value = text.partition(": ")
            if not sep:
                continue
            previous = headers.get(key)
            if previous is None:
                headers[key] = value
            elif isinstance(previous, list):
                previous.append(value)
            else:
                headers[key] = [previous, value]
        if "Event" in headers or "Response" in headers:
            return cls(headers)
        return None

    def to_dict(self) -> dict[str, str | list[str]]:
        """Plain ``dict`` copy of the headers, in wire order."""
        return dict(self.items())
