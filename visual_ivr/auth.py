"""Who may use the agent push API.

Signed-in agents and supervisors (``ivr.auth``), or a desk backend with
``Authorization: Bearer <desk_token>`` (``Config.desk_token``) when one is
configured.
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

from aiohttp import web

from ivr.auth import current_account, require_role

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


def agents_only(handler: Handler, token: Callable[[], str | None]) -> Handler:
    """Signed-in agents (``ivr.auth``), or the desk's service token when one is configured."""
    by_role = require_role(*AGENT_ROLES)(handler)

    async def guarded(request: web.Request) -> web.StreamResponse:
        if _bearer_ok(request, token()):
            request[AGENT_KEY] = "desk"
            return await handler(request)
        return await by_role(request)

    return guarded
