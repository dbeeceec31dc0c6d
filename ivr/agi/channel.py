"""One FastAGI session over asyncio streams.

``AgiChannel`` writes commands built by :mod:`ivr.agi.protocol`, reads the
replies, and turns every way a call can end into :class:`AgiHangup`:
``200 result=-1`` from a command that needs a live channel, the unsolicited
``HANGUP`` line, ``511`` and EOF. After a hangup the channel remembers it
(:attr:`AgiChannel.hung_up`, :attr:`AgiChannel.hangup_reason`) and refuses
commands that need a live channel without writing them; the commands Asterisk
still runs on a dead channel (``SET VARIABLE``, ``GET VARIABLE``, ``GET FULL
VARIABLE``, ``VERBOSE``) are still sent.

Asterisk never closes a FastAGI socket when the call ends: the server must
:meth:`AgiChannel.close` it, or ``AGI()`` lingers in the dialplan.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ivr.agi.protocol import (
    DEAD_CHANNEL_VERBS,
    HANGUP_EOF,
    HANGUP_LINE,
    HANGUP_LOCAL,
    HANGUP_RESULT,
    MAX_ENV_LINES,
    MAX_LINE_BYTES,
    AgiCommandFailed,
    AgiCommandTimeout,
    AgiError,
    AgiFileMissing,
    AgiHangup,
    AgiProtocolError,
    AgiResult,
    ReplyFramer,
    build_command,
    check_digits,
    check_name,
    encode_command,
    parse_env,
    parse_reply,
    quote,
    token,
)

__all__ = ["AgiChannel", "RecordResult"]


class _Default:
    """Marker type for "use the channel's command timeout"."""


_DEFAULT: Final = _Default()
Timeout = float | None | _Default


@dataclass(frozen=True)
class RecordResult:
    """Outcome of ``RECORD FILE``: the key that stopped it (or None), where it
    stopped (samples) and Asterisk's reason text (``dtmf``, ``timeout`` ...)."""

    digit: str | None
    endpos: int
    reason: str | None


def _decode(raw: bytes) -> str:
    """Bytes of one line to text: UTF-8, undecodable bytes replaced, LF/CRLF dropped."""
    text = raw.decode("utf-8", "replace")
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    return text


async def _read_line(reader: asyncio.StreamReader, max_line_bytes: int) -> str | None:
    """Read one line; None at EOF. Overlong lines raise :class:`AgiProtocolError`."""
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None  # EOF, possibly in the middle of a line: the peer is gone
    except asyncio.LimitOverrunError as exc:
        raise AgiProtocolError(f"line longer than the stream limit ({exc.consumed} bytes buffered)") from None
    except (ConnectionError, OSError):
        return None
    if len(raw) > max_line_bytes + 2:
        raise AgiProtocolError(f"line longer than {max_line_bytes} bytes", raw=_decode(raw[:200]))
    return _decode(raw)


class AgiChannel:
    """A FastAGI session: commands out, typed results back.

    Create it with the streams of an accepted connection, after reading the
    environment with :meth:`read_env` (or use :meth:`accept` for both).
    Commands are serialised by a lock; ``command_timeout`` bounds how long a
    reply may take (commands that wait on the caller add their own waiting
    time; ``exec`` waits without limit by default, since ``Queue`` or ``Dial``
    last as long as the conversation).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        command_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.command_timeout = command_timeout
        self.env: dict[str, str] = dict(env or {})
        self._max_line_bytes = max_line_bytes
        self._lock = asyncio.Lock()
        self._hung_up = False
        self._hangup_reason: str | None = None
        self._eof = False
        self._closed = False
        self._broken: str | None = None
        #: Replies still to come for commands whose wait was cancelled.
        self._owed = 0
        #: Commands written so far.
        self.commands_sent = 0
        #: Seconds from writing each command to its complete reply (last 1000).
        self.turnarounds: deque[float] = deque(maxlen=1000)
        #: The last command line written (for logs).
        self.last_command: str | None = None

    # -- set-up and tear-down -------------------------------------------------

    @staticmethod
    async def read_env(
        reader: asyncio.StreamReader,
        *,
        timeout: float | None = 10.0,
        max_lines: int = MAX_ENV_LINES,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> dict[str, str]:
        """Read the ``agi_*`` block up to its empty line.

        EOF before any line raises ``AgiHangup("eof")`` (a probe that connected
        and left); EOF inside the block, garbage, too many or too long lines,
        or no complete block within ``timeout`` raise :class:`AgiProtocolError`.
        """
        lines: list[str] = []

        async def collect() -> None:
            while True:
                line = await _read_line(reader, max_line_bytes)
                if line is None:
                    if not lines:
                        raise AgiHangup(HANGUP_EOF)
                    raise AgiProtocolError("connection closed inside the AGI environment")
                if line == "":
                    return
                lines.append(line)
                if len(lines) > max_lines:
                    raise AgiProtocolError(f"AGI environment longer than {max_lines} lines")

        try:
            async with asyncio.timeout(timeout):
                await collect()
        except TimeoutError:
            raise AgiProtocolError(f"no complete AGI environment within {timeout} s") from None
        return parse_env(lines)

    @classmethod
    async def accept(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        env_timeout: float | None = 10.0,
        command_timeout: float = 30.0,
    ) -> AgiChannel:
        """Read the environment of a new connection and return its channel."""
        env = await cls.read_env(reader, timeout=env_timeout)
        return cls(reader, writer, command_timeout=command_timeout, env=env)

    async def close(self) -> None:
        """Close the socket (idempotent). Asterisk waits for this to end ``AGI()``."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        try:
            async with asyncio.timeout(2.0):
                await self._writer.wait_closed()
        except (OSError, TimeoutError):
            pass

    async def __aenter__(self) -> AgiChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state ----------------------------------------------------------------

    @property
    def hung_up(self) -> bool:
        """True once any sign of a hangup was seen (or the server hung up)."""
        return self._hung_up

    @property
    def hangup_reason(self) -> str | None:
        """The first sign of the hangup: ``result=-1``, ``HANGUP``, ``511``, ``eof`` or ``local``."""
        return self._hangup_reason

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def owed_replies(self) -> int:
        """Replies still to come for commands whose wait was cancelled (the
        next command drops them before reading its own)."""
        return self._owed

    @property
    def uniqueid(self) -> str | None:
        return self.env.get("agi_uniqueid")

    def _mark_hangup(self, reason: str) -> None:
        if not self._hung_up:
            self._hung_up = True
            self._hangup_reason = reason

    def _require_live(self) -> None:
        if self._hung_up:
            raise AgiHangup(self._hangup_reason or HANGUP_EOF)

    # -- the one round trip ---------------------------------------------------

    async def command(self, verb: str, *args: str | int, timeout: Timeout = _DEFAULT) -> AgiResult:
        """Send one command and return its ``200`` reply.

        Arguments follow :func:`ivr.agi.protocol.build_command` (ints, bare
        words, or :func:`~ivr.agi.protocol.quote`-d text); a bad one raises
        :class:`~ivr.agi.protocol.AgiArgumentError` before anything is written.
        The command is always written, even after a hangup (the convenience
        methods guard that). Raises :class:`AgiHangup` on ``511``, on EOF, and
        when a ``HANGUP`` line precedes the reply of a command that needs a
        live channel; :class:`~ivr.agi.protocol.AgiInvalidCommand` (510),
        :class:`~ivr.agi.protocol.AgiUsageError` (520),
        :class:`AgiCommandTimeout`, :class:`AgiProtocolError`. ``200
        result=-1`` is returned as is: its meaning depends on the command.
        """
        line = build_command(verb, *args)
        data = encode_command(line)
        limit = self.command_timeout if isinstance(timeout, _Default) else timeout
        dead_ok = " ".join(verb.upper().split()) in DEAD_CHANNEL_VERBS
        async with self._lock:
            if self._eof:
                raise AgiHangup(HANGUP_EOF)
            if self._closed:
                raise AgiProtocolError("the AGI channel is closed")
            if self._broken:
                raise AgiProtocolError(f"the AGI channel is out of step: {self._broken}")
            started = time.perf_counter()
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError):
                self._eof = True
                self._mark_hangup(HANGUP_EOF)
                raise AgiHangup(HANGUP_EOF) from None
            except asyncio.CancelledError:
                self._broken = f"cancelled while writing {line[:60]!r}"
                raise
            self.commands_sent += 1
            self.last_command = line
            try:
                async with asyncio.timeout(limit):
                    # Asterisk answers in order: first the replies of commands
                    # whose wait was cancelled (dropped), then this one's.
                    while self._owed:
                        late = await self._read_reply()
                        self._owed -= 1
                        if late.saw_hangup:
                            self._mark_hangup(HANGUP_LINE)
                    framer = await self._read_reply()
            except TimeoutError:
                self._broken = f"no reply to {line[:60]!r} within {limit} s"
                raise AgiCommandTimeout(self._broken) from None
            except AgiProtocolError as exc:
                self._broken = str(exc)
                raise
            except asyncio.CancelledError:
                # the command stays written: its reply comes later, and the
                # next command drops it before reading its own
                self._owed += 1
                raise
            self.turnarounds.append(time.perf_counter() - started)
        if framer.saw_hangup:
            self._mark_hangup(HANGUP_LINE)
        try:
            result = parse_reply(framer.lines)
        except AgiHangup as exc:
            self._mark_hangup(exc.reason)
            raise
        except AgiProtocolError as exc:
            self._broken = str(exc)
            raise
        if result.hangup_notice and not dead_ok:
            raise AgiHangup(HANGUP_LINE, raw=result.raw, result=result)
        return result

    async def _read_reply(self) -> ReplyFramer:
        framer = ReplyFramer()
        while True:
            line = await _read_line(self._reader, self._max_line_bytes)
            if line is None:
                self._eof = True
                if framer.saw_hangup:
                    self._mark_hangup(HANGUP_LINE)
                self._mark_hangup(HANGUP_EOF)
                raise AgiHangup(HANGUP_EOF)
            if framer.feed(line):
                return framer

    def _wait_limit(self, wait_ms: int, times: int = 1) -> float | None:
        """Command timeout for a command that itself waits ``wait_ms`` per key."""
        if wait_ms < 0:
            return None
        return self.command_timeout + wait_ms * max(times, 1) / 1000.0

    def _hangup_on_minus_one(self, result: AgiResult) -> None:
        if result.value == -1:
            self._mark_hangup(HANGUP_RESULT)
            raise AgiHangup(HANGUP_RESULT, raw=result.raw, result=result)

    @staticmethod
    def _int(result: AgiResult) -> int:
        value = result.value
        if value is None:
            raise AgiProtocolError(f"expected a numeric result: {result.raw[:80]!r}", raw=result.raw)
        return value

    @staticmethod
    def _key(value: int, result: AgiResult) -> str:
        if not 0 < value < 128:
            raise AgiProtocolError(f"result is not a key code: {result.raw[:80]!r}", raw=result.raw)
        return chr(value)

    # -- convenience commands ---------------------------------------------------

    async def answer(self) -> None:
        """``ANSWER``."""
        self._require_live()
        result = await self.command("ANSWER")
        self._hangup_on_minus_one(result)

    async def stream_file(
        self, name: str, escape_digits: str = "", *, offset: int | None = None
    ) -> tuple[str | None, int]:
        """``STREAM FILE``: play ``name``; return (key that interrupted it or None, endpos).

        ``200 result=-1 endpos=0`` raises :class:`AgiFileMissing` (the file
        does not exist; the channel is fine); ``result=-1`` after some audio
        played is a hangup.
        """
        self._require_live()
        args: list[str | int] = [token(name), quote(check_digits(escape_digits))]
        if offset is not None:
            args.append(int(offset))
        result = await self.command("STREAM FILE", *args)
        value = self._int(result)
        endpos = result.endpos if result.endpos is not None else 0
        if value == -1:
            if endpos == 0:
                raise AgiFileMissing(name, raw=result.raw)
            self._hangup_on_minus_one(result)
        if value == 0:
            return None, endpos
        if value < 0:
            raise AgiCommandFailed(f"STREAM FILE failed: {result.raw!r}", raw=result.raw)
        return self._key(value, result), endpos

    async def get_data(self, file: str, timeout_ms: int, max_digits: int) -> tuple[str, bool]:
        """``GET DATA``: play ``file`` and collect keys; return (digits, timed_out).

        ``("", False)`` means the caller pressed ``#`` at once; ``("12", True)``
        that two keys came and then silence.
        """
        self._require_live()
        result = await self.command(
            "GET DATA", token(file), int(timeout_ms), int(max_digits), timeout=self._wait_limit(timeout_ms, max_digits)
        )
        self._hangup_on_minus_one(result)
        digits = result.result
        try:
            check_digits(digits)
        except AgiError:
            raise AgiProtocolError(f"GET DATA returned non-digits: {result.raw[:80]!r}", raw=result.raw) from None
        return digits, result.data == "timeout"

    async def wait_for_digit(self, timeout_ms: int) -> str | None:
        """``WAIT FOR DIGIT``: the key pressed, or None on timeout (``-1`` waits forever)."""
        self._require_live()
        result = await self.command("WAIT FOR DIGIT", int(timeout_ms), timeout=self._wait_limit(timeout_ms))
        self._hangup_on_minus_one(result)
        value = self._int(result)
        return None if value == 0 else self._key(value, result)

    async def say_digits(self, digits: str, escape_digits: str = "") -> str | None:
        """``SAY DIGITS``: the key that interrupted it, or None."""
        self._require_live()
        result = await self.command(
            "SAY DIGITS", check_digits(digits, allow_empty=False), quote(check_digits(escape_digits))
        )
        self._hangup_on_minus_one(result)
        value = self._int(result)
        return None if value == 0 else self._key(value, result)

    async def record_file(
        self,
        path: str,
        fmt: str = "wav",
        escape_digits: str = "#",
        timeout_ms: int = -1,
        *,
        beep: bool = False,
        silence_s: int | None = None,
    ) -> RecordResult:
        """``RECORD FILE path fmt "digits" timeout 0|BEEP [s=N]``."""
        self._require_live()
        args: list[str | int] = [token(path), token(fmt), quote(check_digits(escape_digits)), int(timeout_ms)]
        args.append("BEEP" if beep else 0)
        if silence_s is not None:
            args.append(f"s={int(silence_s)}")
        result = await self.command("RECORD FILE", *args, timeout=self._wait_limit(timeout_ms))
        value = self._int(result)
        endpos = result.endpos if result.endpos is not None else 0
        if value == -1:
            if result.data in (None, "hangup"):
                self._hangup_on_minus_one(result)
            raise AgiCommandFailed(f"RECORD FILE failed: {result.data}", raw=result.raw)
        digit = self._key(value, result) if value > 0 else None
        return RecordResult(digit, endpos, result.data)

    async def set_variable(self, name: str, value: str, *, timeout: Timeout = _DEFAULT) -> None:
        """``SET VARIABLE name "value"``; tried even on a dead channel (Asterisk runs it)."""
        await self.command("SET VARIABLE", check_name(name), quote(value), timeout=timeout)

    async def get_variable(self, name: str) -> str | None:
        """``GET VARIABLE``: the value, or None when unset. Works on a dead channel."""
        result = await self.command("GET VARIABLE", check_name(name))
        return (result.data or "") if result.value == 1 else None

    async def get_full_variable(self, expr: str) -> str | None:
        """``GET FULL VARIABLE "expr"``: Asterisk expands ``${...}`` in ``expr``.

        Never put caller-influenced text in ``expr``: dialplan functions in it run.
        """
        result = await self.command("GET FULL VARIABLE", quote(expr))
        return (result.data or "") if result.value == 1 else None

    async def exec(self, app: str, args: str = "", *, timeout: float | None = None, allow_dead: bool = False) -> int:
        """``EXEC app args``: the application's result.

        ``-2``: no such application. ``-1``: the application ended the call
        (``Queue`` when the bridged call ends): the channel is marked hung up
        and -1 returned, since that is often the normal end of a transfer.
        A ``HANGUP`` line before the reply means the channel was gone before
        the application ran: :class:`AgiHangup`, unless ``allow_dead``.
        Waits without limit unless ``timeout`` is given. Application arguments
        are parsed by the application (commas split them): keep caller data out.
        """
        if not allow_dead:
            self._require_live()
        check_name(app)
        args_out: tuple[str, ...] = (token(args),) if args else ()
        result = await self.command("EXEC", app, *args_out, timeout=timeout)
        if result.hangup_notice and not allow_dead:
            # the channel was dead before the application started: it did
            # nothing (Queue never rang anyone), the caller had hung up
            raise AgiHangup(HANGUP_LINE, raw=result.raw, result=result)
        value = self._int(result)
        if value == -1:
            self._mark_hangup(HANGUP_RESULT)
        return value

    async def verbose(self, message: str, level: int = 1) -> None:
        """``VERBOSE "message" level`` to Asterisk's log."""
        await self.command("VERBOSE", quote(message), int(level))

    async def channel_status(self) -> int:
        """``CHANNEL STATUS`` (6 = up)."""
        self._require_live()
        return self._int(await self.command("CHANNEL STATUS"))

    async def hangup(self) -> None:
        """``HANGUP`` the channel; nothing is sent if it is already hung up."""
        if self._hung_up or self._closed or self._eof:
            return
        try:
            await self.command("HANGUP")
        finally:
            self._mark_hangup(HANGUP_LOCAL)
