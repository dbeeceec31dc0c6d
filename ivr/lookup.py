"""Carry out a flow's ``lookup`` action: one HTTP call to the business backend.

The engine is pure: for a ``lookup`` node it emits
``Action(kind="lookup", params={...}, await_result=True)``. The face hands the
params to :func:`perform_lookup` (usually through a shared
:class:`LookupRunner`) and feeds the returned dict back as
``Input.result(result)``.

Params (all plain data, already rendered by the engine):

=============  =================================================================
``name``       look-up name (the node id); used in logs and counters only
``url``        absolute ``http``/``https`` URL; anything else fails as ``bad url``
``method``     ``GET`` (default) or ``POST``
``query``      dict of query parameters, or ``None`` (``None`` values dropped)
``json``       request body for ``POST``, or ``None``
``headers``    dict of extra request headers, or ``None``
``timeout``    seconds, the budget for *all* attempts together (default 5)
``retries``    extra attempts after a connection error, a timeout or a 5xx
               (default 0). Each attempt gets an even share of what is left
               of the budget, so with ``timeout: 3, retries: 2`` a backend
               that never answers is tried three times for about one second
               each, and the flow still takes its failure branch within 3 s.
``max_bytes``  largest response body accepted (default 256 KiB); the body is
               read in chunks and the read stops as soon as it is exceeded
=============  =================================================================

Result (a plain JSON-able dict; nothing raises for network, HTTP or JSON
problems)::

    {"ok": bool, "status": int | None, "data": <parsed JSON> | None,
     "error": str | None, "latency_ms": float, "attempts": int}

``ok`` is true for a 2xx answer whose body is JSON (an empty body gives
``data: None``). A 4xx answer is final, never retried: ``status`` is kept (and
``data`` holds its JSON body if it has one) so a flow can branch on 404.

``error`` is one of a fixed vocabulary, so it can label metrics:
``timeout``, ``http <status>``, ``malformed json``, ``body too large``,
``connection refused``, ``connection error``, ``server disconnected``,
``dns error``, ``tls error``, ``bad payload``, ``bad response``,
``too many redirects``, ``bad url``, ``bad method``, ``bad request``
(unusable params such as a header value with a newline), ``client error``.

``POST`` look-ups that may be retried carry an ``Idempotency-Key`` header,
the same on every attempt, so a backend can recognise a repeat of a request
whose answer was lost (the demo backend does, for fault tickets).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "LookupRunner",
    "perform_lookup",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 0
DEFAULT_MAX_BYTES = 256 * 1024

MAX_TIMEOUT = 120.0
MAX_RETRIES = 5
MAX_REDIRECTS = 3
ALLOWED_METHODS = frozenset({"GET", "POST"})

# Backoff before retry n (1-based): BACKOFF_BASE * 2**(n-1), capped, with
# jitter; skipped (and the look-up given up) when it would leave less than
# MIN_ATTEMPT_SECONDS for the next attempt.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.5
MIN_ATTEMPT_SECONDS = 0.05

READ_CHUNK = 64 * 1024
USER_AGENT = "ivr-server-lookup/0.1"


@dataclass(frozen=True)
class _Request:
    """Validated, normalised look-up params."""

    name: str
    url: URL
    method: str
    query: list[tuple[str, str]] | None
    json_body: Any
    headers: dict[str, str]
    timeout: float
    retries: int
    max_bytes: int


@dataclass(frozen=True)
class _Outcome:
    """Result of one attempt."""

    status: int | None
    data: Any
    error: str | None
    retryable: bool

    @property
    def ok(self) -> bool:
        return self.error is None


class _BadParams(ValueError):
    """Params that cannot be turned into a request; ``args[0]`` is the error label."""


class _BodyTooLarge(Exception):
    pass


def _result(
    outcome: _Outcome | None, error: str | None, started: float, attempts: int
) -> dict[str, Any]:
    return {
        "ok": outcome is not None and outcome.ok and error is None,
        "status": outcome.status if outcome else None,
        "data": outcome.data if outcome else None,
        "error": error if error is not None else (outcome.error if outcome else None),
        "latency_ms": round((time.monotonic() - started) * 1000.0, 3),
        "attempts": attempts,
    }


def _number(value: Any, default: float) -> float:
    """A finite number from an int, float or numeric string; else ``default``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return number if math.isfinite(number) else default


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_params(params: Mapping[str, Any]) -> _Request:
    """Validate and normalise the engine's params; raise :class:`_BadParams`."""
    if not isinstance(params, Mapping):
        raise _BadParams("bad request")
    name = str(params.get("name") or "lookup")

    raw_url = params.get("url")
    if not isinstance(raw_url, str) or not raw_url.strip():
        raise _BadParams("bad url")
    try:
        url = URL(raw_url.strip())
    except (ValueError, TypeError):
        raise _BadParams("bad url") from None
    if url.scheme.lower() not in ("http", "https") or not url.is_absolute() or not url.host:
        raise _BadParams("bad url")

    method = str(params.get("method") or "GET").upper()
    if method not in ALLOWED_METHODS:
        raise _BadParams("bad method")

    raw_query = params.get("query")
    query: list[tuple[str, str]] | None = None
    if raw_query is not None:
        if not isinstance(raw_query, Mapping):
            raise _BadParams("bad request")
        query = []
        for key, value in raw_query.items():
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            query.extend((str(key), _query_value(v)) for v in values if v is not None)

    raw_headers = params.get("headers")
    headers: dict[str, str] = {"Accept": "application/json"}
    if raw_headers is not None:
        if not isinstance(raw_headers, Mapping):
            raise _BadParams("bad request")
        for key, value in raw_headers.items():
            text_key, text_value = str(key), str(value)
            # A newline in a header would split the request: refuse outright.
            if any(c in text_key + text_value for c in "\r\n\x00"):
                raise _BadParams("bad request")
            headers[text_key] = text_value

    timeout = _number(params.get("timeout"), DEFAULT_TIMEOUT)
    if timeout <= 0:
        timeout = DEFAULT_TIMEOUT
    timeout = min(timeout, MAX_TIMEOUT)

    retries = int(_number(params.get("retries"), DEFAULT_RETRIES))
    retries = max(0, min(retries, MAX_RETRIES))

    max_bytes = int(_number(params.get("max_bytes"), DEFAULT_MAX_BYTES))
    if max_bytes <= 0:
        max_bytes = DEFAULT_MAX_BYTES

    json_body = params.get("json")
    if method == "POST" and retries > 0 and not any(
        k.lower() == "idempotency-key" for k in headers
    ):
        headers["Idempotency-Key"] = uuid.uuid4().hex

    return _Request(name, url, method, query, json_body, headers, timeout, retries, max_bytes)


async def _read_bounded(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """Read the body chunk by chunk; raise :class:`_BodyTooLarge` past ``max_bytes``."""
    length = resp.content_length
    if length is not None and length > max_bytes:
        raise _BodyTooLarge
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        if len(buf) + len(chunk) > max_bytes:
            raise _BodyTooLarge
        buf.extend(chunk)
    return bytes(buf)


def _decode_json(body: bytes) -> tuple[Any, bool]:
    """Return ``(data, well_formed)``; an empty body is well formed ``None``."""
    if not body.strip():
        return None, True
    try:
        return json.loads(body), True
    except (ValueError, RecursionError):
        return None, False


def _classify_http(status: int, body: bytes) -> _Outcome:
    data, well_formed = _decode_json(body)
    if 200 <= status < 300:
        if not well_formed:
            return _Outcome(status, None, "malformed json", retryable=False)
        return _Outcome(status, data, None, retryable=False)
    return _Outcome(status, data, f"http {status}", retryable=500 <= status < 600)


def _classify_exception(exc: BaseException) -> _Outcome:
    """Map a client-side exception to an outcome. Order matters (subclasses first)."""

    def fail(error: str, retryable: bool) -> _Outcome:
        return _Outcome(None, None, error, retryable)

    if isinstance(exc, TimeoutError):  # includes aiohttp's Server/Connection timeouts
        return fail("timeout", True)
    if isinstance(exc, (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError)):
        return fail("tls error", False)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return fail("dns error", True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = getattr(exc.os_error, "errno", None) == errno.ECONNREFUSED
        return fail("connection refused" if refused else "connection error", True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return fail("server disconnected", True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return fail("bad payload", True)
    if isinstance(exc, aiohttp.TooManyRedirects):
        return fail("too many redirects", False)
    if isinstance(exc, aiohttp.InvalidURL):  # also bad redirect targets
        return fail("bad url", False)
    if isinstance(exc, aiohttp.ClientResponseError):
        return fail("bad response", False)
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError)):
        return fail("connection error", True)
    if isinstance(exc, aiohttp.ClientError):
        return fail("client error", False)
    if isinstance(exc, (TypeError, ValueError)):  # e.g. a body json cannot encode
        return fail("bad request", False)
    return fail("client error", False)


async def _attempt(session: aiohttp.ClientSession, req: _Request, budget: float) -> _Outcome:
    """One HTTP exchange, bounded by ``budget`` seconds from connect to last byte."""
    try:
        async with asyncio.timeout(budget):
            async with session.request(
                req.method,
                req.url,
                params=req.query,
                json=req.json_body,
                headers=req.headers,
                timeout=aiohttp.ClientTimeout(total=budget),
                allow_redirects=True,
                max_redirects=MAX_REDIRECTS,
            ) as resp:
                try:
                    body = await _read_bounded(resp, req.max_bytes)
                except _BodyTooLarge:
                    resp.close()  # drop the connection rather than drain it
                    return _Outcome(resp.status, None, "body too large", retryable=False)
                return _classify_http(resp.status, body)
    except Exception as exc:  # noqa: BLE001 - classified, never propagated
        outcome = _classify_exception(exc)
        if outcome.error in ("client error", "bad request"):
            log.debug("lookup %s: unexpected %r", req.name, exc)
        return outcome


async def perform_lookup(session: aiohttp.ClientSession, params: dict[str, Any]) -> dict[str, Any]:
    """Carry out one ``lookup`` action and return its result dict (see module doc).

    Never raises for network, HTTP or JSON problems; only cancellation of the
    calling task propagates. The whole call, retries and backoff included,
    finishes within ``params["timeout"]`` (plus scheduling jitter).
    """
    started = time.monotonic()
    try:
        req = _parse_params(params)
    except _BadParams as exc:
        # A flow authoring mistake rather than a backend problem: say so loudly.
        log.warning("lookup %s: %s", params.get("name") if isinstance(params, Mapping) else "?", exc)
        return _result(None, exc.args[0], started, attempts=0)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + req.timeout
    total_attempts = req.retries + 1
    outcome: _Outcome | None = None
    attempts = 0

    while attempts < total_attempts:
        remaining = deadline - loop.time()
        if attempts > 0:
            backoff = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1))
            backoff *= random.uniform(0.5, 1.0)
            if remaining - backoff < MIN_ATTEMPT_SECONDS:
                break
            await asyncio.sleep(backoff)
            remaining = deadline - loop.time()
        if remaining <= 0:
            break
        budget = remaining / (total_attempts - attempts)
        attempts += 1
        outcome = await _attempt(session, req, budget)
        if outcome.ok or not outcome.retryable:
            break

    if outcome is None:  # budget gone before the first attempt (cannot really happen)
        result = _result(None, "timeout", started, attempts)
    else:
        result = _result(outcome, None, started, attempts)
    log.log(
        logging.DEBUG if result["ok"] else logging.INFO,
        "lookup %s %s %s%s -> %s in %.0f ms, %d attempt(s)",
        req.name,
        req.method,
        req.url.host,
        req.url.path,  # no query string: it may carry caller data
        "ok" if result["ok"] else result["error"],
        result["latency_ms"],
        attempts,
    )
    return result


class LookupRunner:
    """Shared HTTP client for every call's look-ups, with simple counters.

    One :class:`aiohttp.ClientSession` (pooled connections, bounded per host)
    is created on first use and closed by :meth:`close`. Cookies are never
    kept, so nothing leaks from one caller's look-up to another's. Pass
    ``session`` to use a session owned elsewhere (it is then not closed here).

    Counters for metrics: :attr:`counts` by outcome (``"ok"`` or the error
    label), :attr:`attempts_total`, and the latest look-up latencies in
    :attr:`latencies_ms` (a bounded deque).
    """

    def __init__(
        self,
        *,
        limit: int = 100,
        limit_per_host: int = 20,
        max_latencies: int = 1000,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session = session
        self._owns_session = session is None
        self.counts: Counter[str] = Counter()
        self.attempts_total = 0
        self.latencies_ms: deque[float] = deque(maxlen=max_latencies)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=self._limit_per_host, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=MAX_TIMEOUT),
            )
            self._owns_session = True
        return self._session

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """Perform one look-up (see :func:`perform_lookup`) and count its outcome."""
        result = await perform_lookup(self._get_session(), params)
        self.counts["ok" if result["ok"] else str(result["error"])] += 1
        self.attempts_total += int(result["attempts"])
        self.latencies_ms.append(float(result["latency_ms"]))
        return result

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot of the counters."""
        latencies = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

        return {
            "total": sum(self.counts.values()),
            "counts": dict(self.counts),
            "attempts": self.attempts_total,
            "latency_ms_p50": pct(0.50),
            "latency_ms_p95": pct(0.95),
        }

    async def close(self) -> None:
        """Close the session if this runner created it. Safe to call twice."""
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    async def __aenter__(self) -> LookupRunner:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
