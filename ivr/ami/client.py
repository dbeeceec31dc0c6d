"""AMI client: one supervised, self-healing link to Asterisk's manager.

Built on panoramisk 1.4 (``panoramisk.Manager``/``AMIProtocol``, subclassed
in :mod:`ivr.ami.protocol`, which documents every override and why).
Checked on Python 3.11 with panoramisk 1.4: its FastAGI server is broken
(``fast_agi.Application.add_route`` wraps plain-function endpoints with
``asyncio.coroutine``, removed in 3.11, so it raises AttributeError) and is
not used; the IVR has its own FastAGI server. Its AMI side imports and runs
on 3.11 (``tests/test_ami.py`` drives it over real sockets) and gives us
message parsing, ``ActionID`` correlation (including multi-event list
answers) and event routing. Its connection handling does not meet our needs,
so :class:`AmiClient` supervises the link itself:

- **reconnect** with capped exponential backoff (``initial_backoff`` doubling
  up to ``max_backoff`` <= 60 s, with a little jitter so that several servers
  do not hammer a restarted Asterisk in step); panoramisk retries at a fixed
  whole-second delay;
- **keepalive**: a ``Ping`` every ``ping_interval`` <= 30 s whose ``Pong``
  must arrive within ``action_timeout``, otherwise the link is declared dead
  and re-opened; panoramisk sends pings but never checks the answer, so a
  half-open TCP link would go unnoticed;
- **fail fast**: actions in flight when the link drops fail at once with
  :class:`AmiDisconnected` (``sent=True``), and actions attempted while the
  link is down fail with ``sent=False``; panoramisk would queue and re-send
  them after the next login, which for ``Originate`` can dial a customer
  twice. The owner decides whether to retry.

State is ``disconnected`` -> ``connecting`` -> ``connected`` (-> ``disconnected``
when the link drops, and so on); observe it with :meth:`AmiClient.on_state_change`.

Every header value is cleaned of CR/LF before it reaches the socket and
header names are validated (:mod:`ivr.ami.wire`), so nothing a caller can
influence can add a header or an action.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from itertools import count
from typing import Any

from .errors import AmiActionError, AmiActionTimeout, AmiDisconnected, AmiError
from .protocol import AmiManager, AmiProtocol, EventCallback
from .results import OriginateResult, QueueStatus, QueueSummary
from .wire import (ActionHeaders, AmiAction, AmiMessage, HeaderValue, clean_value,
                   format_originate_variable, validate_header_name,
                   validate_variable_name)

log = logging.getLogger("ivr.ami")

#: The keepalive must run at least this often.
MAX_PING_INTERVAL = 30.0
#: Reconnect attempts are never further apart than this.
MAX_BACKOFF = 60.0

AmiResult = AmiMessage | list[AmiMessage]
StateCallback = Callable[["AmiState"], object]


class AmiState(enum.StrEnum):
    """Link state; compares equal to its string value."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


def backoff_delay(attempt: int, *, initial: float, cap: float, jitter: float = 0.2,
                  rand: Callable[[], float] = random.random) -> float:
    """Delay before reconnect attempt ``attempt`` (0 = first retry).

    ``initial * 2**attempt``, capped at ``cap``, then reduced by up to
    ``jitter`` of itself; never more than ``cap``.
    """
    base = min(cap, initial * 2.0 ** min(attempt, 64))
    return base * (1.0 - jitter * rand())


class AmiClient:
    """A supervised AMI connection with typed helpers.

    ``await start()`` connects and logs in (or, if Asterisk is down, keeps
    trying in the background without raising); ``await stop()`` logs off and
    closes. Between the two, :meth:`action` and the helpers raise
    :class:`AmiDisconnected` while the link is down, rather than waiting.
    """

    def __init__(self, host: str, port: int, username: str, secret: str, *,
                 ping_interval: float = 20.0, action_timeout: float = 10.0,
                 max_backoff: float = MAX_BACKOFF, initial_backoff: float = 0.5,
                 events: str = "on") -> None:
        if not 0 < ping_interval <= MAX_PING_INTERVAL:
            raise ValueError(f"ping_interval must be in (0, {MAX_PING_INTERVAL:g}] s")
        if not action_timeout > 0:
            raise ValueError("action_timeout must be positive")
        if not 0 < initial_backoff <= max_backoff <= MAX_BACKOFF:
            raise ValueError(f"need 0 < initial_backoff <= max_backoff <= {MAX_BACKOFF:g} s")
        self._host = host
        self._port = port
        self._username = username
        self._secret = secret
        self._events = events
        self._ping_interval = float(ping_interval)
        self._action_timeout = float(action_timeout)
        self._max_backoff = float(max_backoff)
        self._initial_backoff = float(initial_backoff)

        self._manager = AmiManager(host=host, port=port, username=username, secret=secret)
        self._manager.on_link_lost = self._on_link_lost
        self._manager.subscribe("OriginateResponse", self._on_originate_response)
        self._protocol: AmiProtocol | None = None
        self._state = AmiState.DISCONNECTED
        self._state_callbacks: list[StateCallback] = []
        self._connected = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._originate_waiters: dict[str, asyncio.Future[AmiMessage]] = {}
        self._id_prefix = f"ivr-{uuid.uuid4().hex[:8]}"
        self._ids = count(1)

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> AmiState:
        """``connecting``, ``connected`` or ``disconnected``."""
        return self._state

    @property
    def version(self) -> str | None:
        """AMI protocol version from the banner of the current link."""
        return self._protocol.version if self._protocol is not None else None

    def on_state_change(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(new_state)`` on every state change; returns an
        unsubscribe function. Callbacks run synchronously, in order."""
        self._state_callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._state_callbacks:
                self._state_callbacks.remove(callback)

        return unsubscribe

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once the link is up; raise TimeoutError after ``timeout`` s."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _set_state(self, state: AmiState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is AmiState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        log.debug("AMI %s:%s is %s", self._host, self._port, state)
        for callback in list(self._state_callbacks):
            try:
                callback(state)
            except Exception:
                log.exception("AMI state callback %r failed", callback)

    # -- events ----------------------------------------------------------------

    def on_event(self, pattern: str, callback: EventCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for each event whose name matches ``pattern``
        (an event name or a glob such as ``Queue*`` or ``*``, case-insensitive).

        Callbacks may be plain functions (run in order, inline) or coroutine
        functions (run as tasks). A failing callback is logged and does not
        affect the link. Subscriptions survive reconnects. Returns an
        unsubscribe function.
        """
        return self._manager.subscribe(pattern, callback)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Connect and log in; return after the first attempt, successful or not.

        If Asterisk is unreachable this does not raise: the client keeps
        retrying in the background with capped exponential backoff.
        """
        if self._supervisor is not None and not self._supervisor.done():
            return
        self._stopping = False
        self._first_attempt = asyncio.Event()
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"ami-supervisor-{self._host}:{self._port}")
        await self._first_attempt.wait()

    async def stop(self) -> None:
        """Log off and close; nothing is retried afterwards.

        Actions still in flight fail with :class:`AmiDisconnected`.
        """
        self._stopping = True
        protocol = self._protocol
        if protocol is not None and self._state is AmiState.CONNECTED:
            with suppress(AmiError):
                await self._exchange(protocol, self._make_action({"Action": "Logoff"}),
                                     min(self._action_timeout, 1.0))
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if protocol is not None:
            protocol.close()
        self._fail_originate_waiters("AMI client stopped")
        self._set_state(AmiState.DISCONNECTED)

    async def __aenter__(self) -> "AmiClient":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _supervise(self) -> None:
        attempt = 0
        try:
            while not self._stopping:
                self._set_state(AmiState.CONNECTING)
                protocol = await self._open_link(first_try=attempt == 0)
                if protocol is not None:
                    attempt = 0
                    await self._run_link(protocol)
                self._set_state(AmiState.DISCONNECTED)
                self._first_attempt.set()
                if self._stopping:
                    break
                delay = backoff_delay(attempt, initial=self._initial_backoff,
                                      cap=self._max_backoff)
                attempt += 1
                log.info("AMI %s:%s: reconnecting in %.2f s", self._host, self._port, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not a network condition: say so loudly
            log.critical("AMI supervisor crashed; no more reconnects", exc_info=True)
            self._set_state(AmiState.DISCONNECTED)
        finally:
            self._first_attempt.set()

    async def _open_link(self, first_try: bool) -> AmiProtocol | None:
        """Connect and log in once; None (logged) on failure."""
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: AmiProtocol(self._manager),
                                       self._host, self._port),
                self._action_timeout)
        except (OSError, TimeoutError) as exc:
            # Loud once per outage, quieter while the retries go on.
            log.log(logging.WARNING if first_try else logging.INFO,
                    "AMI connect to %s:%s failed: %s", self._host, self._port,
                    exc or type(exc).__name__)
            return None
        login = self._make_action({"Action": "Login", "Username": self._username,
                                   "Secret": self._secret, "Events": self._events})
        try:
            await self._exchange(protocol, login, self._action_timeout)
        except AmiActionError as exc:
            log.error("AMI login to %s:%s as %r refused: %s", self._host, self._port,
                      self._username, exc.message)
            protocol.close()
            return None
        except AmiError as exc:
            log.warning("AMI login to %s:%s failed: %s", self._host, self._port, exc)
            protocol.close()
            return None
        except BaseException:
            protocol.close()
            raise
        log.info("AMI connected to %s:%s as %r (protocol %s)", self._host, self._port,
                 self._username, protocol.version)
        return protocol

    async def _run_link(self, protocol: AmiProtocol) -> None:
        """Serve a logged-in link until it is lost (or the client stops)."""
        assert protocol.lost is not None
        self._protocol = protocol
        self._manager.protocol = protocol
        self._set_state(AmiState.CONNECTED)
        self._first_attempt.set()
        keepalive = asyncio.create_task(self._keepalive(protocol), name="ami-keepalive")
        try:
            await asyncio.shield(protocol.lost)
        finally:
            keepalive.cancel()
            protocol.close()
            if self._protocol is protocol:
                self._protocol = None

    async def _keepalive(self, protocol: AmiProtocol) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                await self._exchange(protocol, self._make_action({"Action": "Ping"}),
                                     self._action_timeout)
            except AmiActionTimeout:
                log.warning("AMI %s:%s: no Pong within %g s; dropping the link",
                            self._host, self._port, self._action_timeout)
                protocol.close()
                return
            except AmiDisconnected:
                return
            except AmiActionError as exc:
                log.warning("AMI Ping refused: %s", exc.message)

    def _on_link_lost(self, exc: BaseException | None) -> None:
        """The manager reports a lost link (synchronously, as it happens)."""
        if self._state is AmiState.CONNECTED:
            log.log(logging.INFO if self._stopping else logging.WARNING,
                    "AMI link to %s:%s lost%s", self._host, self._port,
                    f": {exc}" if exc else "")
        self._fail_originate_waiters("AMI link lost before the OriginateResponse; "
                                     "the call may have been placed")
        self._set_state(AmiState.DISCONNECTED)

    # -- actions -----------------------------------------------------------------

    def _next_action_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _make_action(self, headers: ActionHeaders) -> AmiAction:
        pairs: dict[str, Any] = {}
        for name, value in headers.items():
            validate_header_name(name)
            pairs[name] = list(value) if isinstance(value, (list, tuple)) else value
        names = {name.lower(): name for name in pairs}
        if not pairs.get(names.get("action", "")):
            raise ValueError("an AMI action needs an 'Action' header")
        if not pairs.get(names.get("actionid", "")):
            # Action first, then ActionID, as Asterisk's own examples write it.
            action_name = names["action"]
            pairs.pop(names.get("actionid", ""), None)
            pairs = {action_name: pairs.pop(action_name),
                     "ActionID": self._next_action_id(), **pairs}
        action = AmiAction(pairs)
        str(action)  # validate every name and value now, before anything is sent
        return action

    async def _exchange(self, protocol: AmiProtocol, action: AmiAction,
                        timeout: float) -> AmiResult:
        future = protocol.send(action)
        try:
            result: AmiResult = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AmiActionTimeout(
                f"no answer to {action.name} within {timeout:g} s",
                action=action.name, action_id=action.id, timeout=timeout) from None
        finally:
            protocol.forget(action)
        first = result[0] if isinstance(result, list) else result
        if not first.success:
            raise AmiActionError(str(first.get("Message", "")) or str(first.get("Response")),
                                 action=action.name, action_id=action.id, response=first)
        return result

    async def action(self, action: ActionHeaders, *, timeout: float | None = None) -> AmiResult:
        """Send one action and return its answer.

        A plain action answers with one :class:`AmiMessage`; a list action
        (``EventList: start``, e.g. ``QueueStatus``) with a list: the response,
        the events, and the ``...Complete`` event. An ``ActionID`` is added
        if missing. Raises :class:`AmiDisconnected` if the link is down or
        drops before the answer, :class:`AmiActionTimeout` after ``timeout``
        (default ``action_timeout``) and :class:`AmiActionError` for
        ``Response: Error``. Invalid header names raise ValueError.
        """
        request = self._make_action(action)
        protocol = self._protocol
        if protocol is None or self._state is not AmiState.CONNECTED:
            raise AmiDisconnected(f"AMI is {self._state}; {request.name} not sent",
                                  action=request.name, action_id=request.id, sent=False)
        if request.id in protocol.responses:
            raise ValueError(f"ActionID {request.id!r} is already in use")
        return await self._exchange(protocol, request,
                                    self._action_timeout if timeout is None else timeout)

    async def _single(self, headers: ActionHeaders, timeout: float | None = None) -> AmiMessage:
        result = await self.action(headers, timeout=timeout)
        return result[0] if isinstance(result, list) else result

    async def _list(self, headers: ActionHeaders, timeout: float | None = None) -> list[AmiMessage]:
        result = await self.action(headers, timeout=timeout)
        return result if isinstance(result, list) else [result]

    # -- typed helpers -------------------------------------------------------

    async def ping(self, *, timeout: float | None = None) -> AmiMessage:
        """One ``Ping``; returns the ``Ping: Pong`` response."""
        return await self._single({"Action": "Ping"}, timeout)

    async def originate(self, channel: str, *, context: str, exten: str, priority: int = 1,
                        variables: Mapping[str, HeaderValue] | None = None,
                        caller_id: str | None = None, timeout_ms: int = 30000,
                        action_id: str | None = None, channel_id: str | None = None) -> str:
        """Queue an async ``Originate`` into ``context``/``exten``; return its ActionID.

        The outcome arrives later as an ``OriginateResponse`` event with the
        same ActionID (see :meth:`originate_and_wait`). Variable names are
        validated and values escaped so each arrives literally, as one
        variable (see :mod:`ivr.ami.wire`).
        """
        headers: dict[str, Any] = {
            "Action": "Originate", "ActionID": action_id or self._next_action_id(),
            "Channel": channel, "Context": context, "Exten": exten,
            "Priority": int(priority), "Timeout": int(timeout_ms), "Async": "true",
        }
        if caller_id:
            headers["CallerID"] = caller_id
        if channel_id:
            # the Uniqueid Asterisk gives the new channel: its later events can be matched
            headers["ChannelId"] = channel_id
        if variables:
            headers["Variable"] = [format_originate_variable(name, value)
                                   for name, value in variables.items()]
        await self._single(headers)
        return str(headers["ActionID"])

    async def originate_and_wait(self, channel: str, *, context: str, exten: str,
                                 priority: int = 1,
                                 variables: Mapping[str, HeaderValue] | None = None,
                                 caller_id: str | None = None, timeout_ms: int = 30000,
                                 action_id: str | None = None, channel_id: str | None = None,
                                 timeout: float | None = None) -> OriginateResult:
        """:meth:`originate`, then wait for its ``OriginateResponse``.

        Waits up to ``timeout`` (default: the dial timeout plus
        ``action_timeout``). If the link drops meanwhile this raises
        :class:`AmiDisconnected` with ``sent=True``: the call may have been
        placed, its outcome is unknown.
        """
        action_id = action_id or self._next_action_id()
        if action_id in self._originate_waiters:
            raise ValueError(f"ActionID {action_id!r} is already in use")
        waiter: asyncio.Future[AmiMessage] = asyncio.get_running_loop().create_future()
        self._originate_waiters[action_id] = waiter  # before sending: no race
        try:
            await self.originate(channel, context=context, exten=exten, priority=priority,
                                 variables=variables, caller_id=caller_id,
                                 timeout_ms=timeout_ms, action_id=action_id, channel_id=channel_id)
            limit = timeout if timeout is not None else timeout_ms / 1000 + self._action_timeout
            try:
                event = await asyncio.wait_for(waiter, limit)
            except TimeoutError:
                raise AmiActionTimeout(f"no OriginateResponse within {limit:g} s",
                                       action="Originate", action_id=action_id,
                                       timeout=limit) from None
        finally:
            self._originate_waiters.pop(action_id, None)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # mark retrieved
        return OriginateResult.from_event(event)

    def _on_originate_response(self, event: AmiMessage) -> None:
        waiter = self._originate_waiters.get(str(event.get("ActionID", "")))
        if waiter is not None and not waiter.done():
            waiter.set_result(event)

    def _fail_originate_waiters(self, reason: str) -> None:
        for action_id, waiter in list(self._originate_waiters.items()):
            if not waiter.done():
                waiter.set_exception(AmiDisconnected(reason, action="Originate",
                                                     action_id=action_id, sent=True))

    async def redirect(self, channel: str, context: str, exten: str,
                       priority: int = 1) -> AmiMessage:
        """Move a live channel to ``context``/``exten``/``priority``."""
        return await self._single({"Action": "Redirect", "Channel": channel,
                                   "Context": context, "Exten": exten,
                                   "Priority": int(priority)})

    async def queue_status(self, queue: str, *, timeout: float | None = None) -> QueueStatus:
        """``QueueStatus`` of one queue: params, members, and waiting entries."""
        messages = await self._list({"Action": "QueueStatus", "Queue": queue}, timeout)
        return QueueStatus.from_messages(queue, messages)

    async def queue_summary(self, queue: str, *,
                            timeout: float | None = None) -> QueueSummary | None:
        """``QueueSummary`` of one queue, or None if Asterisk reports no such queue."""
        messages = await self._list({"Action": "QueueSummary", "Queue": queue}, timeout)
        for message in messages:
            if message.get("Event") == "QueueSummary" and message.get("Queue") == queue:
                return QueueSummary.from_event(message)
        return None

    async def getvar(self, channel: str | None, name: str) -> str:
        """Value of a channel variable (or global, if ``channel`` is None);
        ``""`` when unset."""
        headers: dict[str, Any] = {"Action": "Getvar", "Variable": validate_variable_name(name)}
        if channel is not None:
            headers["Channel"] = channel
        response = await self._single(headers)
        value = response.get("Value", "")
        return value[-1] if isinstance(value, list) else str(value)

    async def db_get(self, family: str, key: str, *, timeout: float | None = None) -> str | None:
        """Value of AstDB ``family``/``key`` (``DBGet``), or None if there is no such entry.

        Asterisk answers a list (``DBGetResponse`` then ``DBGetComplete``) or
        ``Response: Error`` with ``Database entry not found``.
        """
        try:
            messages = await self._list({"Action": "DBGet", "Family": clean_value(family),
                                         "Key": clean_value(key)}, timeout)
        except AmiActionError as exc:
            if "not found" in exc.message.lower():
                return None
            raise
        for message in messages:
            if message.get("Event") == "DBGetResponse":
                value = message.get("Val", "")
                return value[-1] if isinstance(value, list) else str(value)
        return None

    async def setvar(self, channel: str | None, name: str, value: HeaderValue) -> None:
        """Set a channel variable (or global, if ``channel`` is None).

        CR/LF in ``value`` become spaces. Asterisk skips leading blanks of a
        header value, so a value's leading spaces are not preserved.
        """
        headers: dict[str, Any] = {"Action": "Setvar", "Variable": validate_variable_name(name),
                                   "Value": clean_value(value)}
        if channel is not None:
            headers["Channel"] = channel
        await self._single(headers)
