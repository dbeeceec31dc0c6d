"""Desk pages and endpoints (thin: the hub and the pop builder do the work)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from typing import Any

import jinja2
from aiohttp import web

from ivr.auth import BODY_ERRORS, AccountError, check_csrf, current_account, get_auth, read_post, render, require_role
from ivr.engine.types import Event

from .hub import DeskHub
from .pop import build_pop

HERE = Path(__file__).resolve().parent
TEMPLATES = jinja2.Environment(
    loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(HERE / "templates")),
                                jinja2.FileSystemLoader(str(HERE.parents[1] / "ivr" / "templates"))]),
    autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

DISPOSITIONS = {
    "resolved": "Resolved",
    "follow_up": "Needs follow-up",
    "callback": "Call back later",
    "escalated": "Escalated",
    "complaint": "Complaint logged",
    "wrong_number": "Wrong number",
    "no_action": "No action needed",
}
MAX_NOTES = 2000


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(webapp: web.Application, app: Any, hub: DeskHub) -> None:
    @require_role("agent", "supervisor")
    async def page(request: web.Request) -> web.Response:
        account = current_account(request)
        assert account is not None
        token, key = hub.issue(request, account)
        return render(request, "desk.html", {
            "account": account, "ws_token": token, "ws_key": key, "dispositions": DISPOSITIONS,
            "interface_error": request.query.get("interface_error"),
        }, env=TEMPLATES)

    @require_role("agent", "supervisor")
    async def set_interface(request: web.Request) -> web.Response:
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise web.HTTPUnsupportedMediaType(text="send the form")
        form = await read_post(request)
        check_csrf(request, form.get("csrf_token"))
        if not isinstance(form.get("interface"), str):
            raise web.HTTPBadRequest(text="the form has no interface field")
        account = current_account(request)
        assert account is not None
        auth = get_auth(request)
        try:
            await auth.accounts.set_interface(account.id, str(form.get("interface", "")), claim=True)
        except AccountError as exc:
            raise web.HTTPSeeOther(f"/desk?interface_error={quote(str(exc)[:200])}") from None
        auth.forget(account.id)
        raise web.HTTPSeeOther("/desk")

    @require_role("agent", "supervisor")
    async def session_json(request: web.Request) -> web.Response:
        account = current_account(request)
        sid = request.match_info["id"]
        if not await hub.may_see(account, sid):
            return _json_error(403, "that session was not offered to you")
        pop = await build_pop(app, sid)
        return web.json_response(pop, dumps=lambda o: json.dumps(o, ensure_ascii=False, default=str)) if pop \
            else _json_error(404, "no such session")

    @require_role("agent", "supervisor")
    async def disposition(request: web.Request) -> web.Response:
        account = current_account(request)
        assert account is not None
        sid = request.match_info["id"]
        if request.content_type == "application/json":
            try:
                data = await request.json()
            except BODY_ERRORS:
                return _json_error(400, "malformed JSON")
            if not isinstance(data, dict):
                return _json_error(400, "expected a JSON object")
            check_csrf(request)
        else:
            data = dict(await read_post(request))
            check_csrf(request, data.get("csrf_token"))
        if not await hub.may_see(account, sid):
            return _json_error(403, "that session was not offered to you")
        code = str(data.get("disposition", ""))
        if code not in DISPOSITIONS:
            return _json_error(400, f"disposition must be one of {', '.join(DISPOSITIONS)}")
        notes = str(data.get("notes", "")).strip()
        if len(notes) > MAX_NOTES:
            return _json_error(400, f"notes are limited to {MAX_NOTES} characters")
        if await app.store.get_session(sid) is None:
            return _json_error(404, "no such session")
        app.store.append(sid, [Event("disposition", None, {
            "agent": account.name, "interface": account.interface, "disposition": code,
            "label": DISPOSITIONS[code], "notes": notes})], "desk")
        await app.store.flush(sid)
        if request.content_type == "application/json":
            return web.json_response({"ok": True, "session_id": sid, "disposition": code})
        raise web.HTTPSeeOther("/desk")

    @require_role("agent", "supervisor")
    async def socket(request: web.Request) -> web.StreamResponse:
        account = current_account(request)
        assert account is not None
        return await hub.handle(request, account)

    webapp.router.add_get("/desk", page)
    webapp.router.add_post("/desk/interface", set_interface)
    webapp.router.add_get("/desk/ws", socket)
    webapp.router.add_get("/desk/api/sessions/{id}", session_json)
    webapp.router.add_post("/desk/sessions/{id}/disposition", disposition)
    webapp.router.add_static("/desk/static/", HERE / "static", append_version=True)
