"""The desk bus: small JSON notifications between the ``ivr serve`` processes
of one deployment ("this session reached interface X", "callback Y is being
dialled for agent Z").

The call may be handled by one server while the agent's WebSocket is open on
another: the server that learns of a pop publishes it, every server receives
it and forwards it to the desks connected to it.

- :class:`LocalBus`: in-process, for one server (SQLite deployments);
- :class:`PostgresBus`: ``LISTEN``/``NOTIFY`` on the trail database (asyncpg);
- :class:`RedisBus`: Redis pub/sub (``redis.asyncio``).

Messages carry ids, never the trail itself (NOTIFY payloads are limited to
8000 bytes, and the trail is in the shared database anyway). Delivery is
at-most-once: a server that is disconnected from PostgreSQL or Redis at the
moment of a pop misses it (its desks reload the offers when they reconnect).
Both network buses reconnect with a capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any, Awaitable, Callable

log = logging.getLogger("ivr.handoff.bus")

Subscriber = Callable[[dict[str, Any]], Awaitable[None] | None]
MAX_PAYLOAD = 7900


class Bus:
    """Base: subscribers and delivery. Subclasses move the bytes."""

    kind = "base"

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.published = 0
        self.received = 0
        self.connected = asyncio.Event()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    async def _deliver(self, raw: str | bytes | dict[str, Any]) -> None:
        try:
            message = raw if isinstance(raw, dict) else json.loads(raw)
        except ValueError:
            log.warning("desk bus: dropped a message that is not JSON")
            return
        if not isinstance(message, dict):
            return
        self.received += 1
        for callback in list(self._subscribers):
            try:
                result = callback(message)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # one bad subscriber must not stop the others
                log.exception("desk bus subscriber failed")

    @staticmethod
    def encode(message: dict[str, Any]) -> str:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)
        if len(text.encode()) > MAX_PAYLOAD:
            raise ValueError(f"desk bus message too large ({len(text)} bytes)")
        return text

    async def publish(self, message: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def start(self) -> None:
        self.connected.set()

    async def stop(self) -> None:
        pass


class LocalBus(Bus):
    """One process: publish delivers to this process's subscribers."""

    kind = "local"

    async def publish(self, message: dict[str, Any]) -> None:
        self.encode(message)  # same limits as the network buses
        self.published += 1
        await self._deliver(dict(message))


def _backoff(attempt: int) -> float:
    return min(30.0, 0.2 * 2 ** attempt) * (0.8 + 0.4 * random.random())


class PostgresBus(Bus):
    """``LISTEN channel`` on a dedicated asyncpg connection; ``pg_notify`` to publish."""

    kind = "postgres"

    def __init__(self, dsn: str, channel: str, *, server_settings: dict[str, str] | None = None):
        super().__init__()
        self.dsn = dsn
        self.channel = channel
        self.server_settings = server_settings or {}
        self._listener: Any = None
        self._publisher: Any = None
        self._publish_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ivr-desk-bus-pg")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 10)

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.dsn, timeout=10,
                                     server_settings={"application_name": "ivr-desk-bus", **self.server_settings})

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        asyncio.get_running_loop().create_task(self._deliver(payload))

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                conn = await self._connect()
            except Exception as exc:  # noqa: BLE001 - any connect failure: retry
                delay = _backoff(attempt)
                attempt += 1
                log.warning("desk bus: PostgreSQL unreachable (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: self._lost.set())
            try:
                await conn.add_listener(self.channel, self._on_notify)
                self._listener = conn
                self.connected.set()
                log.info("desk bus: listening on PostgreSQL channel %s", self.channel)
                while not self._stopping and not self._lost.is_set():
                    # a cheap query notices a half-open link that sent no FIN
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._lost.wait(), 15)
                    if not self._lost.is_set() and not self._stopping:
                        try:
                            await asyncio.wait_for(conn.execute("SELECT 1"), 5)
                        except Exception:  # noqa: BLE001
                            self._lost.set()
            except Exception as exc:  # noqa: BLE001
                log.warning("desk bus: PostgreSQL link lost (%s)", exc)
            finally:
                self.connected.clear()
                self._listener = None
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
            if not self._stopping:
                await asyncio.sleep(_backoff(0))

    async def publish(self, message: dict[str, Any]) -> None:
        payload = self.encode(message)
        async with self._publish_lock:
            for attempt in range(2):
                if self._publisher is None or self._publisher.is_closed():
                    self._publisher = await self._connect()
                try:
                    await self._publisher.execute("SELECT pg_notify($1, $2)", self.channel, payload)
                    self.published += 1
                    return
                except Exception:
                    with contextlib.suppress(Exception):
                        await self._publisher.close(timeout=2)
                    self._publisher = None
                    if attempt:
                        raise

    async def stop(self) -> None:
        self._stopping = True
        self._lost.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                await self._publisher.close(timeout=2)


class RedisBus(Bus):
    """Redis pub/sub on one channel."""

    kind = "redis"

    def __init__(self, url: str, channel: str):
        super().__init__()
        self.url = url
        self.channel = channel
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        import redis.asyncio as redis

        self._client = redis.from_url(self.url, socket_connect_timeout=5, health_check_interval=15)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ivr-desk-bus-redis")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 10)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected.set()
                attempt = 0
                log.info("desk bus: subscribed to Redis channel %s", self.channel)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=15.0)
                    if message is None:
                        await pubsub.ping()
                        continue
                    if message.get("type") == "message":
                        await self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect on any failure
                delay = _backoff(attempt)
                attempt += 1
                log.warning("desk bus: Redis link lost (%s); retrying in %.1f s", type(exc).__name__, delay)
                self.connected.clear()
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def publish(self, message: dict[str, Any]) -> None:
        await self._client.publish(self.channel, self.encode(message))
        self.published += 1

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


def asyncpg_dsn(database_url: str) -> tuple[str, dict[str, str]]:
    """(plain ``postgresql://`` DSN, server settings) for a trail database URL."""
    from sqlalchemy.engine import make_url

    from ivr.store import normalize_url

    url = make_url(normalize_url(database_url))
    settings: dict[str, str] = {}
    query = dict(url.query)
    # the store's engine may be pointed at a schema with ?options=-csearch_path=...
    url = url.set(drivername="postgresql", query={})
    if "options" in query:
        settings["options"] = str(query["options"])
    return url.render_as_string(hide_password=False), settings


def make_bus(config: Any) -> Bus:
    """The bus the settings ask for (``desk_bus``; ``auto`` follows the database)."""
    kind = config.desk_bus
    is_pg = config.database_url.startswith(("postgresql", "postgres"))
    if kind == "auto":
        kind = "postgres" if is_pg else "local"
    if kind == "local":
        return LocalBus()
    if kind == "postgres":
        if not is_pg:
            raise ValueError("desk_bus = postgres needs a PostgreSQL database_url")
        dsn, settings = asyncpg_dsn(config.database_url)
        return PostgresBus(dsn, config.bus_channel, server_settings=settings)
    if kind == "redis":
        return RedisBus(config.redis_url, config.bus_channel)
    raise ValueError(f"unknown desk_bus {kind!r}")
