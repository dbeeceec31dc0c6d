"""A fake Asterisk 22 for FastAGI, faithful to ``tests/fixtures/asterisk/agi-*.json``.

Like Asterisk, :class:`FakeAsterisk` is the TCP *client*: it connects to a
FastAGI server, sends the ``agi_*`` environment block, then answers each
command line the way Asterisk 22.10 did in the captures. A scripted caller
(:class:`ScriptedCaller`) presses keys, stays silent or hangs up; the fake
records everything the server sent so tests can assert on it.

Two modes:

* scripted (default): commands are interpreted (``STREAM FILE``, ``GET DATA``,
  ``WAIT FOR DIGIT``, ``SAY *``, ``RECORD FILE``, ``SET/GET VARIABLE``, ``GET
  FULL VARIABLE``, ``EXEC``, ``CHANNEL STATUS``, ``VERBOSE``, ``ANSWER``,
  ``HANGUP``, ``NOOP``; anything else is ``510``; wrong argument counts give
  ``520``). Command lines are split into arguments exactly like Asterisk's
  ``parse_args`` and cut into 2047-byte pieces like its ``fgets`` buffer, so a
  quoting or length bug in the server shows up as a wrong or extra command.
* replay (:meth:`FakeAsterisk.replay`, :func:`replay_capture`): sends a
  capture's environment, then for each exchange checks that the server sent
  exactly ``send`` (byte for byte) and answers the exact ``recv`` lines.

Hangup behaviour follows ``agi-hangup.json``: the command during which the
caller hangs up answers ``200 result=-1 ...``; the next command gets an
unsolicited ``HANGUP`` line and then ``511``; later ones ``511``; commands
Asterisk allows on a dead channel (``SET VARIABLE``, ``GET VARIABLE`` ...)
still answer ``200``. The fake, like Asterisk, never closes the socket on its
own while the server is talking: it gives up after ``idle_timeout`` seconds of
silence from the server and reports ``server_closed=False``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import re
import socket
import struct
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from ivr.agi.protocol import DEAD_CHANNEL_VERBS, DTMF_KEYS, HANGUP_LINE
from ivr.names import DEFAULT_AGI_PORT

__all__ = [
    "CALLER_HANGUP",
    "SILENCE",
    "AppOutcome",
    "Speak",
    "Caller",
    "FakeAsterisk",
    "FakeCallResult",
    "InputRequest",
    "PeerFault",
    "ReplayMismatch",
    "ScriptedCaller",
    "build_env",
    "parse_args",
    "replay_capture",
]

#: Asterisk reads a command with fgets into ``char buf[2048]``: 2047 bytes a piece.
AGI_READ_PIECE: Final = 2047
#: Asterisk's ``MAX_ARGS``.
MAX_ARGS: Final = 128

MSG_510: Final = "510 Invalid or unknown command"
MSG_511: Final = "511 Command Not Permitted on a dead channel or intercept routine"
USAGE_HEAD: Final = "520-Invalid command syntax.  Proper usage follows:"
USAGE_TAIL: Final = "520 End of proper usage."

# The usage text Asterisk 22 sent for a bare ``STREAM FILE`` (agi-menu.json).
_STREAM_FILE_USAGE: Final = (
    "Send the given file, allowing playback to be interrupted by the given digits, if any. "
    "Returns <literal>0</literal> if playback completes without a digit being pressed, or the "
    "ASCII numerical value of the digit if one was pressed, or <literal>-1</literal> on error or "
    "if the channel was disconnected. If musiconhold is playing before calling stream file it "
    "will be automatically stopped and will not be restarted after completion.",
    "It sets the following channel variables upon completion:",
    "<variable>PLAYBACKSTATUS</variable>: The status of the playback attempt as a text string.",
    "    <value>SUCCESS</value>",
    "    <value>FAILED</value>",
)


# ---------------------------------------------------------------------------
# The caller


class _Marker:
    """A named non-key caller input."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: The caller stays silent: the next input command times out (and consumes it).
SILENCE: Final = _Marker("SILENCE")
#: The caller hangs up during the next command that plays or waits for input.
CALLER_HANGUP: Final = _Marker("CALLER_HANGUP")



@dataclass(frozen=True)
class Speak:
    """The caller talks: ``pcm`` (8 kHz mono s16le) heard by whatever listens next.

    ``EXEC AudioSocket`` streams it to the AudioSocket server named in its
    argument, in 20 ms frames paced at ``speed`` × real time, then silence
    until the server hangs up the socket; ``dtmf`` is pressed after
    ``dtmf_at_ms`` of audio; ``hangup_at_ms`` hangs up the call there.
    ``continuous=False`` sends no frames during silence (a Local channel).
    Faults of the audio link: ``drop_at_ms`` closes the AudioSocket
    connection there while the call stays up (``EXEC`` returns -1);
    ``connect_delay_ms`` connects only that late; ``never_connect`` spends
    ``connect_delay_ms`` trying and returns -1 without connecting, as
    Asterisk does when it cannot reach the server.
    ``RECORD FILE`` writes the audio as the recording. A prompt or key
    command that hears it takes it as silence.
    """

    pcm: bytes
    speed: float | None = 1.0
    dtmf: str | None = None
    dtmf_at_ms: float = 0.0
    hangup_at_ms: float | None = None
    continuous: bool = True
    trailing_silence_ms: float = 3000.0
    drop_at_ms: float | None = None
    connect_delay_ms: float = 0.0
    never_connect: bool = False

    @classmethod
    def wav(cls, path: str | Path, **options: Any) -> "Speak":
        """The caller says what a WAV file holds (converted to 8 kHz mono)."""
        from asr.wav import load_pcm

        return cls(load_pcm(path), **options)

    @classmethod
    def silence(cls, ms: float = 0.0, **options: Any) -> "Speak":
        """The caller listens silently (frames of silence, or none with ``continuous=False``)."""
        return cls(bytes(int(ms * 16)), **options)

    def __repr__(self) -> str:
        return f"Speak({len(self.pcm) / 16:.0f} ms)"


Input = str | _Marker | Speak


@dataclass(frozen=True)
class InputRequest:
    """What the channel is doing while it asks the caller for the next input.

    ``command`` is the AGI command (``GET DATA``), ``prompt`` what is being
    played (None once keys are being collected), ``accept`` the keys the
    command would take now (``""``: none, the key stays queued) and
    ``timeout_ms`` how long Asterisk would wait.
    """

    command: str
    prompt: str | None
    accept: str
    timeout_ms: int | None = None


class Caller(ABC):
    """The far end of the call. Subclass for an interactive caller (``ivr call``)."""

    @abstractmethod
    async def peek(self, request: InputRequest) -> Input | None:
        """The next input without consuming it: one key, SILENCE, CALLER_HANGUP, or None (nothing)."""

    @abstractmethod
    def take(self) -> None:
        """Consume what :meth:`peek` returned."""


class ScriptedCaller(Caller):
    """A caller that follows an ordered list of inputs.

    Each item is a key string (``"1"``, ``"110105199003071239#"``: keys pressed
    in a row), :data:`SILENCE` or :data:`CALLER_HANGUP`. Input commands take
    keys one at a time, as Asterisk reads DTMF: ``GET DATA ... 3`` takes three
    keys of ``"123#"`` and leaves ``#`` for the next command (as in
    ``agi-menu.json``). When the list runs out the caller is silent, or hangs
    up if ``hangup_when_done``.
    """

    def __init__(self, inputs: Iterable[Input] | str = (), *, hangup_when_done: bool = False) -> None:
        items: list[Input] = [inputs] if isinstance(inputs, str) else list(inputs)
        for item in items:
            if isinstance(item, str):
                bad = set(item) - set(DTMF_KEYS)
                if bad:
                    raise ValueError(f"not DTMF keys in caller input {item!r}: {''.join(sorted(bad))!r}")
            elif item is not SILENCE and item is not CALLER_HANGUP and not isinstance(item, Speak):
                raise ValueError(f"caller inputs are key strings, SILENCE, CALLER_HANGUP or Speak, not {item!r}")
        self._items: deque[Input] = deque(item for item in items if item != "")
        self.hangup_when_done = hangup_when_done

    @property
    def remaining(self) -> list[Input]:
        """Inputs not consumed yet."""
        return list(self._items)

    async def peek(self, request: InputRequest) -> Input | None:
        if not self._items:
            return CALLER_HANGUP if self.hangup_when_done else None
        head = self._items[0]
        return head[0] if isinstance(head, str) else head

    def take(self) -> None:
        if not self._items:
            return
        head = self._items[0]
        if isinstance(head, str) and len(head) > 1:
            self._items[0] = head[1:]
        else:
            self._items.popleft()


# ---------------------------------------------------------------------------
# Applications


@dataclass(frozen=True)
class AppOutcome:
    """What ``EXEC <app>`` does: its result, variables it sets, and whether the
    channel is dead afterwards (with or without a ``HANGUP`` line before the
    next reply; after ``Queue`` returned -1 none came, see agi-queue.json)."""

    result: int = 0
    variables: Mapping[str, str] = field(default_factory=dict)
    hangup: bool = False
    hangup_notice: bool = True


@dataclass(frozen=True)
class PeerFault:
    """A misbehaving Asterisk, for fault tests.

    Instead of answering command number ``at`` (1-based), the fake writes
    ``send`` (raw bytes, may be empty: garbage, a partial line ...) and then:
    ``"reset"`` aborts the connection with SO_LINGER 0 (the server sees a TCP
    RST), ``"close"`` closes it cleanly (EOF), ``"silent"`` keeps it open and
    answers nothing more until the server closes it (or ``idle_timeout``),
    ``"go on"`` carries on answering the next commands as usual.
    """

    at: int
    send: bytes = b""
    then: Literal["reset", "close", "silent", "go on"] = "silent"


AppHandler = AppOutcome | Callable[[str], AppOutcome | Awaitable[AppOutcome]]


def _app_option(args: str, index: int) -> str:
    parts = args.split(",")
    return parts[index] if len(parts) > index else ""


def _queue(args: str) -> AppOutcome:
    """``Queue(name,options,...)``: an agent answers, talks, hangs up.

    With option ``c`` the caller continues (``result=0``, ``QUEUESTATUS=CONTINUE``);
    without it the caller is hung up with the agent (``result=-1``).
    """
    if "c" in _app_option(args, 1):
        return AppOutcome(0, {"QUEUESTATUS": "CONTINUE", "ANSWEREDTIME": "3"})
    return AppOutcome(-1, hangup=True, hangup_notice=False)


def _dial(args: str) -> AppOutcome:
    """``Dial(dest,timeout,options)``: answered, then the callee hangs up (``g`` continues)."""
    if "g" in _app_option(args, 2):
        return AppOutcome(0, {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "3"})
    return AppOutcome(-1, {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "3"}, hangup=True, hangup_notice=False)


def _set(args: str) -> AppOutcome:
    name, sep, value = args.partition("=")
    return AppOutcome(0, {name.strip(): value} if sep and name.strip() else {})


_OK = AppOutcome(0)
#: Marks the built-in AudioSocket behaviour (see ``FakeAsterisk._audiosocket``).
_AUDIOSOCKET = AppOutcome(0)

#: Applications the fake knows, by lower-case name; any other is ``result=-2``.
DEFAULT_APPS: Final[Mapping[str, AppHandler]] = {
    "answer": _OK,
    "audiosocket": _AUDIOSOCKET,
    "background": _OK,
    "dial": _dial,
    "hangup": AppOutcome(-1, hangup=True),
    "log": _OK,
    "musiconhold": _OK,
    "noop": _OK,
    "playback": _OK,
    "playtones": _OK,
    "progress": _OK,
    "queue": _queue,
    "ringing": _OK,
    "set": _set,
    "startmusiconhold": _OK,
    "stopmusiconhold": _OK,
    "stopplaytones": _OK,
    "userevent": _OK,
    "verbose": _OK,
    "wait": _OK,
}

#: Sound lengths in samples (8 kHz) as the captures report them; others: 1 s.
DEFAULT_SOUND_LENGTHS: Final[Mapping[str, int]] = {"beep": 3404, "demo-congrats": 24000}
_DEFAULT_SOUND_LENGTH: Final = 8000


# ---------------------------------------------------------------------------
# Helpers shared with tests


def parse_args(line: str) -> list[str]:
    """Split a command line into arguments exactly like ``parse_args`` in ``res_agi.c``.

    Blanks (space, tab) separate arguments outside double quotes; a backslash
    makes the next character literal; quotes group and are removed.
    """
    argv: list[list[str]] = []
    quoted = escaped = False
    between = True  # "whitespace" in the C code: the next normal char starts an argument
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and between:
                argv.append([])
                between = False
            continue
        if char in " \t" and not quoted and not escaped:
            between = True
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        if between:
            if len(argv) >= MAX_ARGS - 1:
                continue  # Asterisk: "Too many arguments, truncating"
            argv.append([])
            between = False
        argv[-1].append(char)
        escaped = False
    return ["".join(chars) for chars in argv]


_env_counter = itertools.count(1)


def build_env(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_AGI_PORT,
    script: str = "menu?lang=zh&x=1",
    channel: str | None = None,
    language: str = "en",
    uniqueid: str | None = None,
    callerid: str = "13800138000",
    calleridname: str = "",
    dnid: str = "unknown",
    context: str = "ivr-in",
    extension: str = "s",
    priority: int = 4,
    accountcode: str = "",
    overrides: Mapping[str, str] | None = None,
) -> list[str]:
    """The environment lines of a FastAGI call, keys in the captures' order.

    ``script`` is the request path with its query string
    (``agi_network_script``). Empty caller ID number or name show as
    ``unknown``, as Asterisk writes them. ``overrides`` replaces values by key
    and appends unknown keys (``agi_arg_1`` ...).
    """
    n = next(_env_counter)
    values: dict[str, str] = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://{host}:{port}/{script}",
        "agi_channel": channel if channel is not None else f"Local/s@{context}-{n:08x};2",
        "agi_language": language,
        "agi_type": (channel or "Local/").split("/", 1)[0] or "Local",
        "agi_uniqueid": uniqueid if uniqueid is not None else f"{int(time.time())}.{n}",
        "agi_version": "22.10.1",
        "agi_callerid": callerid or "unknown",
        "agi_calleridname": calleridname or "unknown",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": dnid or "unknown",
        "agi_rdnis": "unknown",
        "agi_context": context,
        "agi_extension": extension,
        "agi_priority": str(priority),
        "agi_enhanced": "0.0",
        "agi_accountcode": accountcode,
        "agi_threadid": str(140293129000000 + n),
    }
    values.update(overrides or {})
    lines = [f"{key}: {value}" for key, value in values.items()]
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"environment value with a line break: {line!r}")
    return lines


# ---------------------------------------------------------------------------
# Results


@dataclass
class FakeCallResult:
    """Everything the fake saw and did during one call."""

    env: list[str]
    #: Command lines received (decoded, without the newline), one per Asterisk read.
    commands: list[str] = field(default_factory=list)
    #: The reply lines sent for each command.
    replies: list[list[str]] = field(default_factory=list)
    #: Every byte the server sent.
    raw_received: bytes = b""
    #: Channel variables at the end (inheritance underscores stripped).
    variables: dict[str, str] = field(default_factory=dict)
    #: ``SET VARIABLE`` calls in order, names as sent.
    variables_set: list[tuple[str, str]] = field(default_factory=list)
    #: ``EXEC`` calls: (application, arguments).
    executed: list[tuple[str, str]] = field(default_factory=list)
    #: Sound files the server asked to play (STREAM FILE, GET DATA).
    played: list[str] = field(default_factory=list)
    #: Seconds from the fake's previous write (env or reply) to each command: the server's turnaround.
    turnarounds: list[float] = field(default_factory=list)
    #: True when the server closed the socket (it must: Asterisk never does).
    server_closed: bool = False
    #: Seconds from the last reply to the server closing the socket.
    close_delay: float | None = None
    #: True when the fake gave up waiting for the server.
    idle_timed_out: bool = False
    #: Whether and by whom the channel was hung up: "caller", "server", "app".
    hung_up: bool = False
    hangup_by: str | None = None
    #: Caller inputs left over (scripted callers only).
    inputs_left: list[Input] = field(default_factory=list)
    #: Replay mode: differences from the capture, human readable.
    mismatches: list[str] = field(default_factory=list)
    #: Protocol problems seen (overlong line, NUL byte ...).
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0

    def transcript(self) -> str:
        """The conversation, one ``>>`` command and its ``<<`` replies per block."""
        out: list[str] = []
        for index, command in enumerate(self.commands):
            out.append(f">> {command}")
            for line in self.replies[index] if index < len(self.replies) else ["(no reply)"]:
                out.append(f"<< {line}")
        return "\n".join(out)


class ReplayMismatch(AssertionError):
    """The server did not send what the capture says; ``result`` has the details."""

    def __init__(self, result: FakeCallResult, capture: str) -> None:
        lines = [f"replay of {capture} did not match:"]
        lines += [f"  - {item}" for item in result.mismatches]
        if result.commands:
            lines.append("conversation so far:")
            lines += [f"    {line}" for line in result.transcript().splitlines()]
        super().__init__("\n".join(lines))
        self.result = result


class _Usage(Exception):
    """A handler's way to answer 520."""


# ---------------------------------------------------------------------------
# The fake


Handler = Callable[["FakeAsterisk", list[str], bool], Awaitable[list[str]]]


class FakeAsterisk:
    """Plays Asterisk's side of one FastAGI call against a server at ``host:port``.

    ``inputs`` is a :class:`Caller` or the inputs for a :class:`ScriptedCaller`.
    Environment: ``script`` (path and query string), ``callerid``,
    ``calleridname``, ``dnid``, ``uniqueid``, ``channel``, ``language``, and
    ``env`` to override any key. ``missing_files`` are sound names answered
    with ``200 result=-1 endpos=0``; ``sound_lengths`` gives ``endpos`` in
    samples; ``apps`` adds or replaces :class:`AppOutcome`\\ s by application
    name; ``variables`` presets channel variables. ``hangup_after=N``: the
    caller hangs up during the Nth command. ``command_delay`` and
    ``prompt_delay`` (seconds) pace replies in real time; both 0 (the default)
    is the zero-delay mode for benchmarks. Fault tests: ``fault`` (a
    :class:`PeerFault`) misbehaves at one command; ``raw_env`` is sent instead
    of the environment block (garbage, no blank line ...).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_AGI_PORT,
        *,
        inputs: Iterable[Input] | str | Caller = (),
        script: str = "menu?lang=zh&x=1",
        callerid: str = "13800138000",
        calleridname: str = "",
        dnid: str = "unknown",
        uniqueid: str | None = None,
        channel: str | None = None,
        language: str = "en",
        env: Mapping[str, str] | None = None,
        missing_files: Iterable[str] = (),
        sound_lengths: Mapping[str, int] | None = None,
        apps: Mapping[str, AppHandler] | None = None,
        variables: Mapping[str, str] | None = None,
        hangup_after: int | None = None,
        hangup_when_done: bool = False,
        answered: bool = False,
        command_delay: float = 0.0,
        prompt_delay: float = 0.0,
        idle_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        on_exchange: Callable[[str, list[str]], None] | None = None,
        fault: PeerFault | None = None,
        raw_env: bytes | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.caller: Caller = (
            inputs if isinstance(inputs, Caller) else ScriptedCaller(inputs, hangup_when_done=hangup_when_done)
        )
        self.env_lines = build_env(
            host=host,
            port=port,
            script=script,
            channel=channel,
            language=language,
            uniqueid=uniqueid,
            callerid=callerid,
            calleridname=calleridname,
            dnid=dnid,
            overrides=env,
        )
        self.missing_files = set(missing_files)
        self.sound_lengths = {**DEFAULT_SOUND_LENGTHS, **(sound_lengths or {})}
        self.apps: dict[str, AppHandler] = {**DEFAULT_APPS, **{k.lower(): v for k, v in (apps or {}).items()}}
        self.hangup_after = hangup_after
        self.command_delay = command_delay
        self.prompt_delay = prompt_delay
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.on_exchange = on_exchange
        self.fault = fault
        self.raw_env = raw_env
        self._callerid = callerid
        self._calleridname = calleridname
        self._answered = answered
        self._capture: Mapping[str, Any] | None = None
        self._capture_name = ""
        self._strict = True
        self._result = FakeCallResult(env=list(self.env_lines), variables=dict(variables or {}))
        self._dead = False
        self._notice_pending = False
        self._count = 0
        self._pieces: deque[bytes] = deque()
        self._raw = bytearray()
        self._last_write = 0.0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        #: WAV files written by RECORD FILE, and what each AudioSocket connection saw.
        self.recordings: list[str] = []
        self.audiosocket_reports: list[Any] = []

    @classmethod
    def replay(
        cls,
        capture: str | Path | Mapping[str, Any],
        host: str = "127.0.0.1",
        port: int = DEFAULT_AGI_PORT,
        *,
        strict: bool = True,
        idle_timeout: float = 2.0,
        command_delay: float = 0.0,
        connect_timeout: float = 5.0,
    ) -> FakeAsterisk:
        """A fake that replays a capture file (or its loaded JSON).

        With ``strict`` (default) :meth:`run` raises :class:`ReplayMismatch`
        when the server strays from the capture.
        """
        if isinstance(capture, Mapping):
            data, name = capture, "<capture>"
        else:
            path = Path(capture)
            data, name = json.loads(path.read_text(encoding="utf-8")), path.name
        fake = cls(host, port, idle_timeout=idle_timeout, command_delay=command_delay, connect_timeout=connect_timeout)
        fake._capture = data
        fake._capture_name = name
        fake._strict = strict
        fake.env_lines = [str(line) for line in data["env"]]
        fake._result.env = list(fake.env_lines)
        return fake

    # -- running ------------------------------------------------------------

    async def run(self) -> FakeCallResult:
        """Connect, play the call, and return what happened."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=1 << 20), self.connect_timeout
        )
        return await self.run_over(reader, writer)

    async def run_over(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> FakeCallResult:
        """Play the call over given streams: a process-AGI script's stdout and stdin, say."""
        started = time.perf_counter()
        self._reader, self._writer = reader, writer
        try:
            block = "".join(f"{line}\n" for line in self.env_lines) + "\n"
            await self._write(block.encode("utf-8") if self.raw_env is None else self.raw_env)
            if self._capture is not None:
                await self._replay_loop(self._capture)
            else:
                await self._serve_loop()
        finally:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                pass
        result = self._result
        result.raw_received = bytes(self._raw)
        result.duration = time.perf_counter() - started
        if isinstance(self.caller, ScriptedCaller):
            result.inputs_left = self.caller.remaining
        if self._capture is not None and self._strict and result.mismatches:
            raise ReplayMismatch(result, self._capture_name)
        return result

    async def _write(self, data: bytes) -> bool:
        assert self._writer is not None
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            return False
        self._last_write = time.perf_counter()
        return True

    async def _next_command(self) -> bytes | None:
        """The next command as Asterisk reads it, without the newline; None at EOF or idle timeout."""
        if self._pieces:
            return self._pieces.popleft()
        assert self._reader is not None
        eof = False
        try:
            async with asyncio.timeout(self.idle_timeout):
                raw = await self._reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raw, eof = exc.partial, True
        except TimeoutError:
            self._result.idle_timed_out = True
            return None
        except asyncio.LimitOverrunError:
            self._result.errors.append("command line longer than 1 MiB")
            return None
        except (ConnectionError, OSError):
            raw, eof = b"", True
        if raw:
            self._raw.extend(raw)
            if b"\0" in raw:
                self._result.errors.append(f"NUL byte in command {raw[:80]!r}")
            # fgets into a 2048-byte buffer: a long line arrives as several commands.
            for start in range(0, len(raw), AGI_READ_PIECE):
                piece = raw[start : start + AGI_READ_PIECE]
                self._pieces.append(piece[:-1] if piece.endswith(b"\n") else piece)
        if eof:
            self._result.server_closed = True
            self._result.close_delay = time.perf_counter() - self._last_write
            if self._pieces:  # a last line without newline: recorded, not answered
                self._result.commands.extend(p.decode("utf-8", "replace") for p in self._pieces)
                self._pieces.clear()
            return None
        return self._pieces.popleft() if self._pieces else None

    def _record_command(self, raw: bytes) -> str:
        line = raw.decode("utf-8", "replace")
        self._result.commands.append(line)
        self._result.turnarounds.append(time.perf_counter() - self._last_write)
        return line

    async def _send_reply(self, line: str, reply: list[str]) -> bool:
        if self.command_delay:
            await asyncio.sleep(self.command_delay)
        self._result.replies.append(reply)
        if self.on_exchange is not None:
            self.on_exchange(line, reply)
        return await self._write("".join(f"{item}\n" for item in reply).encode("utf-8"))

    async def _serve_loop(self) -> None:
        while True:
            raw = await self._next_command()
            if raw is None:
                return
            line = self._record_command(raw)
            fault = self.fault
            if fault is not None and len(self._result.commands) == fault.at:
                if fault.then != "go on":
                    await self._misbehave(fault)
                    return
                self._count += 1  # the command counts as handled
                if not await self._write(fault.send):
                    return
                continue
            reply = await self._handle(line)
            if not await self._send_reply(line, reply):
                self._result.server_closed = True
                self._result.close_delay = time.perf_counter() - self._last_write
                return

    async def _misbehave(self, fault: PeerFault) -> None:
        """Carry out ``fault`` instead of answering (see :class:`PeerFault`)."""
        assert self._writer is not None and self._reader is not None
        if fault.send:
            await self._write(fault.send)
        if fault.then == "reset":
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._writer.transport.abort()
            return
        if fault.then == "close":
            return  # run_over closes the socket
        # silent: read (and drop) whatever comes until the server closes
        try:
            async with asyncio.timeout(self.idle_timeout):
                while await self._reader.read(65536):
                    pass
        except TimeoutError:
            self._result.idle_timed_out = True
            return
        except (ConnectionError, OSError):
            pass
        self._result.server_closed = True
        self._result.close_delay = time.perf_counter() - self._last_write

    async def _replay_loop(self, capture: Mapping[str, Any]) -> None:
        exchanges: Sequence[Mapping[str, Any]] = capture["exchanges"]
        total = len(exchanges)
        for index, exchange in enumerate(exchanges, start=1):
            expected = str(exchange["send"])
            where = f"exchange {index}/{total}" + (f" (t={exchange['t']})" if "t" in exchange else "")
            raw = await self._next_command()
            if raw is None:
                why = (
                    f"the server sent nothing for {self.idle_timeout} s"
                    if self._result.idle_timed_out
                    else "the server closed the socket"
                )
                self._result.mismatches.append(f"{where}: expected {expected!r}, but {why}")
                return
            line = self._record_command(raw)
            if raw != expected.encode("utf-8"):
                self._result.mismatches.append(f"{where}: expected {expected!r}, got {line!r} (bytes {raw[:120]!r})")
                return
            if not await self._send_reply(line, [str(item) for item in exchange["recv"]]):
                self._result.mismatches.append(f"{where}: the server closed the socket before the reply")
                return
        raw = await self._next_command()
        if raw is not None:
            line = self._record_command(raw)
            self._result.mismatches.append(f"after exchange {total}/{total}: unexpected command {line!r}")

    # -- command handling -------------------------------------------------------

    async def _handle(self, line: str) -> list[str]:
        self._count += 1
        argv = parse_args(line)
        prefix: list[str] = []
        if self._dead and self._notice_pending:
            prefix, self._notice_pending = [HANGUP_LINE], False
        found = _find_command(argv)
        if found is None:
            return [*prefix, MSG_510]
        verb, handler = found
        if self._dead and verb not in DEAD_CHANNEL_VERBS:
            return [*prefix, MSG_511]
        hang_now = not self._dead and self.hangup_after == self._count
        try:
            reply = await handler(self, argv, hang_now)
        except _Usage:
            reply = [USAGE_HEAD, *_USAGE.get(verb, (f"Usage: {verb} ...",)), USAGE_TAIL]
        if hang_now and not self._dead:
            self._hang_up("caller")  # a command that does not wait: it completes, then the line drops
        return prefix + reply

    def _hang_up(self, by: str, *, notice: bool = True) -> None:
        if not self._dead:
            self._dead = True
            self._notice_pending = notice
            self._result.hung_up = True
            self._result.hangup_by = by

    def _sound_length(self, name: str) -> int:
        base = name.rsplit("/", 1)[-1]
        return self.sound_lengths.get(name, self.sound_lengths.get(base, _DEFAULT_SOUND_LENGTH))

    def _is_missing(self, name: str) -> bool:
        return name in self.missing_files or name.rsplit("/", 1)[-1] in self.missing_files

    async def _pause(self) -> None:
        if self.prompt_delay:
            await asyncio.sleep(self.prompt_delay)

    def _lookup(self, name: str) -> str | None:
        if name in self._result.variables:
            return self._result.variables[name]
        env = {key: value for key, _, value in (line.partition(": ") for line in self.env_lines)}
        builtin = {
            "CHANNEL": env.get("agi_channel"),
            "UNIQUEID": env.get("agi_uniqueid"),
            "EXTEN": env.get("agi_extension"),
            "CONTEXT": env.get("agi_context"),
            "PRIORITY": env.get("agi_priority"),
            "CALLERID(num)": self._callerid,
            "CALLERID(name)": self._calleridname,
            "CHANNEL(language)": env.get("agi_language"),
        }
        return builtin.get(name)

    async def _key(self, request: InputRequest) -> Input | None:
        return await self.caller.peek(request)

    # Handlers: (self, argv, hang_now) -> reply lines. argv includes the command words.

    async def _answer(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) != 1:
            raise _Usage
        if hang_now:
            self._hang_up("caller")
            return ["200 result=-1"]
        self._answered = True
        return ["200 result=0"]

    async def _stream_file(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) not in (4, 5):
            raise _Usage
        name, digits = argv[2], argv[3]
        self._result.played.append(name)
        if self._is_missing(name):
            return ["200 result=-1 endpos=0"]
        length = self._sound_length(name)
        if hang_now:
            self._hang_up("caller")
            return [f"200 result=-1 endpos={length // 2}"]
        await self._pause()
        key = await self._key(InputRequest("STREAM FILE", name, digits))
        if key is CALLER_HANGUP:
            self.caller.take()
            self._hang_up("caller")
            return [f"200 result=-1 endpos={length // 2}"]
        if isinstance(key, str) and key in digits:
            self.caller.take()
            return [f"200 result={ord(key)} endpos={length // 2}"]
        return [f"200 result=0 endpos={length}"]

    async def _get_data(self, argv: list[str], hang_now: bool) -> list[str]:
        if not 3 <= len(argv) <= 5:
            raise _Usage
        file = argv[2]
        timeout_ms = _atoi(argv[3]) if len(argv) > 3 else 0
        max_digits = _atoi(argv[4]) if len(argv) > 4 else 1024
        if max_digits <= 0:
            max_digits = 1024
        self._result.played.append(file)
        if hang_now:
            self._hang_up("caller")
            return ["200 result=-1"]
        await self._pause()
        digits = ""
        while len(digits) < max_digits:
            key = await self._key(InputRequest("GET DATA", None if digits else file, DTMF_KEYS, timeout_ms))
            if key is None:
                return [f"200 result={digits} (timeout)"]
            self.caller.take()
            if key is SILENCE or isinstance(key, Speak):
                return [f"200 result={digits} (timeout)"]
            if key is CALLER_HANGUP:
                self._hang_up("caller")
                return ["200 result=-1"]
            if key == "#":
                return [f"200 result={digits}"]
            digits += str(key)
        return [f"200 result={digits}"]

    async def _wait_for_digit(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) != 4 or not re.fullmatch(r"-?[0-9]+", argv[3]):
            raise _Usage
        if hang_now:
            self._hang_up("caller")
            return ["200 result=-1"]
        key = await self._key(InputRequest("WAIT FOR DIGIT", None, DTMF_KEYS, int(argv[3])))
        if key is None:
            return ["200 result=0"]
        self.caller.take()
        if key is SILENCE or isinstance(key, Speak):
            return ["200 result=0"]
        if key is CALLER_HANGUP:
            self._hang_up("caller")
            return ["200 result=-1"]
        return [f"200 result={ord(str(key))}"]

    async def _say(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) not in (4, 5):
            raise _Usage
        digits = argv[3]
        if hang_now:
            self._hang_up("caller")
            return ["200 result=-1"]
        await self._pause()
        key = await self._key(InputRequest(" ".join(argv[:2]).upper(), argv[2], digits))
        if key is CALLER_HANGUP:
            self.caller.take()
            self._hang_up("caller")
            return ["200 result=-1"]
        if isinstance(key, str) and key in digits:
            self.caller.take()
            return [f"200 result={ord(key)}"]
        return ["200 result=0"]

    async def _record_file(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) < 6 or not re.fullmatch(r"-?[0-9]+", argv[5]):
            raise _Usage
        digits = argv[4]
        if hang_now:
            self._hang_up("caller")
            return ["200 result=-1 (hangup) endpos=0"]
        await self._pause()
        key = await self._key(InputRequest("RECORD FILE", argv[2], digits, int(argv[5])))
        if isinstance(key, Speak):
            self.caller.take()
            return await self._record_speech(argv[2], argv[3], digits, key)
        if key is CALLER_HANGUP:
            self.caller.take()
            self._hang_up("caller")
            return ["200 result=-1 (hangup) endpos=0"]
        if isinstance(key, str) and key in digits:
            self.caller.take()
            return [f"200 result={ord(key)} (dtmf) endpos=8000"]
        if key is SILENCE:
            self.caller.take()
        return ["200 result=0 (timeout) endpos=0"]

    async def _record_speech(self, path: str, fmt: str, digits: str, speech: Speak) -> list[str]:
        """RECORD FILE of what the caller says: a real WAV file at ``path.fmt``."""
        pcm = speech.pcm
        if speech.hangup_at_ms is not None:
            pcm = pcm[: int(speech.hangup_at_ms * 16) // 2 * 2]
        if speech.speed:
            await asyncio.sleep(len(pcm) / 16000 / speech.speed)
        if fmt.lower() in ("wav", "wav16"):
            import wave

            with wave.open(f"{path}.{fmt}", "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(16000 if fmt.lower() == "wav16" else 8000)
                out.writeframes(pcm)
        self.recordings.append(f"{path}.{fmt}")
        endpos = len(pcm) // 2
        if speech.hangup_at_ms is not None:
            self._hang_up("caller")
            return [f"200 result=-1 (hangup) endpos={endpos}"]
        if speech.dtmf and speech.dtmf in digits:
            return [f"200 result={ord(speech.dtmf)} (dtmf) endpos={endpos}"]
        return [f"200 result=0 (timeout) endpos={endpos}"]

    async def _audiosocket(self, args: str) -> AppOutcome:
        """``AudioSocket(uuid,host:port)``: connect like Asterisk and stream the caller.

        The caller's next input decides: :class:`Speak` streams its audio (then
        silence until the server sends kind 0x00), SILENCE streams silence, a
        key is sent as a DTMF frame, CALLER_HANGUP hangs up on the socket and
        the call. Nothing scripted: return at once without connecting.
        """
        from asr.testing import FakeAudioSocketClient

        uuid_text, _, address = args.partition(",")
        host, _, port = address.rpartition(":")
        key = await self._key(InputRequest("EXEC AudioSocket", None, DTMF_KEYS))
        if key is None:
            return AppOutcome(0)
        self.caller.take()
        client = FakeAudioSocketClient(host.strip("[]") or "127.0.0.1", int(port), uuid_text)
        if isinstance(key, Speak) and key.connect_delay_ms:
            await asyncio.sleep(key.connect_delay_ms / 1000)
        if isinstance(key, Speak) and key.never_connect:
            return AppOutcome(-1)
        dropped = isinstance(key, Speak) and key.drop_at_ms is not None
        try:
            if isinstance(key, Speak):
                cut = key.drop_at_ms if key.drop_at_ms is not None else key.hangup_at_ms
                report = await client.run(key.pcm, speed=key.speed, dtmf=key.dtmf, dtmf_at_ms=key.dtmf_at_ms,
                                          hangup_at_ms=cut, continuous=key.continuous,
                                          trailing_silence_ms=key.trailing_silence_ms)
            elif key is CALLER_HANGUP:
                report = await client.run(b"", hangup_at_ms=0)
            elif key is SILENCE:
                report = await client.run(b"", trailing_silence_ms=60_000)
            else:
                report = await client.run(b"", dtmf=str(key), trailing_silence_ms=5000)
        except OSError:  # like Asterisk: "could not connect to AudioSocket server", the application fails
            return AppOutcome(-1)
        self.audiosocket_reports.append(report)
        if dropped:  # the link failed, the caller is still there
            return AppOutcome(-1)
        if report.hung_up:
            self._hang_up("caller")
            return AppOutcome(-1)
        return AppOutcome(0)

    async def _set_variable(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) != 4:
            raise _Usage
        name, value = argv[2], argv[3]
        self._result.variables_set.append((name, value))
        self._result.variables[name.lstrip("_") or name] = value
        return ["200 result=1"]

    async def _get_variable(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) != 3:
            raise _Usage
        value = self._lookup(argv[2])
        return ["200 result=0"] if value is None else [f"200 result=1 ({value})"]

    async def _get_full_variable(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) not in (4, 5):
            raise _Usage
        expanded = re.sub(r"\$\{([^{}]*)\}", lambda m: self._lookup(m.group(1)) or "", argv[3])
        return [f"200 result=1 ({expanded})"]

    async def _exec(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) < 2:
            raise _Usage
        app, args = argv[1], (argv[2] if len(argv) > 2 else "")
        handler = self.apps.get(app.lower())
        if handler is None:
            return ["200 result=-2"]
        if handler is _AUDIOSOCKET:
            handler = self._audiosocket
        self._result.executed.append((app, args))
        if self._dead:
            return ["200 result=-1"]
        if hang_now:
            self._hang_up("caller")
            return ["200 result=-1"]
        outcome = handler if isinstance(handler, AppOutcome) else handler(args)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        assert isinstance(outcome, AppOutcome)
        self._result.variables.update(outcome.variables)
        await self._pause()
        if outcome.hangup:
            self._hang_up("app", notice=outcome.hangup_notice)
        return [f"200 result={outcome.result}"]

    async def _channel_status(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) not in (2, 3):
            raise _Usage
        return [f"200 result={6 if self._answered else 4}"]

    async def _verbose(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) < 2:
            raise _Usage
        return ["200 result=1"]

    async def _hangup(self, argv: list[str], hang_now: bool) -> list[str]:
        if len(argv) not in (1, 2):
            raise _Usage
        self._hang_up("server")
        return ["200 result=1"]

    async def _noop(self, argv: list[str], hang_now: bool) -> list[str]:
        return ["200 result=0"]


def _atoi(text: str) -> int:
    """C ``atoi``: leading integer, 0 if none."""
    match = re.match(r"\s*([-+]?[0-9]+)", text)
    return int(match.group(1)) if match else 0


_COMMANDS: Final[Mapping[tuple[str, ...], Handler]] = {
    ("ANSWER",): FakeAsterisk._answer,
    ("STREAM", "FILE"): FakeAsterisk._stream_file,
    ("GET", "DATA"): FakeAsterisk._get_data,
    ("WAIT", "FOR", "DIGIT"): FakeAsterisk._wait_for_digit,
    ("SAY", "DIGITS"): FakeAsterisk._say,
    ("SAY", "NUMBER"): FakeAsterisk._say,
    ("SAY", "ALPHA"): FakeAsterisk._say,
    ("RECORD", "FILE"): FakeAsterisk._record_file,
    ("SET", "VARIABLE"): FakeAsterisk._set_variable,
    ("GET", "VARIABLE"): FakeAsterisk._get_variable,
    ("GET", "FULL", "VARIABLE"): FakeAsterisk._get_full_variable,
    ("EXEC",): FakeAsterisk._exec,
    ("CHANNEL", "STATUS"): FakeAsterisk._channel_status,
    ("VERBOSE",): FakeAsterisk._verbose,
    ("HANGUP",): FakeAsterisk._hangup,
    ("NOOP",): FakeAsterisk._noop,
}

_USAGE: Final[Mapping[str, Sequence[str]]] = {
    "STREAM FILE": _STREAM_FILE_USAGE,
    "GET DATA": ("Stream the given file, and receive DTMF data.",),
    "WAIT FOR DIGIT": ("Waits up to timeout milliseconds for channel to receive a DTMF digit.",),
    "SET VARIABLE": ("Sets a variable to the current channel.",),
    "GET VARIABLE": ("Returns <literal>0</literal> if variablename is not set.",),
    "RECORD FILE": ("Record to a file until a given dtmf digit in the sequence is received.",),
}


def _find_command(argv: Sequence[str]) -> tuple[str, Handler] | None:
    """The longest known command whose words start ``argv`` (case-insensitive)."""
    words = tuple(word.upper() for word in argv[:3])
    for size in (3, 2, 1):
        handler = _COMMANDS.get(words[:size]) if len(words) >= size else None
        if handler is not None:
            return " ".join(words[:size]), handler
    return None


async def replay_capture(
    path: str | Path | Mapping[str, Any],
    host: str = "127.0.0.1",
    port: int = DEFAULT_AGI_PORT,
    *,
    strict: bool = True,
    idle_timeout: float = 2.0,
) -> FakeCallResult:
    """Replay one capture against the server at ``host:port`` (see :meth:`FakeAsterisk.replay`)."""
    return await FakeAsterisk.replay(path, host, port, strict=strict, idle_timeout=idle_timeout).run()
