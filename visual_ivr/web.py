"""The caller's pages (``/v/<token>``) and the agent push API, on aiohttp.

Server-rendered HTML (Jinja2, autoescaped), one small stylesheet and one small
script served from here (no CDN); every page works without JavaScript. Each
tap is a POST (CSRF-checked) that advances the session one step, then a 303
back to the page (so reload and the browser's back button never repeat a
step). Bad requests get a friendly 4xx page, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from ivr.auth import BODY_ERRORS, AddressLimiter, client_address, read_post
from ivr.engine import public_state
from ivr.flow.nodes import InputDigitsNode, LookupNode
from visual_ivr.auth import AGENT_KEY, agent_name, agents_only, may_use_session
from visual_ivr.hub import VisualHub, WebSession
from visual_ivr.i18n import lang_key, t
from visual_ivr.links import DEVICE_RE
from visual_ivr.nodes import GuideNode
from visual_ivr.push import push_panel

log = logging.getLogger("visual_ivr.web")

HERE = Path(__file__).resolve().parent
DEVICE_COOKIE = "ivr_dev"
HUB_KEY: web.AppKey[VisualHub] = web.AppKey("visual_hub")
#: Unknown or tampered link tokens per client address (``visual_link_failures`` per window).
GUESS_KEY: web.AppKey[AddressLimiter | None] = web.AppKey("visual_link_guesses")
GUESS_WINDOW = 600.0
STATIC = {name: (HERE / "static" / name).read_bytes() for name in ("app.css", "app.js")}
STATIC_TYPES = {"app.css": "text/css", "app.js": "application/javascript"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
TEXT_RE = re.compile(r"^[0-9Xx*# ]{0,64}$")
FREE_TEXT_MAX = 200  # a typed answer where the phone takes a free spoken one

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                          autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                          trim_blocks=True, lstrip_blocks=True, auto_reload=False)
_env.globals["t"] = t


class PageError(Exception):
    def __init__(self, status: int, name: str, lang: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(name)
        self.status, self.name, self.lang, self.headers = status, name, lang, headers or {}


# ------------------------------------------------------------------ rendering
def _html(template: str, status: int = 200, **context: Any) -> web.Response:
    body = _env.get_template(template).render(**context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)


def info_page(hub: VisualHub, name: str, status: int, lang: str | None, *, extra: str | None = None) -> web.Response:
    return _html("info.html", status, lang=_html_lang(lang), title=t(f"{name}_title", lang), message=t(name, lang),
                 extra=extra, service=hub.app.config.visual_service_number)


def _html_lang(lang: str | None) -> str:
    return lang or "zh-CN"


def _request_lang(request: web.Request) -> str:
    accept = request.headers.get("Accept-Language", "").lower()
    return "en-US" if accept.startswith("en") else "zh-CN"


def _humanize(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def _var_label(flow: Any, name: str, lang: str) -> str:
    """A prompt ``var_<name>`` in the flow names a result row per language."""
    pdef = flow.prompts.get(f"var_{name}")
    if pdef is not None:
        texts = pdef.texts()
        text = texts.get(lang) or texts.get(flow.default_language)
        if text:
            return text
    return _humanize(name)


def _cell(value: Any, lang: str) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return ("是" if value else "否") if lang_key(lang) == "zh" else ("yes" if value else "no")
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def lookup_tables(flow: Any, state: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Look-up results of this step as readable tables (masked variables never shown)."""
    lang = state.get("lang") or flow.default_language
    shown = public_state(state)["vars"]
    masked = set(state.get("masked") or ())
    tables = []
    for event in events:
        data = event.get("data") or {}
        if event.get("kind") != "lookup" or not data.get("ok"):
            continue
        node = flow.nodes.get(str(data.get("name")))
        if not isinstance(node, LookupNode):
            continue
        rows, grids = [], []
        for var in node.assign:
            if var in masked or var not in shown:
                continue
            value = shown[var]
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                columns = list(dict.fromkeys(k for v in value for k in v))
                grids.append({"caption": _var_label(flow, var, lang),
                              "columns": [_var_label(flow, c, lang) for c in columns],
                              "rows": [[_cell(v.get(c), lang) for c in columns] for v in value[:50]]})
            elif isinstance(value, dict):
                grids.append({"caption": _var_label(flow, var, lang), "columns": [], "rows": [
                    [_var_label(flow, str(k), lang), _cell(v, lang)] for k, v in list(value.items())[:50]]})
            elif isinstance(value, list):
                rows.append((_var_label(flow, var, lang), ", ".join(_cell(v, lang) for v in value[:50]) or "—"))
            else:
                rows.append((_var_label(flow, var, lang), _cell(value, lang)))
        if rows or grids:
            caption = flow.text(node.label, lang) if node.label else t("results", lang)
            tables.append({"caption": caption, "rows": rows, "grids": grids})
    return tables


def _error_text(reason: str, node: Any, lang: str) -> str:
    if reason == "length" and isinstance(node, InputDigitsNode):
        if node.min_length == node.max_length:
            return t("err_length", lang, n=node.min_length)
        return t("err_length_range", lang, a=node.min_length, b=node.max_length)
    if reason in ("pattern", "checksum", "chars", "empty"):
        return t(f"err_{reason}", lang)
    if reason in ("connect_failed", "callback_failed"):
        return t(reason, lang)
    return t("step_error", lang)


def page_context(hub: VisualHub, ws: WebSession, token: str, csrf: str) -> tuple[str, dict[str, Any]]:
    """(template, context) of the page a session is at."""
    turn = ws.turn
    assert turn is not None
    state = turn.state
    flow = hub.flow_of(state)
    lang = state.get("lang") or flow.default_language
    node = flow.nodes.get(state.get("node", ""))
    base = {"lang": lang, "token": token, "csrf": csrf, "service": hub.app.config.visual_service_number,
            "flow_title": flow.text(flow.title, lang)}
    if ws.back_on_phone:
        return "info.html", {**base, "title": t("back_on_phone_title", lang), "message": t("back_on_phone", lang)}
    if ws.finished == "moved":
        return "info.html", {**base, "title": t("moved_title", lang), "message": t("moved", lang)}
    prompts = [p.text for p in ws.shown if p.text]
    if ws.callback and turn.ended:
        when = ws.callback.get("when")
        when_text = t("asap", lang) if when == "asap" else _slot_label(hub, str(when), lang)
        cancelled = ws.callback.get("status") == "cancelled"
        return "callback_done.html", {**base, "title": t("callback_done_title", lang), "cancelled": cancelled,
                                      "message": t("callback_done", lang, when=when_text,
                                                   number=_masked(ws.number))}
    if turn.ended:
        return "info.html", {**base, "title": t("done_title", lang), "message": t("done", lang),
                             "prompts": prompts}
    title = flow.text(node.label, lang) if node is not None and node.label else base["flow_title"]
    ctx: dict[str, Any] = {**base, "title": title, "prompts": prompts,
                           "tables": lookup_tables(flow, state, ws.step_events),
                           "can_back": len(state.get("history") or []) > 1, "error": None}
    if hub.pending(turn) == "transfer":
        if ws.holding:
            return "info.html", {**base, "title": t("to_phone_title", lang), "message": t("to_phone", lang),
                                 "prompts": prompts}
        return "person.html", {**ctx, **person_context(hub, ws, lang), "title": t("person_title", lang),
                               "tables": []}
    expect = turn.expect
    if isinstance(node, GuideNode):
        ctx["title"] = flow.text(node.title, lang)
        ctx["step"] = t("step_of", lang, i=node.step_index(_StateCtx(state)) + 1, n=len(node.steps))
    if ws.flash:
        ctx["error"] = _error_text(ws.flash, node, lang)
    if expect is not None and expect.kind == "speech":
        # a free spoken answer on the phone (ask without choices): typed here
        ctx["digits"] = {"max": FREE_TEXT_MAX, "hint": t("free_text_hint", lang), "mode": "text"}
        return "page.html", ctx
    if expect is not None and expect.kind == "digits":
        star_x = isinstance(node, InputDigitsNode) and node.star_as_x
        ctx["digits"] = {"max": expect.max_length, "hint": t("digits_hint_x" if star_x else "digits_hint", lang),
                         "mode": "text" if star_x else "numeric"}
        return "page.html", ctx
    if expect is not None:
        ctx["choices"] = [(c.key, c.label) for c in expect.choices]
        return "page.html", ctx
    return "info.html", {**base, "title": t("error_title", lang), "message": t("error", lang)}


class _StateCtx:
    def __init__(self, state: dict[str, Any]):
        self.state = state


def _masked(number: str | None) -> str:
    from visual_ivr.phone import mask_number

    return mask_number(number)


def _slot_label(hub: VisualHub, iso: str, lang: str) -> str:
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    from zoneinfo import ZoneInfo

    local = when.astimezone(ZoneInfo(hub.app.config.visual_timezone))
    today = dt.datetime.now(local.tzinfo).date()
    zh = lang_key(lang) == "zh"
    if local.date() == today:
        day = "今天" if zh else "today"
    elif local.date() == today + dt.timedelta(days=1):
        day = "明天" if zh else "tomorrow"
    else:
        day = local.strftime("%m-%d")
    return f"{day} {local:%H:%M}" if zh else f"{day} at {local:%H:%M}"


def person_context(hub: VisualHub, ws: WebSession, lang: str) -> dict[str, Any]:
    slots = [(s.isoformat(), _slot_label(hub, s.isoformat(), lang)) for s in hub.callback_slots()]
    return {"can_connect": hub.can_connect(ws), "slots": slots, "number": _masked(ws.number)}


# ------------------------------------------------------------------ requests
def _device(request: web.Request) -> str | None:
    value = request.cookies.get(DEVICE_COOKIE, "")
    return value if DEVICE_RE.match(value) else None


async def _session_for(request: web.Request, *, posting: bool) -> tuple[WebSession, str, str | None]:
    """(web session, device id, new device cookie to set) for the request's token, or a PageError."""
    hub = request.app[HUB_KEY]
    token = request.match_info["token"]
    guesses = request.app.get(GUESS_KEY)
    address = client_address(request)
    if guesses is not None:
        # too many made-up tokens from this address: answer nothing about any token for a while
        wait = guesses.retry_after(address)
        if wait is not None:
            log.warning("visual link refused: too many unknown link tokens from %s", address)
            raise PageError(429, "too_many", _request_lang(request), {"Retry-After": str(int(wait))})
    device = _device(request)
    new_device = None
    if device is None:
        if posting:
            raise PageError(403, "bad_request", _request_lang(request))
        device = new_device = hub.links.new_device()
    red = await hub.links.redeem(token, device)
    lang = red.link.language if red.link else _request_lang(request)
    if red.status in ("bad", "unknown"):
        if guesses is not None:
            guesses.fail(address)
        log.info("visual link: %s token from %s", red.status, address)
        raise PageError(404, "not_found", _request_lang(request))
    if red.status == "other_device":
        raise PageError(403, "other_device", lang)
    assert red.link is not None
    ws = hub.sessions.get(red.link.id)
    if red.status in ("expired", "ended"):
        if red.status == "ended" and ws is not None and ws.turn is not None:
            return ws, device, new_device  # show its last page (callback booked, moved ...)
        raise PageError(410, red.status, lang)
    if ws is None:  # the server restarted since the link was sent: continue from the stored state
        ws = WebSession(red.link.id, red.link.session_id, "push" if red.link.kind == "push" else "detached",
                        red.link.node, red.link.language)
        hub.sessions[red.link.id] = ws
    return ws, device, new_device


def _with_cookie(resp: web.StreamResponse, hub: VisualHub, new_device: str | None) -> web.StreamResponse:
    if new_device:
        secure = (hub.app.config.public_url or "").startswith("https://")
        resp.set_cookie(DEVICE_COOKIE, new_device, max_age=30 * 86400, httponly=True, samesite="Lax",
                        secure=secure, path="/v/")
    return resp


async def page(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    hub = request.app[HUB_KEY]
    ws, device, new_device = await _session_for(request, posting=False)
    token = request.match_info["token"]
    async with ws.lock:
        if ws.turn is None and not ws.back_on_phone:
            await hub.open(ws)
        if ws.turn is None:
            return _with_cookie(info_page(hub, "back_on_phone", 200, ws.language), hub, new_device)
        csrf = hub.links.csrf_token(ws.link_id, device)
        if request.query.get("view") == "person" and not ws.turn.ended and not ws.back_on_phone \
                and ws.finished is None:
            lang = ws.turn.state.get("lang")
            template, ctx = page_context(hub, ws, token, csrf)
            if template == "page.html":
                ctx = {**ctx, **person_context(hub, ws, lang), "title": t("person_title", lang), "cancel": True,
                       "prompts": [], "tables": [], "step": None}
                template = "person.html"
        else:
            template, ctx = page_context(hub, ws, token, csrf)
        ws.flash = None
    resp = _html(template, **ctx)
    resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return _with_cookie(resp, hub, new_device)


async def act(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    hub = request.app[HUB_KEY]
    ws, device, _ = await _session_for(request, posting=True)
    token = request.match_info["token"]
    form = await read_post(request)
    lang = (ws.turn.state.get("lang") if ws.turn else ws.language) or "zh-CN"
    if not hub.links.check_csrf(ws.link_id, device, form.get("csrf") if isinstance(form.get("csrf"), str) else None):
        raise PageError(403, "bad_request", lang)
    action = form.get("action")
    value = form.get("value")
    value = value if isinstance(value, str) else ""
    here = f"/v/{token}"
    async with ws.lock:
        turn = ws.turn
        if turn is None or ws.back_on_phone:
            raise web.HTTPSeeOther(here)
        if action == "cancel_callback":
            await hub.cancel_callback(ws)
            raise web.HTTPSeeOther(here)
        if turn.ended or ws.finished:
            raise web.HTTPSeeOther(here)
        if action == "tap":
            expect = turn.expect
            allowed = {c.key for c in expect.choices} if expect is not None and expect.kind == "choice" else set()
            if value not in allowed:
                raise PageError(400, "bad_request", lang)
            await hub.tap(ws, value)
        elif action == "text" and turn.expect is not None and turn.expect.kind == "speech":
            answer = " ".join(value.split())
            if not answer or len(answer) > FREE_TEXT_MAX or not answer.isprintable():
                ws.flash = "empty" if not answer else "chars"
            else:
                ws.flash = await hub.enter_text(ws, answer)
        elif action == "text":
            if turn.expect is None or turn.expect.kind != "digits":
                raise PageError(400, "bad_request", lang)
            if not TEXT_RE.match(value):
                ws.flash = "chars"
            elif not value.strip():
                ws.flash = "empty"
            else:
                ws.flash = await hub.enter_text(ws, value)
        elif action == "back":
            await hub.back(ws)
        elif action == "connect":
            if not await hub.connect_now(ws):
                ws.flash = "connect_failed"
                raise web.HTTPSeeOther(here + "?view=person")
        elif action == "callback":
            if value == "asap":
                when: Any = "asap"
            else:
                slots = {s.isoformat(): s for s in hub.callback_slots()}
                if value not in slots:
                    raise PageError(400, "bad_request", lang)
                when = slots[value]
            if await hub.request_callback(ws, when) is None:
                raise web.HTTPSeeOther(here + "?view=person")
        else:
            raise PageError(400, "bad_request", lang)
        await hub.links.touch(ws.link_id)
    raise web.HTTPSeeOther(here, headers={"Server-Timing": f"app;dur={(time.perf_counter() - started) * 1000:.1f}"})


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=STATIC[name], content_type=STATIC_TYPES[name],
                        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})


# ------------------------------------------------------------------ agent push API
def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


async def api_push(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    try:
        body = await request.json()
    except BODY_ERRORS:
        return web.json_response({"error": "send a JSON object"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("session_id"), str) or \
            not isinstance(body.get("node"), str):
        return web.json_response({"error": "session_id and node (strings) are required"}, status=400)
    for key in ("number", "language"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return web.json_response({"error": f"{key} must be a string"}, status=400)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", body["session_id"]):
        return web.json_response({"error": "bad session_id"}, status=400)
    if not await may_use_session(request, hub.store.engine, body["session_id"]):
        return web.json_response({"error": "that session was not offered to you"}, status=403)
    if body.get("number") and not request.get(AGENT_KEY):
        # signed-in people text the caller's own number only (no SMS to numbers typed in)
        return web.json_response({"error": "only the desk backend (service token) may choose the number"},
                                 status=403)
    code, out = await hub.push(body["session_id"], node=body["node"], agent=agent_name(request),
                               number=body.get("number"), language=body.get("language"))
    return web.json_response(out, status=code)


async def api_session(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    sid = request.match_info["session_id"]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", sid):
        return web.json_response({"error": "bad session_id"}, status=400)
    if not await may_use_session(request, hub.store.engine, sid):
        return web.json_response({"error": "that session was not offered to you"}, status=403)
    session = await hub.store.get_session(sid)
    if session is None:
        return web.json_response({"error": "no such session"}, status=404)
    links = await hub.links.for_session(sid)
    events = await hub.store.events(sid)
    panel = await push_panel(hub.app, session, events)
    return web.json_response({"session_id": sid, "links": [link.to_dict() for link in links],
                              "events": [e for e in events if e["channel"] == "web" or e["kind"] == "sms"],
                              "push": panel}, dumps=_dumps)


# ------------------------------------------------------------------ wiring
@web.middleware
async def friendly_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Pages under /v/ never show a traceback or a bare error."""
    if not request.path.startswith("/v/"):
        return await handler(request)
    hub = request.app[HUB_KEY]
    started = time.perf_counter()
    try:
        return await handler(request)
    except PageError as err:
        resp = info_page(hub, err.name, err.status, err.lang)
        resp.headers.update(err.headers)
        resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        name = {404: "not_found", 405: "bad_request", 413: "bad_request"}.get(exc.status, "bad_request")
        return info_page(hub, name, exc.status, _request_lang(request))
    except Exception:
        log.exception("visual IVR page %s failed", request.path)
        return info_page(hub, "error", 500, _request_lang(request))


def add_routes(webapp: web.Application, hub: VisualHub) -> None:
    webapp[HUB_KEY] = hub
    limit = hub.app.config.visual_link_failures
    webapp[GUESS_KEY] = AddressLimiter(limit, GUESS_WINDOW) if limit else None
    webapp.middlewares.append(friendly_errors)
    webapp.router.add_get("/v/static/{name}", static)
    webapp.router.add_get(r"/v/{token:[^/]{1,200}}", page)
    webapp.router.add_post(r"/v/{token:[^/]{1,200}}", act)
    token = lambda: hub.app.config.desk_token  # noqa: E731
    webapp.router.add_post("/api/visual/push", agents_only(api_push, token))
    webapp.router.add_get(r"/api/visual/sessions/{session_id}", agents_only(api_session, token))
