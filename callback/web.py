"""HTTP routes for callbacks: ``POST /api/callbacks``, ``GET``/``DELETE /api/callbacks/{id}``.

Who may call them:

- a signed-in desk account (agent or supervisor; cookie). Browser forms carry
  the CSRF field, scripts the ``X-CSRF-Token`` header. An agent reads and
  cancels only the requests of sessions offered to their interface and the
  ones they booked themselves (the requests carry the caller's number);
  supervisors any;
- another face on behalf of a caller, with a signed ``token`` made by
  :func:`callback_token` for that session (requesting) or returned by the
  POST as ``cancel_token`` (cancelling). Forms with a token carry the CSRF
  field too.

Errors are JSON with a 4xx status, never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ivr.auth import BODY_ERRORS, Account, BadSignature, check_csrf, get_auth, read_post
from ivr.handoff.core import offered_to

from .api import CallbackError, cancel_callback, get_callback, request_callback

TOKEN_TTL = 24 * 3600


def callback_token(app: Any, session_id: str, ttl: float = TOKEN_TTL) -> str:
    """A token letting a caller's page request a callback for ``session_id``
    (``POST /api/callbacks`` with ``token``). ``app``: the server's App, its
    web application, the :class:`ivr.auth.Auth` or a :class:`ivr.auth.Signer`."""
    target = app
    if getattr(target, "web", None) is not None:
        target = target.web
    if isinstance(target, web.Application):
        target = get_auth(target)
    signer = getattr(target, "signer", target)
    return signer.sign("callback", {"s": session_id}, ttl=ttl)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> tuple[dict[str, Any], bool]:
    """(fields, is_form)."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except BODY_ERRORS:
            raise web.HTTPBadRequest(text=json.dumps({"error": "malformed JSON"}), content_type="application/json")
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text=json.dumps({"error": "expected a JSON object"}),
                                     content_type="application/json")
        return data, False
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return dict(await read_post(request)), True
    if request.method == "DELETE" and not request.can_read_body:
        return {}, False
    raise web.HTTPUnsupportedMediaType(text=json.dumps({"error": "send JSON or a form"}),
                                       content_type="application/json")


async def agent_may_see(app: Any, account: Account, request: dict[str, Any]) -> bool:
    """Supervisors: any request; an agent: those of sessions offered to them, or booked by them."""
    if account.role == "supervisor":
        return True
    session_id = str(request.get("session_id") or "")
    if await offered_to(app.store.engine, session_id, account.interface):
        return True
    by = f"{account.role}:{account.name}"
    return any(e["kind"] == "callback_requested" and (e.get("data") or {}).get("id") == request.get("id")
               and (e.get("data") or {}).get("by") == by for e in await app.store.events(session_id))


def routes(app: Any) -> list[web.RouteDef]:
    async def who(request: web.Request, data: dict[str, Any], is_form: bool, purpose: str,
                  bound: str | None) -> str:
        auth = get_auth(request)
        token = data.get("token") or request.query.get("token")
        if token:
            try:
                claims = auth.signer.unsign(purpose, str(token))
            except BadSignature:
                raise web.HTTPForbidden(text=json.dumps({"error": "invalid or expired token"}),
                                        content_type="application/json") from None
            if claims.get("s" if purpose == "callback" else "r") != bound:
                raise web.HTTPForbidden(text=json.dumps({"error": "the token is for another request"}),
                                        content_type="application/json")
            if is_form:
                check_csrf(request, data.get("csrf_token"))
            return "caller"
        account = await auth.account_for(request)
        if account is None:
            raise web.HTTPUnauthorized(text=json.dumps({"error": "sign in or give a token"}),
                                       content_type="application/json")
        # a cookie rides along on any cross-site request: require the CSRF token
        check_csrf(request, data.get("csrf_token") if is_form else None)
        return f"{account.role}:{account.name}"

    async def create(request: web.Request) -> web.Response:
        data, is_form = await _body(request)
        session_id = str(data.get("session_id") or "")
        by = await who(request, data, is_form, "callback", session_id)
        when = data.get("when") or "asap"
        try:
            priority = int(data.get("priority") or 0)
            result = await request_callback(
                app, session_id, number=str(data.get("number") or ""), when=str(when), queue=str(data.get("queue") or ""),
                language=str(data.get("language") or ""), reason=(str(data["reason"]) if data.get("reason") else None),
                channel=str(data.get("channel") or "web"), mode=str(data.get("mode") or "customer_first"),
                priority=priority, by=by)
        except (CallbackError, ValueError, TypeError) as exc:
            return _error(400, str(exc))
        result["cancel_token"] = get_auth(request).signer.sign("callback-cancel", {"r": result["id"]}, ttl=30 * 86400)
        result["requested_by"] = by
        return web.json_response(result, status=201)

    async def show(request: web.Request) -> web.Response:
        request_id = request.match_info["id"]
        token = request.query.get("token")
        account = None
        if token:
            await who(request, {"token": token}, False, "callback-cancel", request_id)
        else:
            account = await get_auth(request).account_for(request)
            if account is None:
                return _error(401, "sign in or give a token")
        found = await get_callback(app, request_id)
        if found is None or (account is not None and not await agent_may_see(app, account, found)):
            # the same answer for "none" and "not yours": ids are not probed this way
            return _error(404, "no such callback request")
        return web.json_response(found)

    async def delete(request: web.Request) -> web.Response:
        request_id = request.match_info["id"]
        data, is_form = await _body(request)
        by = await who(request, data, is_form, "callback-cancel", request_id)
        found = await get_callback(app, request_id)
        account = None if by == "caller" else await get_auth(request).account_for(request)
        if found is None or (account is not None and not await agent_may_see(app, account, found)):
            return _error(404, "no such callback request")
        if not await cancel_callback(app, request_id, by=by):
            return _error(409, f"the request is {found['status']}, not open")
        return web.json_response({"id": request_id, "status": "cancelled"})

    return [web.post("/api/callbacks", create), web.get("/api/callbacks/{id}", show),
            web.delete("/api/callbacks/{id}", delete)]
