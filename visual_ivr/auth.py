"""Who may use the agent push API.

Signed-in agents and supervisors (``ivr.auth``), or a desk backend with
``Authorization: Bearer <desk_token>`` (``Config.desk_token``) when one is
configured.

Signed-in browsers must send the CSRF token (``X-CSRF-Token``, as the desk
page does) with every POST. An agent may push to, and read, only the sessions
offered to their interface (as on the desk); supervisors and the desk
backend's token may use any session.
"""

from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable

from aiohttp import web

from ivr.auth import check_csrf, current_account, require_role
from ivr.handoff.core import offered_to

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AGENT_ROLES = ("agent", "supervisor")
# aiohttp >= 3.12 wants typed request keys; older versions take a string
AGENT_KEY = web.RequestKey("visual_agent", str) if hasattr(web, "RequestKey") else "visual_agent"


def agent_name(request: web.Request) -> str:
    if request.get(AGENT_KEY):
        return str(request[AGENT_KEY])
    account = current_account(request)
    return account.name if account is not None else "desk"


def _bearer_ok(request: web.Request, expected: str | None) -> bool:
    given = request.headers.get("Authorization", "")
    return bool(expected) and given.startswith("Bearer ") and hmac.compare_digest(
        given[7:].encode(), str(expected).encode())


async def may_use_session(request: web.Request, engine: Any, session_id: str) -> bool:
    """The desk backend (token) and supervisors: any session; an agent: the sessions offered to them."""
    if request.get(AGENT_KEY):
        return True
    account = current_account(request)
    if account is None:
        return False
    if account.role == "supervisor":
        return True
    return await offered_to(engine, session_id, account.interface)


def agents_only(handler: Handler, token: Callable[[], str | None]) -> Handler:
    """Signed-in agents (``ivr.auth``; POSTs need the CSRF token), or the desk's
    service token when one is configured."""

    async def with_csrf(request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            try:
                check_csrf(request)
            except web.HTTPForbidden:
                return web.json_response({"error": "invalid or missing CSRF token; reload the page"}, status=403)
        return await handler(request)

    by_role = require_role(*AGENT_ROLES)(with_csrf)

    async def guarded(request: web.Request) -> web.StreamResponse:
        if _bearer_ok(request, token()):
            request[AGENT_KEY] = "desk"
            return await handler(request)
        return await by_role(request)

    return guarded
