"""Who may use the agent push API.

Agent accounts (``ivr.auth``: ``require_role(*roles)``, ``current_account``)
are being built on branch issue-4; when that module exists it is used. Until
then the desk authenticates with ``Authorization: Bearer <desk_token>``
(``Config.desk_token``); without a token configured the API is closed (503).
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


def agent_name(request: web.Request) -> str:
    if current_account is not None:  # pragma: no cover
        account = current_account(request)
        for attr in ("username", "name", "id"):
            value = getattr(account, attr, None) or (account.get(attr) if isinstance(account, dict) else None)
            if value:
                return str(value)
        return str(account)
    return "desk"


def agents_only(handler: Handler, token: Callable[[], str | None]) -> Handler:
    if require_role is not None:  # pragma: no cover
        return require_role(*AGENT_ROLES)(handler)

    async def guarded(request: web.Request) -> web.StreamResponse:
        expected = token()
        if not expected:
            return web.json_response({"error": "the agent API is not configured (desk_token)"}, status=503)
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), expected.encode()):
            return web.json_response({"error": "agents only"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="ivr-desk"'})
        return await handler(request)

    return guarded


