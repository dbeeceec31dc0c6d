"""Who may use the agent push API.

Agent accounts (``ivr.auth``: ``require_role(*roles)``, ``current_account``)
are being built on branch issue-4; when that module exists, signed-in agents
and supervisors are admitted through it. A desk backend may also use
``Authorization: Bearer <desk_token>`` (``Config.desk_token``); with neither
the API is closed (503).
"""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

from aiohttp import web

try:  # pragma: no cover - depends on the merge of the accounts feature
    from ivr.auth import current_account, require_role  # type: ignore[import-not-found]
except ImportError:
    current_account = None
    require_role = None

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AGENT_ROLES = ("agent", "supervisor")
# aiohttp >= 3.12 wants typed request keys; older versions take a string
AGENT_KEY = web.RequestKey("visual_agent", str) if hasattr(web, "RequestKey") else "visual_agent"


def agent_name(request: web.Request) -> str:
    if request.get(AGENT_KEY):
        return str(request[AGENT_KEY])
    if current_account is not None:  # pragma: no cover
        account = current_account(request)
        for attr in ("username", "name", "id"):
            value = getattr(account, attr, None) or (account.get(attr) if isinstance(account, dict) else None)
            if value:
                return str(value)
        return str(account)
    return "desk"


def _bearer_ok(request: web.Request, expected: str | None) -> bool:
    given = request.headers.get("Authorization", "")
    return bool(expected) and given.startswith("Bearer ") and hmac.compare_digest(
        given[7:].encode(), str(expected).encode())


def agents_only(handler: Handler, token: Callable[[], str | None]) -> Handler:
    """Signed-in agents (``ivr.auth``), or the desk's service token when one is configured."""
    by_role = require_role(*AGENT_ROLES)(handler) if require_role is not None else None

    async def guarded(request: web.Request) -> web.StreamResponse:
        expected = token()
        if _bearer_ok(request, expected):
            request[AGENT_KEY] = "desk"
            return await handler(request)
        if by_role is not None:  # pragma: no cover - with the accounts feature merged
            return await by_role(request)
        if not expected:
            return web.json_response({"error": "the agent API is not configured (desk_token)"}, status=503)
        return web.json_response({"error": "agents only"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="ivr-desk"'})

    return guarded
