"""Panoramisk's AMI protocol and manager, adapted to what the IVR needs.

We build on panoramisk 1.4 (``panoramisk.Manager`` and its ``AMIProtocol``):
its :class:`~panoramisk.message.Message` type, its action/response
correlation by ``ActionID`` (including list responses such as
``QueueStatus``, collected until the ``...Complete`` event), and the
manager as the protocol's event sink. Panoramisk's FastAGI server is not used
(``add_route`` calls ``asyncio.coroutine``, removed in Python 3.11); its AMI
side imports and runs fine on 3.11.

What is changed, and why (each a subclass override, not a fork):

``AmiProtocol.data_received``
    Panoramisk decodes each TCP chunk on its own with ``errors='ignore'``, so a
    UTF-8 character split across two reads is silently lost (caller names and
    trails carry Chinese text), and it ``strip()``\\ s every message, which drops
    a last header with an empty value: ``Value: `` ends most ``VarSet``
    events in the captures. We decode incrementally and strip only line
    breaks; framing (messages end with an empty line) is unchanged.
``AmiProtocol.handle_message``
    An event never completes an action that has not had its ``Response`` yet
    (it is dispatched as an event), so an early ``OriginateResponse`` cannot be
    mistaken for the ``Originate`` reply.
``AmiProtocol.send`` / ``close`` / ``connection_lost``
    Panoramisk keeps unanswered actions and silently re-sends them after the
    next login (``awaiting_actions``), and leaves ``Ping``/``Login`` futures
    pending forever. Re-sending an ``Originate`` could dial a customer twice,
    so every action in flight fails at once with :class:`AmiDisconnected`
    and its owner decides. Writing to a closed link fails the same way
    instead of being dropped.
``AmiManager``
    Panoramisk's reconnect is a fixed whole-second delay and its keepalive
    ``Ping`` never checks for the ``Pong``; :class:`ivr.ami.client.AmiClient`
    supervises the link instead (capped exponential backoff, Pong deadline),
    so the manager only routes events. Event callbacks run isolated: an
    exception in one is logged and cannot tear down the link (panoramisk
    lets it escape from ``data_received``, which makes asyncio close the
    transport).
"""

from __future__ import annotations

import asyncio
import codecs
import fnmatch
import inspect
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager

from .errors import AmiDisconnected, AmiProtocolError
from .wire import BANNER_PREFIX, EOL, AmiAction, AmiMessage

log = logging.getLogger("ivr.ami")

#: An event callback: called with the event; may be a coroutine function.
EventCallback = Callable[[AmiMessage], Union[None, Awaitable[None]]]

# A message that never ends (no empty line) is not AMI; give up on the link.
MAX_BUFFERED_CHARS = 4 * 1024 * 1024

#: Headers that identify a message: a second copy makes the message ambiguous
#: (which action does it answer?), so such a block is refused.
_SINGLE_HEADERS = ("Event", "Response", "ActionID", "CommandID")


def parse_message(block: str) -> AmiMessage:
    """Parse one message (the text between two empty lines) or raise
    :class:`AmiProtocolError`: a block without ``Event``/``Response``, or one
    that repeats a header naming the message (``ActionID`` twice would make
    the action it answers a guess)."""
    message = AmiMessage.from_line(block)
    if message is None:
        raise AmiProtocolError(f"not an AMI message: {block[:80]!r}")
    for name in _SINGLE_HEADERS:
        if isinstance(message.get(name), list):
            raise AmiProtocolError(f"AMI message repeats its {name} header: {block[:80]!r}")
    return message


@dataclass(frozen=True)
class _Subscription:
    pattern: str
    regex: re.Pattern[str]
    callback: EventCallback


class AmiManager(Manager):
    """Panoramisk ``Manager`` used as the protocol's factory: event routing.

    Connection handling (``connect``, reconnect, ping) belongs to
    :class:`ivr.ami.client.AmiClient`; calling :meth:`connect` is an error.
    """

    def __init__(self, **config: Any) -> None:
        config.setdefault("encoding", "utf-8")
        config.setdefault("log", log)
        config.setdefault("protocol_factory", lambda: AmiProtocol(self))
        super().__init__(**config)
        # Manager.__init__ registers FullyBooted -> send_awaiting_actions,
        # which re-sends actions that were in flight when the link dropped.
        # They fail fast here instead (see the module docstring).
        self.callbacks.clear()
        self.patterns.clear()
        self._subscriptions: list[_Subscription] = []
        self._tasks: set[asyncio.Future[Any]] = set()
        #: Called once per link when it is lost: ``(exception or None)``.
        self.on_link_lost: Callable[[BaseException | None], None] | None = None

    def connect(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        raise RuntimeError("the AMI link is supervised by AmiClient; use AmiClient.start()")

    def subscribe(self, pattern: str, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for events whose name matches ``pattern``.

        ``pattern`` is an event name or a shell-style glob (``Queue*``,
        ``*``), matched case-insensitively. Returns a function that removes
        the subscription.
        """
        regex = re.compile(fnmatch.translate(pattern), re.IGNORECASE)
        subscription = _Subscription(pattern, regex, callback)
        self._subscriptions.append(subscription)

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

        return unsubscribe

    def dispatch(self, event: AmiMessage) -> list[str]:
        """Deliver ``event`` to every matching subscriber, in subscription order."""
        name = str(event.get("Event", ""))
        matches: list[str] = []
        for subscription in list(self._subscriptions):
            if subscription.regex.match(name):
                matches.append(subscription.pattern)
                self._invoke(subscription.callback, event)
        # Callbacks registered through panoramisk's own register_event().
        for pattern, regex in self.patterns:
            if regex.match(name):
                matches.append(pattern)
                for callback in self.callbacks[pattern]:
                    self._invoke(callback, self, event)
        return matches

    def _invoke(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            result = callback(*args)
        except Exception:
            log.exception("AMI event callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("AMI event callback failed", exc_info=task.exception())

    def connection_lost(self, exc: BaseException | None) -> None:
        """Called by the protocol; no reconnect scheduling here (see class doc)."""
        self._connected = False
        if self.on_link_lost is not None:
            self.on_link_lost(exc)


class AmiProtocol(AMIProtocol):
    """One AMI connection: framing, parsing, action correlation.

    ``tap``, if given, sees every parsed message (responses and events)
    before it is routed; :func:`parse_stream` uses it.
    """

    def __init__(self, manager: AmiManager | None = None, *,
                 tap: Callable[[AmiMessage], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.queue: deque[str] = deque()  # panoramisk attribute, unused
        self.responses: dict[str, AmiAction] = {}
        self.factory: AmiManager = manager if manager is not None else AmiManager()
        self.version: str | None = None
        self.log = log
        self.encoding = "utf-8"
        #: Resolved when the link is closed or lost (with the exception, if any).
        self.lost: asyncio.Future[BaseException | None] | None = None
        self._tap = tap
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        #: Blocks refused since the link opened (each one logged and skipped).
        self.errors: list[AmiProtocolError] = []

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not calling AMIProtocol.connection_made: it resets ``factory``.
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        text = self._buffer + self._decoder.decode(data)
        if self.version is None:
            text = self._take_banner(text)
            if self.version is None:
                self._buffer = text
                self._check_buffer()
                return
        *blocks, self._buffer = text.split(EOL + EOL)
        for block in blocks:
            block = block.strip(EOL)  # keep trailing spaces: "Value: " is a header
            if not block:
                continue
            try:
                message = parse_message(block)
            except AmiProtocolError as exc:
                self.errors.append(exc)
                self.log.warning("ignoring a malformed AMI block: %s", exc)
                continue
            self.handle_message(message)
            if self.closed:  # a Shutdown event
                return
        self._check_buffer()

    def _check_buffer(self) -> None:
        if len(self._buffer) > MAX_BUFFERED_CHARS:
            error = AmiProtocolError(f"AMI peer sent {len(self._buffer)} characters without a message end")
            self.errors.append(error)
            self.log.error("%s; closing", error)
            self._buffer = ""
            self._terminate("AMI link closed (protocol error)", error)

    def _take_banner(self, text: str) -> str:
        """Consume ``Asterisk Call Manager/<version>`` if it starts the stream."""
        if BANNER_PREFIX.startswith(text) or (
                text.startswith(BANNER_PREFIX) and EOL not in text):
            return text  # not complete yet; wait for more bytes
        if text.startswith(BANNER_PREFIX):
            line, _, rest = text.partition(EOL)
            self.version = line[len(BANNER_PREFIX):].strip()
            self.log.debug("AMI protocol version %s", self.version)
            return rest
        self.version = ""  # no banner: not fatal, parse what comes
        return text

    def connection_lost(self, exc: Exception | None) -> None:
        self._terminate("AMI link lost", exc)

    # -- panoramisk hooks ---------------------------------------------------

    def handle_message(self, message: AmiMessage) -> None:
        if self._tap is not None:
            self._tap(message)
        action = self.responses.get(message.id or "")
        if action is None and message.action_id:
            action = self.responses.get(message.action_id)
        is_event = "Event" in message
        if action is not None and not (is_event and not action.responses):
            if action.add_message(message):
                self.forget(action)
            return
        if not is_event:
            self.log.debug("AMI response to no pending action: %r", message)
            return
        self.factory.dispatch(message)
        if str(message.get("Event", "")).lower() == "shutdown":
            # Asterisk is going away; do not wait for it to close the socket.
            self._terminate("Asterisk shut down", None)

    def send(self, data: AmiAction, as_list: bool | None = None) -> asyncio.Future[Any]:
        """Write ``data`` and return the future of its response(s).

        The future fails with :class:`AmiDisconnected` if the link is (or
        goes) down before the answer is complete.
        """
        if as_list is not None:
            data.as_list = as_list
        future: asyncio.Future[Any] = data.future
        payload = str(data).encode("utf-8")  # validates before anything is sent
        if self.closed or self.transport is None or self.transport.is_closing():
            future.set_exception(AmiDisconnected(
                f"AMI link is down; {data.name} not sent",
                action=data.name, action_id=data.id, sent=False))
            return future
        self.responses[data.id] = data
        self.transport.write(payload)
        return future

    def forget(self, action: AmiAction) -> None:
        """Stop waiting for answers to ``action`` (done, timed out, cancelled)."""
        if self.responses.get(action.id) is action:
            del self.responses[action.id]

    def close(self) -> None:
        """Close the link; actions in flight fail with AmiDisconnected."""
        self._terminate("AMI link closed", None)

    # -- internals ----------------------------------------------------------

    def _terminate(self, reason: str, exc: BaseException | None) -> None:
        first = not self.closed
        self.closed = True
        pending = list(self.responses.values())
        self.responses.clear()
        for action in pending:
            if not action.future.done():
                action.future.set_exception(AmiDisconnected(
                    f"{reason} while waiting for the answer to {action.name}",
                    action=action.name, action_id=action.id, sent=True))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if first:
            if self.lost is not None and not self.lost.done():
                self.lost.set_result(exc)
            self.factory.connection_lost(exc)


def parse_stream(data: bytes, *, chunk_size: int | None = None, chunks: Iterable[bytes] | None = None,
                 strict: bool = False) -> list[AmiMessage]:
    """Parse raw bytes as Asterisk sends them, with the client's own protocol.

    Returns every message (responses and events) in order; the banner is
    consumed. ``chunk_size`` feeds the bytes in pieces of that size, as TCP
    may deliver them; ``chunks`` gives the pieces themselves (they must add
    up to ``data``). Like the live link, malformed blocks are skipped; with
    ``strict`` the first one raises :class:`AmiProtocolError`, and so does a
    stream that ends inside a message.
    """
    messages: list[AmiMessage] = []
    protocol = AmiProtocol(tap=messages.append)
    if chunks is None:
        step = chunk_size or max(len(data), 1)
        chunks = (data[start:start + step] for start in range(0, len(data), step))
    for chunk in chunks:
        protocol.data_received(chunk)
    if strict:
        if protocol.errors:
            raise protocol.errors[0]
        rest = protocol._buffer + protocol._decoder.decode(b"", final=True)
        if rest.strip(EOL) and not protocol.closed:
            raise AmiProtocolError(f"stream ended inside a message: {rest[:80]!r}")
    return messages


def load_capture(path: str | Path) -> list[AmiMessage]:
    """Parse a raw AMI capture file (e.g. ``ami-session.txt``)."""
    return parse_stream(Path(path).read_bytes())
