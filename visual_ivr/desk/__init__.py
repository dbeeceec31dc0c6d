"""The agent desk: ``/desk``, a page with a WebSocket that pops when a call
carrying a session reaches the signed-in agent's interface.

- ``GET /desk``: the page (agents and supervisors; sign in at ``/login``).
- ``POST /desk/interface``: the agent states or confirms their interface.
- ``GET /desk/ws?token=...``: the WebSocket (see :mod:`visual_ivr.desk.hub`).
- ``GET /desk/api/sessions/{id}``: one session's pop as JSON (if offered to you).
- ``POST /desk/sessions/{id}/disposition``: disposition and notes (CSRF).
- ``/desk/static/``: the page's script and style (no CDN).

The pop's "Send a page / 发送页面" box texts the caller a guide or a page of the
flow through ``POST /api/visual/push`` (:mod:`visual_ivr.web`, CSRF header)
and shows its status (:mod:`visual_ivr.push`), updated by signed ``push``
messages on the socket.
"""

from __future__ import annotations

from typing import Any

from ivr import server

from .hub import DeskHub
from .views import add_routes


async def desk_extension(app: Any) -> None:
    hub = DeskHub(app)
    app.desk = hub
    add_routes(app.web, app, hub)
    await hub.start()
    app.cleanups.append(hub.stop)


if desk_extension not in server.EXTENSIONS:
    server.EXTENSIONS.append(desk_extension)
