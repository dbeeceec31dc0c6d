"""The desk WebSocket: pops pushed to the agents connected to this server.

Connecting
    The page carries a signed, short-lived, single-use token (purpose
    ``desk-ws``, bound to the account and a random nonce) and a per-page
    message key derived from the server secret and that nonce. The socket is
    refused when the token is forged, expired, already used, for another
    account, or when the ``Origin`` is not this site (cross-site WebSocket
    hijacking).

Messages, both ways
    ``{"body": "<JSON text>", "mac": "<base64url HMAC-SHA256(key, body)>"}``
    where the body is ``{"seq": n, "type": ..., "data": ...}``. A message
    whose MAC is wrong is forged; one whose ``seq`` is not above the last one
    seen is replayed: both are refused (an ``error`` reply; the socket is
    closed after a few). The page checks the server's messages the same way.

Who sees what
    An agent gets the pops offered to their interface and may open only those
    sessions; a supervisor gets every pop and the list of live calls.

Pages texted from the desk
    When a page an agent texted (visual IVR push) is sent, opened or used, the
    server that saw it publishes ``visual_push`` on the desk bus; every server
    sends the new status as a ``push`` message to the desks that may see that
    session. The page may also ask for it (``push``, a fallback refresh).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from ivr.auth import Account, BadSignature, get_auth
from ivr.handoff.core import offered_to, offers_for, same_interface

from visual_ivr.push import push_status

from .pop import build_pop

log = logging.getLogger("visual_ivr.desk")

TOKEN_TTL = 300
MAX_REFUSALS = 5


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(eq=False)
class DeskConnection:
    ws: web.WebSocketResponse
    account: Account
    key: bytes
    recv_seq: int = 0
    send_seq: int = 0
    refused: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DeskHub:
    def __init__(self, app: Any):
        self.app = app
        self.connections: set[DeskConnection] = set()
        self._used: dict[str, float] = {}  # nonce -> expiry
        self._unsubscribe: Any = None
        self.pops_sent = 0
        self.push_updates = 0
        self.refused = 0

    # ---- life
    async def start(self) -> None:
        handoff = getattr(self.app, "handoff", None)
        if handoff is not None:
            self._unsubscribe = handoff.bus.subscribe(self._on_bus)

    async def stop(self) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")

    # ---- tokens
    def _signer(self, request: web.Request) -> Any:
        return get_auth(request).signer

    def conn_key(self, signer: Any, nonce: str) -> bytes:
        return hmac.new(signer.key("desk-conn"), nonce.encode(), hashlib.sha256).digest()

    def issue(self, request: web.Request, account: Account) -> tuple[str, str]:
        """(token, message key as base64url) for one page load."""
        signer = self._signer(request)
        nonce = secrets.token_urlsafe(18)
        token = signer.sign("desk-ws", {"a": account.id, "n": nonce}, ttl=TOKEN_TTL)
        return token, _b64(self.conn_key(signer, nonce))

    def _use_nonce(self, nonce: str, exp: float) -> bool:
        now = time.time()
        for key in [k for k, v in self._used.items() if v < now]:
            del self._used[key]
        if nonce in self._used:
            return False
        self._used[nonce] = exp + 60
        return True

    # ---- the socket
    async def handle(self, request: web.Request, account: Account) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            log.warning("desk socket refused: origin %s is not %s", origin, request.host)
            raise web.HTTPForbidden(text=json.dumps({"error": "cross-origin socket refused"}),
                                    content_type="application/json")
        signer = self._signer(request)
        try:
            claims = signer.unsign("desk-ws", request.query.get("token"))
        except BadSignature as exc:
            log.warning("desk socket refused for %s: token %s", account.name, exc)
            raise web.HTTPForbidden(text=json.dumps({"error": f"bad token ({exc})"}),
                                    content_type="application/json") from None
        nonce = str(claims.get("n", ""))
        if claims.get("a") != account.id or not nonce:
            raise web.HTTPForbidden(text=json.dumps({"error": "token for another account"}),
                                    content_type="application/json")
        if not self._use_nonce(nonce, float(claims.get("exp", time.time()))):
            log.warning("desk socket refused for %s: token replayed", account.name)
            raise web.HTTPForbidden(text=json.dumps({"error": "token already used; reload the page"}),
                                    content_type="application/json")
        ws = web.WebSocketResponse(heartbeat=25, max_msg_size=64 * 1024)
        await ws.prepare(request)
        conn = DeskConnection(ws, account, self.conn_key(signer, nonce))
        self.connections.add(conn)
        try:
            await self.send(conn, "hello", {"account": account.name, "role": account.role,
                                            "interface": account.interface})
            await self._initial(conn)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._receive(conn, msg.data)
                    if conn.refused >= MAX_REFUSALS:
                        await ws.close(code=4003, message=b"too many refused messages")
                        break
                elif msg.type == WSMsgType.BINARY:
                    await self._refuse(conn, "binary frames are not accepted")
        finally:
            self.connections.discard(conn)
        return ws

    def _mac(self, conn: DeskConnection, body: str) -> str:
        return _b64(hmac.new(conn.key, body.encode(), hashlib.sha256).digest())

    async def send(self, conn: DeskConnection, kind: str, data: Any) -> None:
        async with conn.lock:
            if conn.ws.closed:
                return
            conn.send_seq += 1
            body = json.dumps({"seq": conn.send_seq, "type": kind, "data": data}, ensure_ascii=False,
                              separators=(",", ":"), default=str)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(json.dumps({"body": body, "mac": self._mac(conn, body)}))

    async def _refuse(self, conn: DeskConnection, why: str) -> None:
        conn.refused += 1
        self.refused += 1
        log.warning("desk message from %s refused: %s", conn.account.name, why)
        await self.send(conn, "error", {"message": f"refused: {why}"})

    async def _receive(self, conn: DeskConnection, text: str) -> None:
        try:
            outer = json.loads(text)
            body, mac = outer["body"], outer["mac"]
            if not isinstance(body, str) or not isinstance(mac, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            await self._refuse(conn, "malformed message")
            return
        if not hmac.compare_digest(mac.encode(), self._mac(conn, body).encode()):
            await self._refuse(conn, "bad signature (forged)")
            return
        try:
            inner = json.loads(body)
            seq, kind, data = int(inner["seq"]), str(inner["type"]), inner.get("data") or {}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            await self._refuse(conn, "malformed message")
            return
        if seq <= conn.recv_seq:
            await self._refuse(conn, f"replayed (seq {seq} after {conn.recv_seq})")
            return
        conn.recv_seq = seq
        await self._handle(conn, kind, data if isinstance(data, dict) else {})

    async def _handle(self, conn: DeskConnection, kind: str, data: dict[str, Any]) -> None:
        if kind == "ping":
            await self.send(conn, "pong", {"t": data.get("t")})
        elif kind == "open":
            sid = str(data.get("session_id", ""))[:64]
            if not await self.may_see(conn.account, sid):
                await self.send(conn, "error", {"message": "that session was not offered to you"})
                return
            pop = await build_pop(self.app, sid)
            if pop:
                await self.send(conn, "pop", pop)
        elif kind == "live":
            if conn.account.role != "supervisor":
                await self.send(conn, "error", {"message": "live calls are for supervisors"})
                return
            await self.send(conn, "live", await self.live_calls())
        elif kind == "push":  # the page asks for the status of the pages sent (fallback refresh)
            sid = str(data.get("session_id", ""))[:64]
            if not await self.may_see(conn.account, sid):
                await self.send(conn, "error", {"message": "that session was not offered to you"})
                return
            panel = await push_status(self.app, sid)
            if panel is not None:
                await self.send(conn, "push", {"session_id": sid, "link": None, "push": panel})
        elif kind == "ack":
            pass  # the page saw the pop (kept for metrics)
        else:
            await self.send(conn, "error", {"message": f"unknown message type {kind!r}"})

    async def _initial(self, conn: DeskConnection) -> None:
        account = conn.account
        if account.role == "supervisor":
            await self.send(conn, "live", await self.live_calls())
            return
        if not account.interface:
            return
        offers = await offers_for(self.app.store.engine, account.interface, limit=10)
        await self.send(conn, "offers", [{"session_id": o["session_id"], "kind": o["kind"], "queue": o["queue"],
                                          "at": o["at"].isoformat() if o["at"] else None} for o in offers])

    async def live_calls(self) -> list[dict[str, Any]]:
        sessions = await self.app.store.list_sessions(live=True, limit=100)
        return [{"session_id": s["id"], "caller": s["caller"], "flow_id": s["flow_id"], "channel": s["channel"],
                 "language": s["language"], "started_at": s["started_at"], "agent": s.get("agent")}
                for s in sessions]

    async def may_see(self, account: Account, session_id: str) -> bool:
        if account.role == "supervisor":
            return True
        return await offered_to(self.app.store.engine, session_id, account.interface)

    # ---- pops from the bus (any server)
    async def _on_bus(self, message: dict[str, Any]) -> None:
        if message.get("type") == "visual_push" and self.connections:
            await self._on_visual_push(message)
            return
        if message.get("type") != "pop" or not self.connections:
            return
        sid = str(message.get("session_id", ""))
        targets = [c for c in list(self.connections)
                   if c.account.role == "supervisor" or same_interface(c.account.interface, message.get("interface"))]
        if not targets:
            return
        offer = {k: message.get(k) for k in ("interface", "kind", "queue", "agent", "at")}
        pop = await build_pop(self.app, sid, offer)
        if pop is None:
            log.warning("pop for unknown session %s", sid)
            return
        await asyncio.gather(*(self.send(c, "pop", pop) for c in targets))
        self.pops_sent += len(targets)

    # ---- pages agents texted (visual IVR push): sent, opened, steps, done
    async def _on_visual_push(self, message: dict[str, Any]) -> None:
        """A pushed page changed (on any server): the new status to every desk
        that may see the session, as a signed ``push`` message."""
        sid = str(message.get("session_id", ""))[:64]
        interfaces: dict[str, bool] = {}
        targets = []
        for conn in list(self.connections):
            account = conn.account
            if account.role == "supervisor":
                targets.append(conn)
                continue
            iface = account.interface or ""
            if iface not in interfaces:
                interfaces[iface] = await self.may_see(account, sid)
            if interfaces[iface]:
                targets.append(conn)
        if not targets:
            return
        panel = await push_status(self.app, sid)
        if panel is None:
            return
        data = {"session_id": sid, "link": message.get("link"), "push": panel}
        await asyncio.gather(*(self.send(c, "push", data) for c in targets))
        self.push_updates += len(targets)
