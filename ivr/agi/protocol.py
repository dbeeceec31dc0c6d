"""FastAGI wire protocol: reply and environment parsing, safe command building.

Pure functions and small value types only; no I/O. ``ivr.agi.channel`` puts
them on an asyncio stream, ``ivr.testing.fake_asterisk`` plays the other side.

What the wire looks like (Asterisk 22, see ``tests/fixtures/asterisk``):

* The session opens with ``agi_<name>: <value>`` lines ended by one empty line.
* The server sends one command per line; Asterisk answers with one reply line
  (``200 result=...``, ``510 ...``, ``511 ...``) or a multi-line usage block
  (``520-...`` lines closed by ``520 End of proper usage.``). A ``100 ...``
  line may precede a reply and is skipped. Once the channel is dead Asterisk
  writes one unsolicited ``HANGUP`` line, which the reader sees in front of the
  next reply.
* Asterisk splits command arguments on blanks, honours double quotes and
  backslash escapes (``parse_args`` in ``res_agi.c``) and reads a command into
  a 2048-byte buffer: a longer line is cut and its tail runs as a *second*
  command. So every argument that carries data is quoted with :func:`quote`,
  and :func:`build_command` refuses lines Asterisk would split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEAD_CHANNEL_VERBS",
    "DTMF_KEYS",
    "HANGUP_511",
    "HANGUP_EOF",
    "HANGUP_LINE",
    "HANGUP_LOCAL",
    "HANGUP_RESULT",
    "MAX_COMMAND_BYTES",
    "MAX_ENV_LINES",
    "MAX_LINE_BYTES",
    "MAX_REPLY_LINES",
    "AgiArgumentError",
    "AgiCommandFailed",
    "AgiCommandTimeout",
    "AgiError",
    "AgiFileMissing",
    "AgiHangup",
    "AgiInvalidCommand",
    "AgiProtocolError",
    "AgiResult",
    "AgiUsageError",
    "ReplyFramer",
    "build_command",
    "check_digits",
    "check_name",
    "clip",
    "encode_command",
    "parse_env",
    "parse_reply",
    "quote",
    "sanitize",
    "token",
]

# ---------------------------------------------------------------------------
# Limits and constants

#: Longest reply or environment line accepted, in bytes (without the newline).
MAX_LINE_BYTES = 64 * 1024
#: Most lines in one reply (a ``520`` usage block is the only multi-line reply).
MAX_REPLY_LINES = 256
#: Most lines in the environment block (about 22 plus ``agi_arg_N``, N < 128).
MAX_ENV_LINES = 256
#: Longest command Asterisk reads as one line: ``res_agi.c`` reads commands
#: with ``fgets`` into ``char buf[AGI_BUF_LEN]`` (2048), so at most 2047 bytes
#: including the newline. Anything longer is split into several commands.
MAX_COMMAND_BYTES = 2046

#: The unsolicited line Asterisk writes once the channel is dead.
HANGUP_LINE = "HANGUP"

# Values of ``AgiHangup.reason`` / ``AgiChannel.hangup_reason``.
HANGUP_RESULT = "result=-1"  #: a command answered ``200 result=-1``
HANGUP_511 = "511"  #: ``511 Command Not Permitted on a dead channel``
HANGUP_EOF = "eof"  #: the socket closed or broke
HANGUP_LOCAL = "local"  #: the server sent ``HANGUP`` itself

#: Keys a caller can press (``A``-``D`` exist on some phones).
DTMF_KEYS = "0123456789*#ABCD"

#: Commands Asterisk still runs on a dead channel (``dead`` flag in the
#: ``commands[]`` table of ``res_agi.c``); the others get ``511``.
DEAD_CHANNEL_VERBS = frozenset(
    {
        "ASYNCAGI BREAK",
        "DATABASE DEL",
        "DATABASE DELTREE",
        "DATABASE GET",
        "DATABASE PUT",
        "EXEC",
        "GET FULL VARIABLE",
        "GET VARIABLE",
        "NOOP",
        "SET VARIABLE",
        "SPEECH DESTROY",
        "SPEECH UNLOAD GRAMMAR",
        "VERBOSE",
    }
)

# ---------------------------------------------------------------------------
# Errors


class AgiError(Exception):
    """Base of every AGI error. ``raw`` holds the offending reply text, if any."""

    def __init__(self, message: str, *, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class AgiHangup(AgiError):
    """The channel is gone. A normal end of a call, never a crash.

    ``reason`` is one of :data:`HANGUP_RESULT`, :data:`HANGUP_LINE`,
    :data:`HANGUP_511`, :data:`HANGUP_EOF`, :data:`HANGUP_LOCAL`. ``result`` is
    the parsed reply when there was one (e.g. ``200 result=-1 endpos=12000``).
    """

    def __init__(self, reason: str, *, raw: str = "", result: AgiResult | None = None) -> None:
        super().__init__(f"channel hung up ({reason})", raw=raw)
        self.reason = reason
        self.result = result


class AgiInvalidCommand(AgiError):
    """``510 Invalid or unknown command``."""


class AgiUsageError(AgiError):
    """``520`` usage error; ``usage`` is the usage text Asterisk sent (may be empty)."""

    def __init__(self, message: str, *, usage: str = "", raw: str = "") -> None:
        super().__init__(message, raw=raw)
        self.usage = usage


class AgiCommandTimeout(AgiError):
    """No complete reply within the command timeout; the session is out of step."""


class AgiProtocolError(AgiError):
    """Garbage, an unparseable or overlong line, or an unexpected reply code."""


class AgiFileMissing(AgiError):
    """``STREAM FILE`` answered ``200 result=-1 endpos=0``: the sound file does not exist.

    Not a hangup: the channel is still up.
    """

    def __init__(self, name: str, *, raw: str = "") -> None:
        super().__init__(f"sound file not found: {name!r}", raw=raw)
        self.name = name


class AgiCommandFailed(AgiError):
    """A command reported a failure that is not a hangup (e.g. ``RECORD FILE`` ``(writefile)``)."""


class AgiArgumentError(AgiError, ValueError):
    """A command could not be built safely (bad name, unquoted data, too long)."""


# ---------------------------------------------------------------------------
# Replies


@dataclass(frozen=True)
class AgiResult:
    """One successful (``200``) reply.

    ``result`` is the raw text after ``result=`` (may be empty: ``GET DATA``
    with no keys), ``data`` the text in parentheses (``timeout``, a variable's
    value), ``endpos`` the playback position in samples, ``extra`` any other
    ``key=value`` pairs, ``raw`` the reply line itself. ``hangup_notice`` is set
    when an unsolicited ``HANGUP`` line came before this reply.
    """

    code: int
    result: str
    data: str | None = None
    endpos: int | None = None
    extra: dict[str, str] = field(default_factory=dict, hash=False)
    raw: str = ""
    hangup_notice: bool = False

    @property
    def value(self) -> int | None:
        """``result`` as an integer, or None when it is not one (``result=``, ``result=12#``)."""
        if _INT_RE.fullmatch(self.result):
            return int(self.result)
        return None


_INT_RE = re.compile(r"-?[0-9]{1,18}", re.ASCII)
_CODE_RE = re.compile(r"([0-9]{3})(?:([ -])(.*))?", re.ASCII | re.DOTALL)


def _clean_line(line: object) -> str:
    """Drop one trailing LF (and CR), refuse non-text, embedded newlines and overlong lines."""
    if not isinstance(line, str):
        raise AgiProtocolError(f"reply line is not text: {type(line).__name__}")
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    if "\n" in line:
        raise AgiProtocolError("reply line contains a newline", raw=line[:200])
    if len(line) > MAX_LINE_BYTES:  # a character is at least one byte
        raise AgiProtocolError(f"reply line longer than {MAX_LINE_BYTES} bytes", raw=line[:200])
    return line


def _is_notice(line: str) -> bool:
    """True for lines that are not replies: ``HANGUP`` and ``100 Trying``."""
    return line == HANGUP_LINE or line == "100" or line.startswith(("100 ", "100-"))


class ReplyFramer:
    """Tells a reader when the lines read so far make one complete reply.

    Feed lines in order; :meth:`feed` returns True on the line that completes
    the reply, after which :attr:`lines` goes to :func:`parse_reply`. Notices
    (``HANGUP``, ``100 ...``) do not complete a reply; a ``520-`` line starts a
    usage block that only a ``520 `` line closes.
    """

    def __init__(self, max_lines: int = MAX_REPLY_LINES) -> None:
        self.lines: list[str] = []
        self._max_lines = max_lines
        self._in_usage = False
        self.done = False

    def feed(self, line: str) -> bool:
        if self.done:
            raise AgiProtocolError("reply already complete")
        line = _clean_line(line)
        self.lines.append(line)
        if len(self.lines) > self._max_lines:
            raise AgiProtocolError(f"reply longer than {self._max_lines} lines", raw=self.lines[0][:200])
        if self._in_usage:
            self.done = line.startswith("520 ") or line == "520"
        elif _is_notice(line):
            self.done = False
        elif line.startswith("520-"):
            self._in_usage = True
        else:
            self.done = True
        return self.done

    @property
    def saw_hangup(self) -> bool:
        """True when an unsolicited ``HANGUP`` line was among the lines fed."""
        return HANGUP_LINE in self.lines


def parse_reply(lines: Sequence[str]) -> AgiResult:
    """Parse the lines of one reply into an :class:`AgiResult`, or raise a typed error.

    ``lines`` may start with notices (``HANGUP``, ``100 Trying``) and must end
    with the reply: one ``200``/``510``/``511`` line or a whole ``520`` block.
    Raises :class:`AgiInvalidCommand` (510), :class:`AgiHangup` (511, reason
    ``HANGUP`` if the notice came first), :class:`AgiUsageError` (520) and
    :class:`AgiProtocolError` for anything else. ``200 result=-1`` is returned,
    not raised: whether it means a hangup depends on the command.
    """
    if isinstance(lines, (str, bytes)):
        raise AgiProtocolError("parse_reply takes a list of lines")
    try:
        cleaned = [_clean_line(line) for line in lines]
    except TypeError as exc:  # not iterable
        raise AgiProtocolError(f"reply is not a list of lines: {exc}") from None
    if len(cleaned) > MAX_REPLY_LINES:
        raise AgiProtocolError(f"reply longer than {MAX_REPLY_LINES} lines")

    notice = False
    index = 0
    while index < len(cleaned) and _is_notice(cleaned[index]):
        notice = notice or cleaned[index] == HANGUP_LINE
        index += 1
    body = cleaned[index:]
    if not body:
        raise AgiProtocolError("incomplete reply: no reply line", raw="\n".join(cleaned)[:200])

    first = body[0]
    if first.startswith("520-"):
        return _raise_usage(body)
    if len(body) > 1:
        raise AgiProtocolError("unexpected lines after the reply", raw="\n".join(body)[:200])

    match = _CODE_RE.fullmatch(first)
    if match is None:
        raise AgiProtocolError(f"not an AGI reply: {first[:80]!r}", raw=first)
    code = int(match.group(1))
    rest = match.group(3) or ""
    if match.group(2) == "-":
        raise AgiProtocolError(f"unexpected continuation line: {first[:80]!r}", raw=first)
    if code == 200:
        result, data, endpos, extra = _parse_200(rest, first)
        return AgiResult(200, result, data, endpos, extra, first, notice)
    if code == 510:
        raise AgiInvalidCommand(rest or "Invalid or unknown command", raw=first)
    if code == 511:
        raise AgiHangup(HANGUP_LINE if notice else HANGUP_511, raw=first)
    if code == 520:
        raise AgiUsageError(rest or "Invalid command syntax", usage="", raw=first)
    raise AgiProtocolError(f"unexpected reply code {code}: {first[:80]!r}", raw=first)


def _raise_usage(body: list[str]) -> AgiResult:
    """Raise the :class:`AgiUsageError` for a ``520-`` ... ``520 `` block."""
    last = body[-1]
    if len(body) < 2 or not (last.startswith("520 ") or last == "520"):
        raise AgiProtocolError("unterminated 520 usage block", raw="\n".join(body)[:200])
    if any(line.startswith("520 ") for line in body[1:-1]):
        raise AgiProtocolError("unexpected lines after the 520 usage block", raw="\n".join(body)[:200])
    usage = "\n".join(body[1:-1])
    raise AgiUsageError(body[0][4:] or "Invalid command syntax", usage=usage, raw="\n".join(body))


def _parse_200(rest: str, raw: str) -> tuple[str, str | None, int | None, dict[str, str]]:
    """Split ``result=<r>[ (<data>)][ key=value ...]``; data runs to the LAST ``)``."""
    if not rest.startswith("result="):
        raise AgiProtocolError(f"200 reply without result=: {raw[:80]!r}", raw=raw)
    text = rest[len("result=") :]
    space = text.find(" ")
    if space < 0:
        return text, None, None, {}
    result, tail = text[:space], text[space + 1 :].lstrip(" ")
    data: str | None = None
    if tail.startswith("("):
        close = tail.rfind(")")
        if close < 0:
            raise AgiProtocolError(f"unterminated '(' in reply: {raw[:80]!r}", raw=raw)
        data, tail = tail[1:close], tail[close + 1 :]
    endpos: int | None = None
    extra: dict[str, str] = {}
    for item in tail.split():
        key, _, value = item.partition("=")
        if key == "endpos":
            if not _INT_RE.fullmatch(value):
                raise AgiProtocolError(f"bad endpos in reply: {raw[:80]!r}", raw=raw)
            endpos = int(value)
        else:
            extra[key] = value
    return result, data, endpos, extra


# ---------------------------------------------------------------------------
# Environment

_ENV_KEY_RE = re.compile(r"agi_[A-Za-z0-9_]{1,64}", re.ASCII)


def parse_env(lines: Iterable[str]) -> dict[str, str]:
    """Parse the ``agi_name: value`` block into a dict (in order).

    Stops at the first empty line. Values may be empty (``agi_accountcode: ``)
    and are otherwise kept as sent. Any line that is not ``agi_<name>: ...``
    (an HTTP probe, random bytes) raises :class:`AgiProtocolError`.
    """
    if isinstance(lines, (str, bytes)):
        raise AgiProtocolError("parse_env takes a list of lines")
    env: dict[str, str] = {}
    try:
        iterator = iter(lines)
    except TypeError:
        raise AgiProtocolError("environment is not a list of lines") from None
    for count, line in enumerate(iterator, start=1):
        if count > MAX_ENV_LINES + 1:
            raise AgiProtocolError(f"environment longer than {MAX_ENV_LINES} lines")
        line = _clean_line(line)
        if line == "":
            break
        key, sep, value = line.partition(":")
        if not sep or not _ENV_KEY_RE.fullmatch(key):
            raise AgiProtocolError(f"not an AGI environment line: {line[:80]!r}", raw=line[:200])
        env[key] = value[1:] if value.startswith(" ") else value
    return env


# ---------------------------------------------------------------------------
# Building commands

# Characters that must never reach the socket from data: C0 controls (LF, CR,
# NUL, TAB ...), DEL, C1 controls and the Unicode line/paragraph separators.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_UNSAFE = "\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"
_BARE_RE = re.compile(rf'[^\s"\\{_UNSAFE}]+')
_QUOTED_RE = re.compile(rf'"(?:[^"\\{_UNSAFE}]|\\[^{_UNSAFE}])*"')
_VERB_RE = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_DIGITS_RE = re.compile(r"[0-9*#A-D]*", re.ASCII)


def sanitize(text: str) -> str:
    """Make caller-influenced text safe to carry in one AGI line.

    Control characters (CR, LF, NUL, TAB, DEL, C1, U+2028/2029) become a
    space; lone surrogates (from undecodable bytes) become U+FFFD, so the text
    always encodes as UTF-8.
    """
    if not isinstance(text, str):
        raise AgiArgumentError(f"expected text, got {type(text).__name__}")
    return _SURROGATE_RE.sub("\ufffd", _CONTROL_RE.sub(" ", text))


def quote(arg: str) -> str:
    """Return ``arg`` as one double-quoted AGI argument.

    Backslash and double quote are backslash-escaped, which is what Asterisk's
    ``parse_args`` undoes; control characters are replaced (:func:`sanitize`).
    ``quote('menu>balance 中文 "quoted"')`` gives
    ``"menu>balance 中文 \\"quoted\\""``, the exact form in ``agi-menu.json``.
    """
    text = sanitize(arg)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def clip(text: str, max_bytes: int) -> str:
    """The longest prefix of ``sanitize(text)`` whose ``quote()`` form takes at
    most ``max_bytes`` bytes of UTF-8.

    For data of any length (a look-up result, a caller's name) that must fit
    in one command line: cut, not refused, so the command still goes out.
    """
    clean = sanitize(text)
    budget = max_bytes - 2  # the quotes
    for index, char in enumerate(clean):
        budget -= 2 if char in '\\"' else len(char.encode("utf-8"))
        if budget < 0:
            return clean[:index]
    return clean


def token(arg: str) -> str:
    """``arg`` bare when it is one safe word (``beep``, ``support,,,,20``), else :func:`quote`-d."""
    if isinstance(arg, str) and _BARE_RE.fullmatch(arg):
        return arg
    return quote(arg)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid variable or application name, else raise.

    Accepts ``^[A-Za-z_][A-Za-z0-9_]*$`` (so ``__IVR_SESSION`` for an inherited
    variable); raises :class:`AgiArgumentError`, a ``ValueError``.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise AgiArgumentError(f"invalid AGI variable or application name: {name!r}")
    return name


def check_digits(digits: str, *, allow_empty: bool = True) -> str:
    """Return ``digits`` if it only holds DTMF keys (``0-9 * # A-D``), else raise."""
    if not isinstance(digits, str) or not _DIGITS_RE.fullmatch(digits) or (not digits and not allow_empty):
        raise AgiArgumentError(f"invalid DTMF digits: {digits!r}")
    return digits


def _check_arg(arg: object) -> str:
    if isinstance(arg, bool):
        raise AgiArgumentError("booleans are not AGI arguments")
    if isinstance(arg, int):
        return str(arg)
    if not isinstance(arg, str):
        raise AgiArgumentError(f"AGI arguments are str or int, got {type(arg).__name__}")
    if _BARE_RE.fullmatch(arg) or _QUOTED_RE.fullmatch(arg):
        return arg
    raise AgiArgumentError(f"unsafe AGI argument (use quote() or token()): {arg[:80]!r}")


def build_command(verb: str, *args: str | int) -> str:
    """Build one command line (without the newline), e.g. ``GET DATA beep 4000 3``.

    ``verb`` is the command words (``"SET VARIABLE"``). Each argument is an
    ``int``, a bare word without blanks, quotes, backslashes or control
    characters, or a string produced by :func:`quote`; anything else raises
    :class:`AgiArgumentError`, so data can never open a second command line.
    Lines longer than :data:`MAX_COMMAND_BYTES` (which Asterisk would split)
    are refused too.
    """
    if not isinstance(verb, str) or not _VERB_RE.fullmatch(verb):
        raise AgiArgumentError(f"invalid AGI command: {verb!r}")
    line = " ".join([verb, *(_check_arg(arg) for arg in args)])
    size = len(line.encode("utf-8"))
    if size > MAX_COMMAND_BYTES:
        raise AgiArgumentError(f"AGI command is {size} bytes, longer than Asterisk's {MAX_COMMAND_BYTES}")
    return line


def encode_command(line: str) -> bytes:
    """The bytes to write for one line built by :func:`build_command`: UTF-8 plus ``\\n``."""
    if "\n" in line or "\r" in line:
        raise AgiArgumentError("an AGI command line cannot contain a line break")
    return line.encode("utf-8", "replace") + b"\n"
