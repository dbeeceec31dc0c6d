"""A fake Asterisk manager (AMI) peer for tests: a real asyncio TCP server.

It speaks AMI the way ``tests/fixtures/asterisk/ami-*.txt`` shows Asterisk 22
doing it: CRLF lines, an empty line after each message, the banner
``Asterisk Call Manager/11.0.0``, ``ActionID`` right after ``Response``, and
the exact wording of the replies (``Authentication accepted``, ``Already
authenticated``, ``Originate successfully queued``, the unknown-action error
...). Field order of ``QueueStatus``/``QueueSummary`` events and of
``OriginateResponse`` is copied from the captures, so a test can compare the
fake's bytes with the recorded ones.

It parses what clients send independently of :mod:`ivr.ami` (lines split on
LF, as Asterisk's ``get_input`` does, CR stripped) and records every action as
a dict, so a test can assert exactly which actions and headers reached
"Asterisk". ``Originate``'s ``Variable:`` headers are additionally split with
a port of Asterisk's own argument parser (:func:`separate_app_args`), so a
test sees the variables Asterisk would set.

Test controls: :meth:`FakeAmiServer.emit`, :meth:`~FakeAmiServer.replay_events`
(real recorded events from a capture file), :meth:`~FakeAmiServer.drop` (cut
every connection), :meth:`~FakeAmiServer.stop` / :meth:`~FakeAmiServer.start`
on the same port (an Asterisk restart), :meth:`~FakeAmiServer.delay_action`
and :meth:`~FakeAmiServer.ignore_action` (slow or silent Asterisk), per-channel
``Originate`` outcomes, queues, channels and variables, and
:meth:`~FakeAmiServer.drop_during_originate` (the link drops at a chosen
moment of an Originate, which Asterisk carries on with regardless).

Asterisk's database (AstDB) is modelled for ``DBGet``/``DBPut``, and so is the
shipped callback dialplan's use of it (``asterisk_conf/extensions.conf``,
``ivr-callback-out``): an Originate that carries ``IVR_CALLBACK_DIAL`` and
rings a customer notes ``ivr-callback/<dial id>`` = ``DIALLING`` and then the
``DIALSTATUS`` (``ANSWER`` when the customer answered). Asterisk does not
replay events a client missed while its link was down; neither does the fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ivr import names

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
CRLF = "\r\n"

#: An action or event as parsed from the wire: repeated headers become lists.
Headers = dict[str, Union[str, list[str]]]
#: What :meth:`FakeAmiServer.replay_events` accepts: a capture file, or
#: events as mappings or raw message text.
EventSource = Union[str, Path, Sequence[Union[Mapping[str, object], str, bytes]]]

#: ``Originate`` outcome name -> (``Response``, ``Reason``) of OriginateResponse.
ORIGINATE_OUTCOMES: dict[str, tuple[str, int]] = {
    "answered": ("Success", 4),
    "busy": ("Failure", 5),
    "noanswer": ("Failure", 3),
    "congestion": ("Failure", 8),
    "hangup": ("Failure", 1),
    "failed": ("Failure", 0),
}

UNKNOWN = "<unknown>"

#: DIALSTATUS the callback dialplan notes in AstDB for each Originate outcome.
DIAL_STATUSES: dict[str, str] = {
    "answered": "ANSWER", "busy": "BUSY", "noanswer": "NOANSWER",
    "congestion": "CONGESTION", "hangup": "CANCEL", "failed": "CHANUNAVAIL",
}

#: Moments of an Originate at which :meth:`FakeAmiServer.drop_during_originate`
#: cuts the link: ``before`` (Asterisk never runs it), ``after-send`` (it runs;
#: the link drops before the response), ``after-response`` (it runs; the link
#: drops right after ``Originate successfully queued``), ``after-answer``
#: (the customer answered; the link drops before the ``OriginateResponse``).
DROP_STAGES = ("before", "after-send", "after-response", "after-answer")

#: Q.850 cause a SIP peer reports for each failed Originate outcome.
HANGUP_CAUSES: dict[str, tuple[int, str]] = {
    "busy": (17, "User busy"),
    "noanswer": (19, "No user response"),
    "congestion": (34, "Circuit/channel congestion"),
    "hangup": (16, "Normal Clearing"),
    "failed": (0, "Unknown"),
}


# -- wire helpers ---------------------------------------------------------------


def format_message(headers: Mapping[str, object] | Sequence[tuple[str, object]]) -> bytes:
    """Serialise headers as AMI: ``Name: value`` CRLF lines, then an empty line.

    A list value becomes repeated headers. Values are written as given: the
    fake does not protect clients from what a test chooses to send.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines: list[str] = []
    for name, value in items:
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{name}: {item}")
    return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8")


def parse_block(block: str | bytes) -> Headers:
    """Parse one message (without its terminating empty line) into a dict."""
    text = block.decode("utf-8", "replace") if isinstance(block, bytes) else block
    headers: Headers = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        _add_header(headers, name.strip(), value[1:] if value.startswith(" ") else value)
    return headers


def _add_header(headers: Headers, name: str, value: str) -> None:
    previous = headers.get(name)
    if previous is None:
        headers[name] = value
    elif isinstance(previous, list):
        previous.append(value)
    else:
        headers[name] = [previous, value]


def header(headers: Mapping[str, object], name: str, default: str = "") -> str:
    """First value of header ``name`` (case-insensitive, as Asterisk matches)."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            if isinstance(value, list):
                return str(value[0]) if value else default
            return str(value)
    return default


def header_values(headers: Mapping[str, object], name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive), in order."""
    wanted = name.lower()
    values: list[str] = []
    for key, value in headers.items():
        if key.lower() == wanted:
            values.extend(str(item) for item in (value if isinstance(value, list) else [value]))
    return values


def read_capture(path: str | Path) -> list[bytes]:
    """Split a raw AMI capture into message blocks (without the empty line);
    the banner line is removed."""
    data = Path(path).read_bytes()
    if data.startswith(BANNER):
        data = data[len(BANNER):]
    return [block for block in data.split(b"\r\n\r\n") if block.strip()]


def separate_app_args(value: str, delim: str = ",", max_args: int = 64) -> list[str]:
    """Port of Asterisk's ``__ast_app_separate_args`` with ``remove_chars=1``
    (main/app.c), which ``Originate`` applies to each ``Variable:`` value.

    Splits on ``delim`` outside ``()``, ``[]`` and double quotes; removes
    double quotes; a backslash is removed and makes the next character literal.
    """
    args: list[str] = []
    pos, end = 0, len(value)
    paren = bracket = 0
    quote = False
    ended_on_delim = False
    while pos < end and len(args) < max_args - 1:
        current: list[str] = []
        ended_on_delim = False
        while pos < end:
            char = value[pos]
            if char == "(":
                paren += 1
            elif char == ")":
                paren = max(paren - 1, 0)
            elif char == "[":
                bracket += 1
            elif char == "]":
                bracket = max(bracket - 1, 0)
            elif char == '"' and delim != '"':
                quote = not quote
                pos += 1
                continue
            elif char == "\\":
                pos += 1
                if pos < end:
                    current.append(value[pos])
                    pos += 1
                continue
            elif char == delim and not (paren or quote or bracket):
                pos += 1
                ended_on_delim = True
                break
            current.append(char)
            pos += 1
        args.append("".join(current))
    if pos < end:
        args.append(value[pos:])
    elif ended_on_delim:
        args.append("")
    return args


def originate_variables(action: Mapping[str, object]) -> dict[str, str]:
    """The channel variables Asterisk would set from an Originate's headers
    (``man_do_variable_value`` in main/manager.c)."""
    variables: dict[str, str] = {}
    for raw in header_values(action, "Variable"):
        for item in separate_app_args(raw.lstrip(" \t")):
            name, sep, value = item.partition("=")
            if sep and name:
                variables[name] = value
    return variables


def _event_tv(moment: float | None = None) -> str:
    stamp = dt.datetime.fromtimestamp(time.time() if moment is None else moment, dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}+0000"


# -- configuration objects --------------------------------------------------------


@dataclass
class FakeQueueMember:
    """A ``QueueMember`` as reported by ``QueueStatus`` (defaults from the capture)."""

    name: str
    location: str
    state_interface: str | None = None
    membership: str = "static"
    penalty: int = 0
    calls_taken: int = 0
    last_call: int = 0
    last_pause: int = 0
    login_time: int = 0
    in_call: int = 0
    status: int = 1            # device state: 1 not in use, 2 in use, 5 unavailable
    paused: int = 0
    paused_reason: str = ""
    wrapuptime: int = 0


@dataclass
class FakeQueueEntry:
    """A caller waiting in a queue (``QueueEntry``); position is the list order."""

    channel: str
    uniqueid: str
    caller_id_num: str = "unknown"
    caller_id_name: str = "unknown"
    connected_line_num: str | None = None     # defaults to caller_id_num
    connected_line_name: str = "unknown"
    wait: int = 0
    priority: int = 0


@dataclass
class FakeQueue:
    """A queue for ``QueueStatus`` / ``QueueSummary``."""

    name: str
    strategy: str = "ringall"
    max: int = 0
    holdtime: int = 0
    talktime: int = 0
    completed: int = 0
    abandoned: int = 0
    service_level: int = 0
    service_level_perf: float = 0.0
    service_level_perf2: float = 0.0
    weight: int = 0
    members: list[FakeQueueMember] = field(default_factory=list)
    entries: list[FakeQueueEntry] = field(default_factory=list)


@dataclass
class FakeOriginate:
    """An ``Originate`` the fake accepted, with the variables Asterisk would set."""

    action: Headers
    channel: str
    variables: dict[str, str]
    outcome: str
    action_id: str
    #: the Uniqueid of the channel it created (its ChannelId when given)
    uniqueid: str = ""


@dataclass(eq=False)
class _Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    session_id: str
    local: str
    remote: str
    started: float = field(default_factory=time.time)
    authenticated: bool = False
    events: bool = True
    username: str = ""

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


# -- the server ---------------------------------------------------------------------


class FakeAmiServer:
    """A fake Asterisk manager on ``127.0.0.1`` (an ephemeral port by default).

    Use as ``async with FakeAmiServer() as fake:``; connect to ``fake.port``
    with ``fake.username``/``fake.secret``.
    """

    def __init__(self, *, username: str = "ivr", secret: str = "secret",
                 host: str = "127.0.0.1", port: int = 0,
                 originate_delay: float = 0.01) -> None:
        self.username = username
        self.secret = secret
        self.host = host
        self._port = port
        #: Seconds between an async Originate and its OriginateResponse.
        self.originate_delay = originate_delay
        #: Every action received, in order, as parsed dicts.
        self.actions: list[Headers] = []
        #: Successful logins (a reconnecting client logs in again).
        self.logins = 0
        #: Originates accepted, with the variables Asterisk would set.
        self.originated: list[FakeOriginate] = []
        #: Live channels and their variables (Getvar/Setvar/Redirect need one).
        self.channels: dict[str, dict[str, str]] = {}
        self.global_vars: dict[str, str] = {}
        self.queues: dict[str, FakeQueue] = {}
        #: Channel -> outcome name (see ORIGINATE_OUTCOMES); others get the default.
        self.originate_outcomes: dict[str, str] = {}
        self.default_originate_outcome = "answered"
        #: (context, exten) pairs that do not exist: Originate fails at once.
        self.missing_extensions: set[tuple[str, str]] = set()
        #: (channel, context, exten, priority) of each successful Redirect.
        self.redirects: list[tuple[str, str, str, str]] = []
        #: Asterisk's database: (family, key) -> value (DBGet, DBPut, the callback dialplan).
        self.astdb: dict[tuple[str, str], str] = {}
        self._originate_drop: str | None = None

        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._delays: dict[str, float] = {}
        self._ignored: set[str] = set()
        self._action_seen = asyncio.Event()
        self._booted = time.time()
        self._channel_seq = itertools.count(1)
        self._uniqueid_seq = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (fixed after the first start, kept across restarts)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def session_count(self) -> int:
        """Open client connections."""
        return len(self._sessions)

    async def start(self) -> None:
        """Listen (again) on the same host and port."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, self.host, self._port,
                                                  reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        self._booted = time.time()

    async def stop(self, *, shutdown_event: bool = True) -> None:
        """Stop listening and close every connection, as an Asterisk shutdown
        does (first sending ``Event: Shutdown`` unless told not to)."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for session in list(self._sessions):
            if shutdown_event and session.authenticated:
                session.send(format_message([("Event", "Shutdown"), ("Privilege", "system,all"),
                                             ("Shutdown", "Cleanly"), ("Restart", "True")]))
            session.writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closed writers end the handlers (EOF); cancel only stragglers.
        if self._tasks:
            _, stragglers = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in stragglers:
                task.cancel()
        self._sessions.clear()

    async def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down for ``downtime`` seconds, start on the same port."""
        await self.stop()
        await asyncio.sleep(downtime)
        await self.start()

    async def drop(self) -> None:
        """Cut every client connection at once (no goodbye); keep listening."""
        for session in list(self._sessions):
            session.writer.transport.abort()
        await asyncio.sleep(0)

    async def __aenter__(self) -> "FakeAmiServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(shutdown_event=False)

    # -- test controls -------------------------------------------------------------

    def delay_action(self, name: str, seconds: float) -> None:
        """Answer actions called ``name`` only after ``seconds``."""
        self._delays[name.lower()] = seconds

    def ignore_action(self, name: str) -> None:
        """Record but never answer actions called ``name``."""
        self._ignored.add(name.lower())

    def clear_action_rules(self) -> None:
        """Undo :meth:`delay_action` and :meth:`ignore_action`."""
        self._delays.clear()
        self._ignored.clear()

    def add_channel(self, name: str, **variables: str) -> None:
        """Make a live channel known (for Getvar, Setvar, Redirect)."""
        self.channels.setdefault(name, {}).update(variables)

    def add_queue(self, queue: FakeQueue) -> None:
        self.queues[queue.name] = queue

    def set_originate_outcome(self, channel: str, outcome: str) -> None:
        """Outcome of Originates to ``channel``: a key of ORIGINATE_OUTCOMES."""
        if outcome not in ORIGINATE_OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.originate_outcomes[channel] = outcome

    def drop_during_originate(self, stage: str) -> None:
        """Cut every connection at ``stage`` of the next Originate (see
        :data:`DROP_STAGES`); Asterisk goes on with the call regardless."""
        if stage not in DROP_STAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {DROP_STAGES}")
        self._originate_drop = stage

    def _cut_all(self) -> None:
        for session in list(self._sessions):
            session.writer.transport.abort()
            self._sessions.discard(session)

    def actions_named(self, name: str) -> list[Headers]:
        """Recorded actions whose ``Action`` is ``name`` (case-insensitive)."""
        return [a for a in self.actions if header(a, "Action").lower() == name.lower()]

    async def wait_for_action(self, name: str, count: int = 1, timeout: float = 5.0) -> Headers:
        """Wait until ``count`` actions called ``name`` arrived; return the last."""
        async with asyncio.timeout(timeout):
            while len(self.actions_named(name)) < count:
                event = self._action_seen
                await event.wait()
        return self.actions_named(name)[count - 1]

    async def emit(self, event: Mapping[str, object] | str | bytes) -> None:
        """Send one event to every logged-in client (with events on)."""
        await self._broadcast([self._event_bytes(event)])

    async def replay_events(self, source: EventSource, *, names: Sequence[str] | None = None,
                            interval: float = 0.0) -> int:
        """Send recorded events to every logged-in client, in order.

        ``source`` is a capture file (its events are sent byte for byte as
        recorded; responses are skipped) or a list of events (mappings or raw
        message text). ``names`` keeps only those event names. Returns the
        number of events sent.
        """
        if isinstance(source, (str, Path)):
            blocks = [block + b"\r\n\r\n" for block in read_capture(source)
                      if block.startswith(b"Event:")]
        else:
            blocks = [self._event_bytes(item) for item in source]
        if names is not None:
            wanted = {name.lower() for name in names}
            blocks = [b for b in blocks if header(parse_block(b), "Event").lower() in wanted]
        if interval > 0:
            for block in blocks:
                await self._broadcast([block])
                await asyncio.sleep(interval)
        else:
            await self._broadcast(blocks)
        return len(blocks)

    # -- connection handling ----------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local = writer.get_extra_info("sockname") or ("127.0.0.1", 0)
        remote = writer.get_extra_info("peername") or ("127.0.0.1", 0)
        session = _Session(reader, writer, session_id=hex(id(writer)),
                           local=f"IPV4/TCP/{local[0]}/{local[1]}",
                           remote=f"IPV4/TCP/{remote[0]}/{remote[1]}")
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._sessions.add(session)
        session.send(BANNER)
        try:
            lines: list[str] = []
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
                if line:
                    lines.append(line)
                elif lines:
                    self._on_action(session, parse_block("\n".join(lines)))
                    lines = []
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):  # ValueError: line too long
            pass
        finally:
            self._sessions.discard(session)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    def _on_action(self, session: _Session, action: Headers) -> None:
        self.actions.append(action)
        self._action_seen.set()
        self._action_seen = asyncio.Event()
        name = header(action, "Action").lower()
        if name in self._ignored:
            return
        delay = self._delays.get(name)
        if delay:
            loop = asyncio.get_running_loop()
            handle = loop.call_later(delay, self._answer, session, action)
            self._timers.add(handle)
        else:
            self._answer(session, action)

    def _answer(self, session: _Session, action: Headers) -> None:
        if session not in self._sessions:
            return
        name = header(action, "Action").lower()
        if not name:
            session.send(self._response(action, "Error", Message="Missing action in request"))
            return
        if not session.authenticated and name not in ("login", "logoff", "challenge"):
            session.send(self._response(action, "Error", Message="Permission denied"))
            return
        handler = getattr(self, f"_action_{name}", None)
        if handler is None:
            self._unknown_action(session, action)
        else:
            handler(session, action)

    # -- replies -------------------------------------------------------------------------

    @staticmethod
    def _response(action: Mapping[str, object], status: str, **fields: object) -> bytes:
        headers: list[tuple[str, object]] = [("Response", status)]
        action_id = header(action, "ActionID")
        if action_id:
            headers.append(("ActionID", action_id))
        headers.extend(fields.items())
        return format_message(headers)

    @staticmethod
    def _event_bytes(event: Mapping[str, object] | str | bytes) -> bytes:
        if isinstance(event, bytes):
            return event if event.endswith(b"\r\n\r\n") else event.rstrip(b"\r\n") + b"\r\n\r\n"
        if isinstance(event, str):
            return FakeAmiServer._event_bytes(event.encode("utf-8"))
        items = list(event.items())
        items.sort(key=lambda item: item[0].lower() != "event")  # Event: first
        return format_message(items)

    async def _broadcast(self, blocks: Sequence[bytes]) -> None:
        for session in list(self._sessions):
            if session.authenticated and session.events:
                for block in blocks:
                    session.send(block)
                with contextlib.suppress(ConnectionError):
                    await session.writer.drain()

    def _send_event_now(self, event: Sequence[tuple[str, object]]) -> None:
        data = format_message(event)
        for session in list(self._sessions):
            if session.authenticated and session.events:
                session.send(data)

    def _security_event(self, session: _Session, name: str, severity: str,
                        extra_before: Sequence[tuple[str, object]] = (),
                        extra_after: Sequence[tuple[str, object]] = ()) -> bytes:
        return format_message([
            ("Event", name), ("Privilege", "security,all"), ("EventTV", _event_tv()),
            ("Severity", severity), ("Service", "AMI"), ("EventVersion", "1"),
            *extra_before,
            ("SessionID", session.session_id), ("LocalAddress", session.local),
            ("RemoteAddress", session.remote), *extra_after,
        ])

    def _unknown_action(self, session: _Session, action: Headers) -> None:
        name = header(action, "Action")
        session.send(self._response(
            action, "Error",
            Message=f"Invalid/unknown command: {name}. "
                    f"Use Action: ListCommands to show available commands."))
        if session.authenticated and session.events:
            session.send(self._security_event(
                session, "RequestBadFormat", "Error",
                extra_after=[("RequestType", f"Action: {name}"),
                             ("SessionTV", _event_tv(session.started)),
                             ("AccountID", session.username)]))

    def _action_login(self, session: _Session, action: Headers) -> None:
        if session.authenticated:
            session.send(self._response(action, "Success", Message="Already authenticated"))
            return
        if header(action, "Username") != self.username or header(action, "Secret") != self.secret:
            session.send(self._response(action, "Error", Message="Authentication failed"))
            session.writer.close()
            return
        session.authenticated = True
        session.username = header(action, "Username")
        session.events = header(action, "Events", "on").lower() != "off"
        self.logins += 1
        session.send(self._response(action, "Success", Message="Authentication accepted"))
        if session.events:
            uptime = int(time.time() - self._booted)
            session.send(format_message([
                ("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", uptime),
                ("LastReload", uptime), ("Status", "Fully Booted")]))
            session.send(self._security_event(
                session, "SuccessfulAuth", "Informational",
                extra_before=[("AccountID", session.username)],
                extra_after=[("UsingPassword", "0"), ("SessionTV", _event_tv(session.started))]))

    def _action_logoff(self, session: _Session, action: Headers) -> None:
        session.send(self._response(action, "Goodbye", Message="Thanks for all the fish."))
        session.writer.close()

    def _action_ping(self, session: _Session, action: Headers) -> None:
        session.send(self._response(action, "Success", Ping="Pong",
                                    Timestamp=f"{time.time():.6f}"))

    def _var_scope(self, session: _Session, action: Headers) -> tuple[str, dict[str, str]] | None:
        """Getvar/Setvar: the variable and the channel (or global) variables it lives in,
        or None after answering the error Asterisk gives."""
        variable = header(action, "Variable")
        channel = header(action, "Channel")
        if not variable:
            session.send(self._response(action, "Error", Message="No variable specified"))
            return None
        if channel and channel not in self.channels:
            session.send(self._response(action, "Error", Message="No such channel"))
            return None
        return variable, (self.channels[channel] if channel else self.global_vars)

    def _action_getvar(self, session: _Session, action: Headers) -> None:
        if (found := self._var_scope(session, action)) is None:
            return
        variable, scope = found
        session.send(self._response(action, "Success", Variable=variable, Value=scope.get(variable, "")))

    def _action_setvar(self, session: _Session, action: Headers) -> None:
        if (found := self._var_scope(session, action)) is None:
            return
        variable, scope = found
        scope[variable] = header(action, "Value")
        session.send(self._response(action, "Success", Message="Variable Set"))

    def _action_redirect(self, session: _Session, action: Headers) -> None:
        channel = header(action, "Channel")
        if not channel:
            session.send(self._response(action, "Error", Message="Channel not specified"))
            return
        if channel not in self.channels:
            session.send(self._response(action, "Error",
                                        Message=f"Channel does not exist: {channel}"))
            return
        self.redirects.append((channel, header(action, "Context"), header(action, "Exten"),
                               header(action, "Priority", "1")))
        session.send(self._response(action, "Success", Message="Redirect successful"))

    def _action_originate(self, session: _Session, action: Headers) -> None:
        drop, self._originate_drop = self._originate_drop, None
        if drop == "before":
            self._cut_all()  # it never reached the manager thread
            return
        channel = header(action, "Channel")
        if not channel:
            session.send(self._response(action, "Error", Message="Channel not specified"))
            return
        context, exten = header(action, "Context"), header(action, "Exten")
        if exten and (context, exten) in self.missing_extensions:
            session.send(self._response(action, "Error", Message="Extension does not exist."))
            return
        if header(action, "ChannelId") and any(
                o.uniqueid == header(action, "ChannelId") for o in self.originated):
            # __ast_channel_alloc refuses a Uniqueid in use; manager.c answers this way
            session.send(self._response(action, "Error", Message="Originate failed"))
            return
        outcome = self.originate_outcomes.get(channel, self.default_originate_outcome)
        self.originated.append(FakeOriginate(
            action=action, channel=channel, variables=originate_variables(action),
            outcome=outcome, action_id=header(action, "ActionID"),
            uniqueid=header(action, "ChannelId") or f"{int(self._booted)}.{next(self._uniqueid_seq)}"))
        is_async = header(action, "Async").lower() in ("true", "yes", "1", "on")
        if drop == "after-send":
            self._cut_all()
        elif is_async:
            session.send(self._response(action, "Success",
                                        Message="Originate successfully queued"))
            if drop == "after-response":
                session.writer.close()  # the response goes out, then the link is gone
                self._sessions.discard(session)
        loop = asyncio.get_running_loop()
        # the channel is created and its dialplan starts at once (the customer's phone
        # rings); the answer, and the OriginateResponse, come originate_delay later
        loop.call_soon(self._note_dial, action, None)
        handle = loop.call_later(self.originate_delay, self._originate_done,
                                 session, action, outcome, is_async, drop == "after-answer")
        self._timers.add(handle)

    def _note_dial(self, action: Headers, outcome: str | None) -> None:
        """The shipped callback dialplan's AstDB note (ivr-callback-out):
        DIALLING when it starts ringing the customer (``outcome`` None), then
        the DIALSTATUS."""
        variables = {name.lstrip("_"): value for name, value in originate_variables(action).items()}
        dial = variables.get(names.VAR_CALLBACK_DIAL, "")
        channel = header(action, "Channel")
        rings_customer = f"@{names.CONTEXT_CALLBACK_OUT}" in channel.lower()
        if dial and rings_customer:
            key = "".join(ch for ch in dial if ch.isalnum() or ch == "-")
            self.astdb[(names.ASTDB_CALLBACK, key)] = (
                "DIALLING" if outcome is None else DIAL_STATUSES.get(outcome, "CHANUNAVAIL"))

    def _originate_done(self, session: _Session, action: Headers, outcome: str,
                        is_async: bool, drop_before_event: bool = False) -> None:
        response, reason = ORIGINATE_OUTCOMES[outcome]
        channel = header(action, "Channel")
        answered = response == "Success"
        self._note_dial(action, outcome)
        if drop_before_event:
            self._cut_all()
        if answered:
            channel = self._channel_name(channel)
            self.add_channel(channel, **originate_variables(action))
        if not is_async:
            if session in self._sessions:
                if answered:
                    session.send(self._response(action, "Success",
                                                Message="Originate successfully queued"))
                else:
                    session.send(self._response(action, "Error", Message="Originate failed"))
            return
        number, name = _split_caller_id(header(action, "CallerID"))
        event: list[tuple[str, object]] = [("Event", "OriginateResponse"),
                                           ("Privilege", "call,all")]
        if header(action, "ActionID"):
            event.append(("ActionID", header(action, "ActionID")))
        event += [("Response", response), ("Channel", channel)]
        if header(action, "Application"):
            event += [("Application", header(action, "Application")),
                      ("Data", header(action, "Data"))]
        else:
            event += [("Context", header(action, "Context")), ("Exten", header(action, "Exten"))]
        requested_id = header(action, "ChannelId")
        created = next((o.uniqueid for o in self.originated if o.action is action), "")
        uniqueid = (requested_id or created) if answered else UNKNOWN
        event += [("Reason", reason), ("Uniqueid", uniqueid),
                  ("CallerIDNum", number), ("CallerIDName", name)]
        if answered:
            self.channels[channel]["UNIQUEID"] = uniqueid
        self._send_event_now(event)
        if not answered:
            # as in ami-session-2.txt: the failed channel's Hangup follows (a Local
            # channel reports cause 0 "Unknown"; a SIP peer the network's cause)
            cause, text = HANGUP_CAUSES.get(outcome, (0, "Unknown"))
            if header(action, "Channel").lower().startswith("local/"):
                cause, text = 0, "Unknown"
            self._send_event_now([
                ("Event", "Hangup"), ("Privilege", "call,all"),
                ("Channel", self._channel_name(header(action, "Channel"))), ("ChannelState", "0"),
                ("ChannelStateDesc", "Down"), ("CallerIDNum", UNKNOWN), ("CallerIDName", UNKNOWN),
                ("Uniqueid", requested_id or created),
                ("Cause", cause), ("Cause-txt", text)])

    def _channel_name(self, requested: str) -> str:
        """The name Asterisk gives the created channel (``Local/s@ctx-0000000c;1``)."""
        seq = next(self._channel_seq)
        if requested.lower().startswith("local/"):
            base = requested.split("/")[0] + "/" + requested.split("/")[1]
            return f"{base}-{seq:08x};1"
        return f"{requested}-{seq:08x}"

    def _action_dbget(self, session: _Session, action: Headers) -> None:
        # manager_dbget in main/db.c (Asterisk 13+): a list answer, or an error
        family, key = header(action, "Family"), header(action, "Key")
        if not family:
            session.send(self._response(action, "Error", Message="No family specified."))
            return
        if not key:
            session.send(self._response(action, "Error", Message="No key specified."))
            return
        value = self.astdb.get((family, key))
        if value is None:
            session.send(self._response(action, "Error", Message="Database entry not found"))
            return
        action_id = header(action, "ActionID")
        tail = [("ActionID", action_id)] if action_id else []
        session.send(self._response(action, "Success", EventList="start",
                                    Message="Result will follow"))
        session.send(format_message([("Event", "DBGetResponse"), ("Family", family),
                                     ("Key", key), ("Val", value), *tail]))
        session.send(format_message([("Event", "DBGetComplete"), *tail,
                                     ("EventList", "Complete"), ("ListItems", 1)]))

    def _action_dbput(self, session: _Session, action: Headers) -> None:
        family, key = header(action, "Family"), header(action, "Key")
        if not family or not key:
            session.send(self._response(action, "Error",
                                        Message="No family specified." if not family else "No key specified."))
            return
        self.astdb[(family, key)] = header(action, "Val")
        session.send(self._response(action, "Success", Message="Updated database successfully"))

    def _action_queuestatus(self, session: _Session, action: Headers) -> None:
        wanted = header(action, "Queue")
        queues = [q for q in self.queues.values() if not wanted or q.name == wanted]
        action_id = header(action, "ActionID")
        tail = [("ActionID", action_id)] if action_id else []
        session.send(self._response(action, "Success", EventList="start",
                                    Message="Queue status will follow"))
        items = 0
        for queue in queues:
            session.send(format_message([
                ("Event", "QueueParams"), ("Queue", queue.name), ("Max", queue.max),
                ("Strategy", queue.strategy), ("Calls", len(queue.entries)),
                ("Holdtime", queue.holdtime), ("TalkTime", queue.talktime),
                ("Completed", queue.completed), ("Abandoned", queue.abandoned),
                ("ServiceLevel", queue.service_level),
                ("ServicelevelPerf", f"{queue.service_level_perf:.1f}"),
                ("ServicelevelPerf2", f"{queue.service_level_perf2:.1f}"),
                ("Weight", queue.weight), *tail]))
            items += 1
            for m in queue.members:
                session.send(format_message([
                    ("Event", "QueueMember"), ("Queue", queue.name), ("Name", m.name),
                    ("Location", m.location),
                    ("StateInterface", m.state_interface or m.location),
                    ("Membership", m.membership), ("Penalty", m.penalty),
                    ("CallsTaken", m.calls_taken), ("LastCall", m.last_call),
                    ("LastPause", m.last_pause), ("LoginTime", m.login_time),
                    ("InCall", m.in_call), ("Status", m.status), ("Paused", m.paused),
                    ("PausedReason", m.paused_reason), ("Wrapuptime", m.wrapuptime), *tail]))
                items += 1
            for position, e in enumerate(queue.entries, start=1):
                session.send(format_message([
                    ("Event", "QueueEntry"), ("Queue", queue.name), ("Position", position),
                    ("Channel", e.channel), ("Uniqueid", e.uniqueid),
                    ("CallerIDNum", e.caller_id_num), ("CallerIDName", e.caller_id_name),
                    ("ConnectedLineNum", e.connected_line_num or e.caller_id_num),
                    ("ConnectedLineName", e.connected_line_name), ("Wait", e.wait),
                    ("Priority", e.priority), *tail]))
                items += 1
        session.send(format_message([("Event", "QueueStatusComplete"), *tail,
                                     ("EventList", "Complete"), ("ListItems", items)]))

    def _action_queuesummary(self, session: _Session, action: Headers) -> None:
        wanted = header(action, "Queue")
        queues = [q for q in self.queues.values() if not wanted or q.name == wanted]
        action_id = header(action, "ActionID")
        tail = [("ActionID", action_id)] if action_id else []
        session.send(self._response(action, "Success", EventList="start",
                                    Message="Queue summary will follow"))
        for queue in queues:
            logged_in = [m for m in queue.members if m.status not in (4, 5)]
            available = [m for m in logged_in if m.status in (0, 1) and not m.paused]
            session.send(format_message([
                ("Event", "QueueSummary"), ("Queue", queue.name),
                ("LoggedIn", len(logged_in)), ("Available", len(available)),
                ("Callers", len(queue.entries)), ("HoldTime", queue.holdtime),
                ("TalkTime", queue.talktime),
                ("LongestHoldTime", max((e.wait for e in queue.entries), default=0)),
                *tail]))
        session.send(format_message([("Event", "QueueSummaryComplete"), *tail,
                                     ("EventList", "Complete"), ("ListItems", len(queues))]))


def _split_caller_id(caller_id: str) -> tuple[str, str]:
    """``"Name <number>"`` -> (number, name), ``<unknown>`` for missing parts."""
    caller_id = caller_id.strip()
    if not caller_id:
        return UNKNOWN, UNKNOWN
    if caller_id.endswith(">") and "<" in caller_id:
        name, _, number = caller_id[:-1].rpartition("<")
        return number.strip() or UNKNOWN, name.strip().strip('"') or UNKNOWN
    return caller_id, UNKNOWN


__all__ = [
    "BANNER", "DIAL_STATUSES", "DROP_STAGES", "ORIGINATE_OUTCOMES", "EventSource", "FakeAmiServer", "FakeOriginate",
    "FakeQueue", "FakeQueueEntry", "FakeQueueMember", "Headers", "format_message",
    "header", "header_values", "originate_variables", "parse_block", "read_capture",
    "separate_app_args",
]
