"""Text messages: pluggable gateways, limits against SMS pumping, one log.

Gateways (``Config.sms_gateway``):

* ``outbox`` (default): the message is kept in the ``sms_messages`` table and
  written to the log; nothing leaves the server, so the demo needs no provider;
* ``http``: a JSON webhook (``{"to", "from", "text", "ref"}``) signed with
  HMAC-SHA256 over ``"<timestamp>.<body>"`` in ``X-IVR-Signature:
  sha256=<hex>`` with ``X-IVR-Timestamp``: the shape SMS relays verify;
* ``smpp``: an operator's SMS centre over SMPP 3.4 (smpplib), bound as a
  transmitter, long texts split with UDH, UCS-2 for Chinese.

Every request is logged in ``sms_messages`` whether sent, refused by the
limits or failed, and the limits count that log: per number per hour, per
session, and for the whole server per hour.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
from sqlalchemy import func, insert, select, update

from ivr.store.engine import WRITE_OPTION
from visual_ivr.models import sms_table as SMS
from visual_ivr.phone import mask_number

log = logging.getLogger("visual_ivr.sms")

SIGNATURE_HEADER = "X-IVR-Signature"
TIMESTAMP_HEADER = "X-IVR-Timestamp"


@dataclass(frozen=True)
class SendResult:
    status: str  # sent | failed
    provider_id: str | None = None
    reason: str | None = None


class SmsGateway(Protocol):
    name: str

    async def send(self, to: str, text: str, *, sender: str, ref: str) -> SendResult: ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------ gateways
class OutboxGateway:
    """Keeps messages in the database (the log row is the outbox) and logs them."""

    name = "outbox"

    async def send(self, to: str, text: str, *, sender: str, ref: str) -> SendResult:
        log.info("SMS outbox %s -> %s: %s", ref, mask_number(to), text)
        return SendResult("sent", f"outbox-{ref}")

    async def close(self) -> None:
        return None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-IVR-Signature`` value for a webhook body."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age: float = 300,
           now: float | None = None) -> bool:
    """What a receiving relay does: constant-time compare, reject old timestamps."""
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= max_age and hmac.compare_digest(sign(secret, timestamp, body), signature)


def _http_reason(exc: aiohttp.ClientError) -> str:
    """Why an HTTP send failed, in words an operator reads in the trail."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = getattr(exc.os_error, "errno", None) == errno.ECONNREFUSED
        return "connection refused" if refused else f"connection error: {exc.os_error}"[:64]
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return type(exc).__name__


class HttpGateway:
    name = "http"

    def __init__(self, url: str, secret: str, *, timeout: float = 5.0):
        if not url or not secret:
            raise ValueError("the http SMS gateway needs sms_http_url and sms_http_secret")
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self._http: aiohttp.ClientSession | None = None

    async def send(self, to: str, text: str, *, sender: str, ref: str) -> SendResult:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = json.dumps({"to": to, "from": sender, "text": text, "ref": ref}, ensure_ascii=False).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json; charset=utf-8", TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(self.secret, ts, body)}
        try:
            async with self._http.post(self.url, data=body, headers=headers) as resp:
                if resp.status // 100 != 2:
                    return SendResult("failed", reason=f"http {resp.status}")
                try:
                    data = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = {}
                pid = data.get("id") if isinstance(data, dict) else None
                return SendResult("sent", str(pid) if pid is not None else None)
        except TimeoutError:
            return SendResult("failed", reason="timeout")
        except aiohttp.ClientError as exc:
            return SendResult("failed", reason=_http_reason(exc))

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


class _SmscRefused(Exception):
    pass


class SmppGateway:
    """SMPP 3.4 transmitter (smpplib is blocking: it runs in a worker thread of
    its own, so one message at a time, over one bound connection kept open).

    A send waits at most ``timeout`` for its turn, then fails (``smpp busy``):
    an SMS centre that does not answer makes callers wait one timeout each,
    not in a queue behind each other, and never ties up the event loop's
    default worker threads that the rest of the server uses.
    """

    name = "smpp"

    def __init__(self, host: str, port: int, system_id: str, password: str, *, timeout: float = 10.0):
        if not host:
            raise ValueError("the smpp SMS gateway needs sms_smpp_host")
        self.host, self.port = host, port
        self.system_id, self.password = system_id, password
        self.timeout = timeout
        self._client: Any = None
        self._turn: asyncio.Lock | None = None
        self._executor: ThreadPoolExecutor | None = None

    def _connect(self) -> Any:
        import smpplib.client

        client = smpplib.client.Client(self.host, self.port, timeout=self.timeout, allow_unknown_opt_params=True)
        try:
            client.connect()
            client.bind_transmitter(system_id=self.system_id, password=self.password)
        except Exception:
            client.disconnect()  # also closes the socket of a connect that failed
            raise
        return client

    def _submit(self, to: str, text: str, sender: str) -> str:
        import smpplib.consts as c
        import smpplib.gsm
        import smpplib.smpp

        parts, coding, esm_class = smpplib.gsm.make_parts(text)
        ids = []
        for part in parts:
            pdu = smpplib.smpp.make_pdu(
                "submit_sm", client=self._client,
                source_addr_ton=c.SMPP_TON_ALNUM if not sender.isdigit() else c.SMPP_TON_UNK,
                source_addr_npi=c.SMPP_NPI_UNK, source_addr=sender,
                dest_addr_ton=c.SMPP_TON_INTL, dest_addr_npi=c.SMPP_NPI_ISDN, destination_addr=to.lstrip("+"),
                short_message=part, data_coding=coding, esm_class=esm_class, registered_delivery=True,
            )
            self._client.send_pdu(pdu)
            while True:
                resp = self._client.read_pdu()
                if resp.command == "enquire_link":
                    self._client._enquire_link_received(resp)
                    continue
                break
            if resp.command != "submit_sm_resp" or resp.sequence != pdu.sequence:
                raise RuntimeError(f"unexpected {resp.command} (sequence {resp.sequence})")
            if resp.is_error():
                raise _SmscRefused(f"SMSC refused: status {resp.status}")
            mid = resp.message_id
            ids.append(mid.decode() if isinstance(mid, bytes) else str(mid))
        return ",".join(ids)

    def _send_blocking(self, to: str, text: str, sender: str) -> SendResult:
        for attempt in (1, 2):
            kept = self._client is not None
            try:
                if self._client is None:
                    self._client = self._connect()
                return SendResult("sent", self._submit(to, text, sender))
            except _SmscRefused as exc:  # a clear answer: the link is fine, do not retry
                return SendResult("failed", reason=str(exc)[:64])
            except Exception as exc:  # noqa: BLE001 - any SMPP/socket failure is a failed send
                self._drop()
                # only a kept connection that went stale is worth a second try
                if attempt == 2 or not kept:
                    # smpplib turns a socket timeout into a bare ConnectionError()
                    timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)
                    what = "timeout" if timed_out else f"{type(exc).__name__}: {exc}"
                    return SendResult("failed", reason=f"smpp: {what}"[:64])
        return SendResult("failed", reason="smpp")  # pragma: no cover

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            except Exception:  # noqa: BLE001
                pass
            self._client = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="smpp")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def send(self, to: str, text: str, *, sender: str, ref: str) -> SendResult:
        if self._turn is None:
            self._turn = asyncio.Lock()
        try:
            async with asyncio.timeout(self.timeout):
                await self._turn.acquire()
        except TimeoutError:
            return SendResult("failed", reason="smpp busy: the SMS centre is slow")
        try:
            return await self._run(self._send_blocking, to, text, sender)
        finally:
            self._turn.release()

    def _close_blocking(self) -> None:
        if self._client is not None:
            try:
                self._client.unbind()
            except Exception:  # noqa: BLE001
                pass
            self._drop()

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close_blocking)
        self._executor.shutdown(wait=False)
        self._executor = None


def make_gateway(config: Any) -> SmsGateway:
    timeout = float(getattr(config, "sms_send_timeout", 5.0))
    if config.sms_gateway == "http":
        return HttpGateway(config.sms_http_url or "", config.sms_http_secret or "", timeout=timeout)
    if config.sms_gateway == "smpp":
        return SmppGateway(config.sms_smpp_host or "", config.sms_smpp_port, config.sms_smpp_system_id,
                           config.sms_smpp_password, timeout=timeout)
    return OutboxGateway()


# ------------------------------------------------------------------ service
@dataclass(frozen=True)
class Limits:
    per_number: int = 3     # per hour
    per_session: int = 2    # ever
    per_hour: int = 500     # all numbers


@dataclass(frozen=True)
class SmsOutcome:
    status: str  # sent | refused | failed
    reason: str | None
    gateway: str
    message_id: int | None = None

    def event(self, to: str) -> dict[str, Any]:
        """The ``sms`` trail event's data."""
        return {"to": mask_number(to), "status": self.status, "reason": self.reason, "gateway": self.gateway}


class SmsService:
    """Checks the limits, sends through the gateway, logs every request."""

    def __init__(self, engine: Any, gateway: SmsGateway, limits: Limits, *, sender: str = ""):
        self.engine = engine  # the trail store's SQLAlchemy AsyncEngine
        self._wengine = engine.execution_options(**{WRITE_OPTION: True})
        self.gateway = gateway
        self.limits = limits
        self.sender = sender
        self._lock = asyncio.Lock()  # limit check and log insert as one step in this process

    async def _count(self, conn: Any, *where: Any) -> int:
        q = select(func.count()).select_from(SMS).where(SMS.c.status.in_(("sent", "queued")), *where)
        return int((await conn.execute(q)).scalar() or 0)

    async def _refusal(self, to: str, session_id: str | None) -> str | None:
        since = datetime.now(UTC) - timedelta(hours=1)
        async with self.engine.connect() as conn:
            if session_id and await self._count(conn, SMS.c.session_id == session_id) >= self.limits.per_session:
                return "limit_session"
            if await self._count(conn, SMS.c.to_number == to, SMS.c.created_at >= since) >= self.limits.per_number:
                return "limit_number"
            if await self._count(conn, SMS.c.created_at >= since) >= self.limits.per_hour:
                return "limit_hour"
        return None

    async def _log(self, **values: Any) -> int:
        values.setdefault("created_at", datetime.now(UTC))
        async with self._wengine.begin() as conn:
            result = await conn.execute(insert(SMS).values(**values))
            return int(result.inserted_primary_key[0])

    async def send(self, to: str, text: str, *, session_id: str | None, language: str | None = None,
                   link_id: str | None = None, secret: str | None = None) -> SmsOutcome:
        """``secret`` (a link token in ``text``) is kept out of the log unless the
        gateway is the outbox, whose log *is* the delivered message."""
        gw = self.gateway.name
        stored = text.replace(secret, "[token]") if secret and gw != "outbox" else text
        base = {"session_id": session_id, "link_id": link_id, "to_number": to, "body": stored,
                "language": language, "gateway": gw}
        async with self._lock:
            reason = await self._refusal(to, session_id)
            if reason:
                mid = await self._log(**base, status="refused", reason=reason)
                log.warning("SMS to %s refused: %s (session %s)", mask_number(to), reason, session_id)
                return SmsOutcome("refused", reason, gw, mid)
            mid = await self._log(**base, status="queued")
        result = await self.gateway.send(to, text, sender=self.sender, ref=str(mid))
        async with self._wengine.begin() as conn:
            await conn.execute(update(SMS).where(SMS.c.id == mid).values(
                status=result.status, reason=result.reason, provider_id=result.provider_id))
        if result.status != "sent":
            log.warning("SMS to %s failed through %s: %s", mask_number(to), gw, result.reason)
        return SmsOutcome(result.status, result.reason, gw, mid)

    async def outbox(self, *, to: str | None = None, session_id: str | None = None) -> list[dict[str, Any]]:
        """Logged messages, newest last (what the outbox gateway "sent")."""
        q = select(SMS).order_by(SMS.c.id)
        if to is not None:
            q = q.where(SMS.c.to_number == to)
        if session_id is not None:
            q = q.where(SMS.c.session_id == session_id)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def close(self) -> None:
        await self.gateway.close()
