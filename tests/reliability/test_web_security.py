"""Hostile input on the web side: link tokens, CSRF, script injection, bad
posts, agent isolation and brute-force sign-in.

Every test runs a whole server (``ivr serve`` in this process: FastAGI with the
fake Asterisk, the aiohttp app on a real port, SQLite) and talks to it over
real HTTP and WebSockets; script injection is checked in real Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import statistics
import string
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import MetaData, select, update

from ivr.auth import AccountStore
from visual_ivr.models import links_table

from ..handoff_util import DeskClient, _b64, base_url
from ..visual_support import Call, client, csrf, get, post, until, visual_server

pytestmark = pytest.mark.timeout(240)

SECRET = "web-security-test-secret-0123456789abcdef"
ALPHABET = string.ascii_letters + string.digits + "-_"
#: The demo back end (``/demo-api``) stands in for the company's own systems: no
#: cookies, no sign-in, nothing of a browser; it is not a page of this product.
NOT_PAGES = ("/demo-api",)


@asynccontextmanager
async def site(tmp_path: Path, flows_dir: Path, **overrides: Any):
    """A server with agents alice (PJSIP/1001), bob (PJSIP/1002) and supervisor sam."""
    async with visual_server(tmp_path, flows_dir, secret_key=SECRET, **overrides) as app:
        accounts = AccountStore(app.store.engine)
        await accounts.create("alice", "alice-pass-1", interface="PJSIP/1001")
        await accounts.create("bob", "bob-pass-12", interface="PJSIP/1002")
        await accounts.create("sam", "sam-pass-12", role="supervisor")
        yield app


async def desk(app: Any, name: str, password: str) -> DeskClient:
    c = DeskClient(base_url(app))
    await c.login(name, password)
    await c.page()
    return c


async def finished_call(app: Any, keys: list[str] | None = None, **kw: Any) -> str:
    call = Call(app, keys or ["1", "3", "1"], **kw)  # outage information, then goodbye
    return (await call.result()).variables["IVR_SESSION"]


def state_changing_routes(webapp: web.Application) -> list[tuple[str, str]]:
    """(method, path template) of every route that may change something."""
    out = []
    for route in webapp.router.routes():
        if route.method not in ("POST", "PUT", "PATCH", "DELETE"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith(NOT_PAGES):
            continue
        out.append((route.method, path))
    return sorted(set(out))


def fill(path: str, values: dict[str, str]) -> str:
    names = re.findall(r"\{(\w+)(?::[^}]*)?\}", path)
    missing = [n for n in names if n not in values]
    assert not missing, f"new route {path}: give this test a value for {missing} so it is covered"
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: values[m.group(1)], path)


async def dump_database(engine: Any, skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    meta = MetaData()
    async with engine.connect() as conn:
        await conn.run_sync(meta.reflect)
        return {t.name: sorted(str(tuple(r)) for r in (await conn.execute(select(t))).all())
                for t in meta.sorted_tables if t.name not in skip}


def no_traceback(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()[:200]}" for r in records
            if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]


# =========================================================================== link tokens


def _flip(token: str, i: int) -> str:
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]


@pytest.mark.reliability("web.link-tokens")
async def test_tampered_expired_replayed_and_guessed_link_tokens(tmp_path, flows_dir, rel) -> None:
    async with site(tmp_path, flows_dir, visual_link_failures=0) as app:
        hub = app.driver.visual_hub
        call = Call(app, ["1", "8"])
        link = await call.link()
        token = link.rsplit("/", 1)[1]
        prefix = link[: -len(token)]
        sid = next(iter(hub.calls))
        async with client() as phone:
            status, first = await get(phone, link)
            assert status == 200 and "<h1>主菜单</h1>" in first
        expired_token, expired = await hub.links.issue(sid, kind="push", node="main", language="zh-CN")
        async with app.store.engine.begin() as conn:
            await conn.execute(update(links_table).where(links_table.c.id == expired.id)
                               .values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
        ended_token, ended = await hub.links.issue(sid, kind="push", node="main", language="zh-CN")
        await hub.links.end(ended.id, "test")
        sessions_before = set(hub.sessions)
        rng = random.Random(7)
        guesses = {
            "tampered": [_flip(token, i) for i in range(len(token))],
            "truncated": [token[:n] for n in (1, 8, 20, 35)],
            "extended": [token + "A", token + token[:10], token + "%00", token + "%2F..%2F", token + "/x"],
            "guessed": ["".join(rng.choice(ALPHABET) for _ in range(36)) for _ in range(1000)],
            # right shape and a valid tag, but never issued: only the server's secret makes these
            "signed unknown": [hub.links.new_token() for _ in range(20)],
        }
        answers: dict[tuple[int, str], int] = {}
        timings: dict[str, list[float]] = {"guessed": [], "signed unknown": []}
        leaks = []
        secrets_of_the_session = ["13800138000", "138****8000", sid, token, "主菜单", "余额和账单", "csrf"]
        async with client() as thief:
            for kind, tokens in guesses.items():
                for bad in tokens:
                    started = time.perf_counter()
                    async with thief.get(prefix + bad, allow_redirects=False) as resp:
                        body = await resp.text()
                        status = resp.status
                    if kind in timings:
                        timings[kind].append(time.perf_counter() - started)
                    answers[(status, body)] = answers.get((status, body), 0) + 1
                    leaks += [f"{kind} {bad}: {s}" for s in secrets_of_the_session if s in body]
                    assert 400 <= status < 500, (kind, bad, status)
            # expired, ended, replayed from another device: 4xx, nothing of the session shown
            refused = {}
            for kind, url in (("expired", prefix + expired_token), ("ended", prefix + ended_token),
                              ("other device", link)):
                status, body = await get(thief, url)
                refused[kind] = status
                leaks += [f"{kind}: {s}" for s in secrets_of_the_session if s in body]
            async with client() as phone2:  # a second device without a cookie, posting
                status, body = await post(phone2, link, {"action": "tap", "value": "1", "csrf": "x"})
                refused["post without device"] = status
        assert refused == {"expired": 410, "ended": 410, "other device": 403, "post without device": 403}
        # the made-up ones are indistinguishable: one status, one body for all of them
        assert len(answers) == 1, {k[0]: v for k, v in answers.items()}
        ((status, _),) = answers
        assert status == 404
        # no session opened, no link bound to the thief's browser
        assert set(hub.sessions) == sessions_before
        async with app.store.engine.connect() as conn:
            rows = (await conn.execute(select(links_table))).mappings().all()
        bound = {r["id"]: r["device_hash"] for r in rows}
        assert bound[expired.id] is None and bound[ended.id] is None
        assert sum(1 for r in rows if r["opened_at"] is not None) == 1
        tried = sum(len(v) for v in guesses.values()) + 4
        rel.tried(tried)
        rel.lost(len(leaks), "; ".join(leaks[:3]))
        assert not leaks, leaks[:10]
        bad_ms = statistics.median(timings["guessed"]) * 1000
        signed_ms = statistics.median(timings["signed unknown"]) * 1000
        rel.figure("median answer, random token", round(bad_ms, 2), "ms")
        rel.figure("median answer, signed unknown token", round(signed_ms, 2), "ms")
        rel.note(f"{tried} tokens: 36 one-character flips, 4 truncations, 5 extensions, 1000 random, 20 signed "
                 "but unknown: one identical 404 page for all; expired/ended 410 and another device 403 "
                 "(only reachable with a real signed token)")
        call.caller.hang_up()
        await call.result()


@pytest.mark.reliability("web.link-tokens")
async def test_token_guessing_is_rate_limited_per_address(tmp_path, flows_dir, caplog, rel) -> None:
    caplog.set_level(logging.INFO, logger="visual_ivr.web")
    async with site(tmp_path, flows_dir, visual_link_failures=5) as app:
        call = Call(app, ["1", "8"])
        link = await call.link()
        token = link.rsplit("/", 1)[1]
        prefix = link[: -len(token)]
        statuses = []
        async with client() as thief:
            for i in range(8):
                async with thief.get(prefix + _flip(token, i)) as resp:
                    statuses.append(resp.status)
                    retry = resp.headers.get("Retry-After")
            # the limit holds for real tokens too: the address gets no answer about any token
            status, html = await get(thief, link)
        assert statuses == [404] * 5 + [429] * 3, statuses
        assert status == 429 and retry is not None and int(retry) > 0 and "请稍后再试" in html
        assert "主菜单" not in html
        # another address is not affected
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as phone:
            async with phone.get(link) as resp:
                assert resp.status == 200 and "<h1>主菜单</h1>" in await resp.text()
        logged = [r.getMessage() for r in caplog.records if "too many unknown link tokens" in r.getMessage()]
        assert len(logged) == 4  # 3 guesses and the real link, all refused and logged
        rel.tried(9)
        rel.note("visual_link_failures = 5: the 6th unknown token from one address gets 429 + Retry-After, "
                 "then even a real link from that address; other addresses unaffected")
        call.caller.hang_up()
        await call.result()


# =========================================================================== CSRF


class CsrfCase:
    """One state-changing route: how to call it as it would succeed, with a chosen token."""

    def __init__(self, method: str, url: str, data: dict[str, Any], *, as_json: bool, field: str | None,
                 who: str) -> None:
        self.method, self.url, self.data, self.as_json, self.field, self.who = method, url, data, as_json, field, who

    async def send(self, http: aiohttp.ClientSession, token: str | None) -> tuple[int, str]:
        headers = {}
        data = dict(self.data)
        if token is not None:
            if self.field is not None and not self.as_json:
                data[self.field] = token
            else:
                headers["X-CSRF-Token"] = token
        kw: dict[str, Any] = {"json": data} if self.as_json else {"data": data}
        async with http.request(self.method, self.url, headers=headers, allow_redirects=False, **kw) as resp:
            return resp.status, await resp.text()


@pytest.mark.reliability("web.csrf")
async def test_every_state_changing_route_needs_its_csrf_token(tmp_path, flows_dir, rel) -> None:
    from callback.api import request_callback

    async with site(tmp_path, flows_dir) as app:
        base = base_url(app)
        call = Call(app, ["1", "8"])
        link = await call.link()
        other_call = Call(app, ["1", "8"])
        other_link = await other_call.link(2)
        sid = next(ws.session_id for ws in app.driver.visual_hub.sessions.values())
        cb = await request_callback(app, sid, number="13800138000", when="asap", queue="support",
                                    language="zh-CN", reason=None, channel="web")
        sam, bob = await desk(app, "sam", "sam-pass-12"), await desk(app, "bob", "bob-pass-12")
        phone, other_phone, stranger = client(), client(), client()
        try:
            _, html = await get(phone, link)
            page_csrf = csrf(html)
            _, html = await get(other_phone, other_link)
            other_page_csrf = csrf(html)
            async with stranger.get(f"{base}/login") as r:
                login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', await r.text()).group(1)
            async with sam.http.get(f"{base}/logout") as r:  # the sign-out page's form
                assert r.status == 200
            values = {"token": link.rsplit("/", 1)[1], "id": sid, "session_id": sid}
            routes = state_changing_routes(app.web)
            cases: list[tuple[CsrfCase, aiohttp.ClientSession, str, str]] = []
            for method, path in routes:
                url = base + fill(path, {**values, "id": cb["id"]} if path.startswith("/api/callbacks") else values)
                if path.startswith("/v/"):
                    case = CsrfCase(method, url, {"action": "tap", "value": "1"}, as_json=False, field="csrf",
                                    who="caller")
                    cases.append((case, phone, page_csrf, other_page_csrf))
                    continue
                if path == "/login":
                    case = CsrfCase(method, url, {"name": "sam", "password": "sam-pass-12"}, as_json=False,
                                    field="csrf_token", who="stranger")
                    cases.append((case, stranger, login_csrf, sam.csrf))
                    continue
                data = {
                    "/api/visual/push": {"session_id": sid, "node": "router_guide"},
                    "/desk/interface": {"interface": "PJSIP/1009"},
                    "/desk/sessions/{id}/disposition": {"disposition": "resolved", "notes": "csrf test"},
                    "/api/callbacks": {"session_id": sid, "number": "13900139000", "queue": "support",
                                       "when": "asap", "language": "zh-CN"},
                }.get(path, {})
                as_json = path.startswith("/api/")
                cases.append((CsrfCase(method, url, data, as_json=as_json, field=None if as_json else "csrf_token",
                                       who="sam"), sam.http, sam.csrf, bob.csrf))
            # a new route joins the test automatically; these are the ones known today
            assert {p for _, p in routes} >= {"/login", "/logout", "/v/{token}", "/api/visual/push",
                                              "/desk/interface", "/desk/sessions/{id}/disposition",
                                              "/api/callbacks", "/api/callbacks/{id}"}

            await app.store.flush()
            before = await dump_database(app.store.engine)
            refused = []
            for case, http, right, others in cases:
                for label, token in (("none", None), ("wrong", "0" * len(right)), ("forged", secrets.token_hex(20)),
                                     ("another session's", others)):
                    status, body = await case.send(http, token)
                    refused.append(status)
                    assert status == 403, (case.method, case.url, label, status, body[:300])
                    assert "Traceback" not in body
            await app.store.flush()
            after = await dump_database(app.store.engine)
            changed = [t for t in before if before[t] != after.get(t)]
            assert not changed, {t: sorted(set(after[t]) ^ set(before[t]))[:3] for t in changed}
            # still signed in, still at the main menu: nothing happened
            async with sam.http.get(f"{base}/desk") as r:
                assert r.status == 200
            assert "<h1>主菜单</h1>" in (await get(phone, link))[1]
            assert "ivr_auth" not in {c.key for c in stranger.cookie_jar}

            # the same requests with the right token go through: the 403s above were the token's doing
            accepted = {}
            for case, http, right, _ in sorted(cases, key=lambda c: c[0].url.endswith("/logout")):
                status, body = await case.send(http, right)
                accepted[f"{case.method} {case.url[len(base):]}"] = status
            assert all(s in (200, 201, 303) for s in accepted.values()), accepted
            rel.tried(len(refused))
            rel.lost(0)
            paths = ", ".join(sorted({p for _, p in routes}))
            rel.note(f"{len(cases)} state-changing routes found in the router ({paths}) × 4 bad tokens (none, wrong, forged, another session's): all 403, database unchanged; "
                     f"the same requests with the right token accepted")
        finally:
            for c in (phone, other_phone, stranger):
                await c.close()
            await sam.close()
            await bob.close()
            call.caller.hang_up()
            other_call.caller.hang_up()
            await call.result()
            await other_call.result()


# =========================================================================== script injection

PAYLOADS = [
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(2)>",
    "'><svg/onload=alert(3)>",
    "javascript:alert(4)",
    "</textarea><script>alert(5)</script>",
    "</script><script>alert(6)</script>",
    "{{7*191}}${7*191}{% if 1 %}T{% endif %}",
    "\u202e<iframe srcdoc=\"<script>alert(7)</script>\">",
    "＜script＞alert(8)＜/script＞<a href=\"javascript:alert(9)\">x</a>",
    "'-alert(10)-'\\\"-alert(11)-\\\"",
]
EVIL = " ".join(PAYLOADS)
#: the caller ID name travels in one AGI environment line: printable ASCII, no newline
EVIL_NAME = "<script>alert(21)</script>\"><img src=x onerror=alert(22)>{{7*191}}"
EVIL_NUMBER = "\"><img src=x onerror=alert(23)>"

INJECTED = """() => {
  const bad = document.querySelectorAll(
    'img[src="x"], svg, iframe, textarea:not(#notes), a[href^="javascript"], [onerror], [onload], ' +
    'script:not([src])');
  return {bad: Array.from(bad).map(e => e.outerHTML.slice(0, 120)), text: document.body.innerText,
          xss: window.__xss || 0};
}"""


def evil_flow(url: str) -> str:
    q = json.dumps
    return f"""
id: evil
title: {{zh-CN: {q("标题 " + PAYLOADS[0])}, en-US: {q("Title " + PAYLOADS[1])}}}
languages: [zh-CN, en-US]
settings: {{failure: bye, global_keys: {{"0": person}}}}
prompts:
  hi: {{zh-CN: {q("你好 {{ caller_name | default('') }} " + PAYLOADS[2])}, en-US: "Hello"}}
  sent: {{zh-CN: 请看屏幕, en-US: Look at your screen}}
  result: {{zh-CN: "结果：{{{{ who }}}} {{{{ flowvar }}}}", en-US: "Result: {{{{ who }}}}"}}
  menu: {{zh-CN: {q("菜单 " + PAYLOADS[4])}, en-US: Menu}}
  var_who: {{zh-CN: {q("名字 " + PAYLOADS[5])}, en-US: Name}}
start: look
nodes:
  look:
    type: lookup
    url: {url}
    assign: {{who: "response.name", bills: "response.bills", extra: "[caller_name | default(''), response.name]"}}
    next: mark
    failure: bye
  mark:
    type: set
    vars: {{flowvar: "(caller_name | default('')) ~ ' ' ~ who"}}
    summary: "{{{{ who }}}}"
    next: send
  send:
    type: offer_visual
    label: {{zh-CN: {q("屏幕 " + PAYLOADS[3])}, en-US: Screen}}
    mode: send
    sms: {{zh-CN: "链接 {{{{ link }}}} {{{{ who }}}}", en-US: "Link {{{{ link }}}}"}}
    sent_prompt: sent
    page: look
    next: say
  say: {{type: say, prompt: [hi, result], next: menu}}
  menu:
    type: menu
    label: {{zh-CN: {q("菜单 " + PAYLOADS[8])}, en-US: Menu}}
    prompt: menu
    choices:
      - {{key: 1, label: {{zh-CN: {q(PAYLOADS[1])}, en-US: one}}, next: bye}}
      - {{key: 2, label: {{zh-CN: {q(PAYLOADS[9])}, en-US: two}}, next: bye}}
  person: {{type: transfer, queue: support}}
  bye: {{type: hangup}}
"""


def script_policy_is_strict(csp: str) -> bool:
    """The policy's script sources (``script-src``, else ``default-src``): own files only."""
    rules = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.split()}
    sources = rules.get("script-src", rules.get("default-src"))
    return bool(sources) and not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:"} & set(sources)


@asynccontextmanager
async def evil_backend():
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"name": EVIL, "bills": [{"month": p, p: p} for p in PAYLOADS[:4]]})

    backend = web.Application()
    backend.router.add_get("/evil", answer)
    runner = web.AppRunner(backend)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    try:
        yield f"http://127.0.0.1:{tcp._server.sockets[0].getsockname()[1]}/evil"
    finally:
        await runner.cleanup()


async def open_page(browser: Any, url: str, dialogs: list[str], csp_errors: list[str]) -> Any:
    """A page with the site's CSP enforced; dialogs and CSP refusals recorded."""
    context = await browser.new_context(viewport={"width": 360, "height": 780}, locale="zh-CN")
    page = await context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(url)
    return page


@pytest.mark.reliability("web.script-injection")
async def test_script_injection_through_everything_pages_and_desk_show(tmp_path, flows_dir, rel) -> None:
    import playwright.async_api as playwright_api  # a test dependency: missing, the test fails

    from ..test_desk_browser import ARGS, CHROMIUM

    async with evil_backend() as url, site(tmp_path, flows_dir) as app:
        (flows_dir / "evil.yaml").write_text(evil_flow(url), encoding="utf-8")
        app.registry.reload()
        assert "evil" in app.registry.current, app.registry.errors
        base = base_url(app)
        call = Call(app, [], script="evil", calleridname=EVIL_NAME)
        link = await call.link()
        number_call = Call(app, [], script="evil", callerid=EVIL_NUMBER)
        dialogs: list[str] = []
        csp_errors: list[str] = []
        found: dict[str, list[str]] = {}
        shown: dict[str, str] = {}
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                # the caller's page: caller name, look-up results, flow variables, prompts, labels
                phone = await open_page(browser, link, dialogs, csp_errors)
                for view in ("", "?view=person"):
                    await phone.goto(link + view)
                    await phone.wait_for_selector("main")
                    seen = await phone.evaluate(INJECTED)
                    found[f"page{view}"] = seen["bad"]
                    shown[f"page{view}"] = seen["text"]
                # the desk: alice gets both calls popped (agent name and queue from the switch, evil too)
                desk_page = await open_page(browser, f"{base}/desk", dialogs, csp_errors)
                await desk_page.fill("#name", "alice")
                await desk_page.fill("#password", "alice-pass-1")
                await desk_page.click("#sign-in")
                await desk_page.wait_for_selector("#ws-status.on", timeout=10000)  # desk.js runs under the CSP
                sam = await open_page(browser, f"{base}/desk", dialogs, csp_errors)
                await sam.fill("#name", "sam")
                await sam.fill("#password", "sam-pass-12")
                await sam.click("#sign-in")
                await sam.wait_for_selector("#ws-status.on", timeout=10000)
                await until(lambda: len(app.driver.visual_hub.calls) >= 1)
                sessions = [s["id"] for s in await app.store.list_sessions(live=True, limit=10)]
                assert len(sessions) == 2, sessions
                alice = await desk(app, "alice", "alice-pass-1")
                try:
                    for sid in sessions:
                        await app.handoff.connect(sid, interface="PJSIP/1001", agent=EVIL_NAME,
                                                  queue=PAYLOADS[1][:40], via="test")
                        await desk_page.wait_for_selector(f'#pop[data-session="{sid}"]', timeout=10000)
                        # notes written by one agent are read by others
                        async with alice.http.post(f"{base}/desk/sessions/{sid}/disposition",
                                                   json={"disposition": "resolved", "notes": EVIL},
                                                   headers={"X-CSRF-Token": alice.csrf}) as r:
                            assert r.status == 200
                        await desk_page.reload()
                        await desk_page.wait_for_selector("#ws-status.on", timeout=10000)
                        await app.handoff.offer(sid, "PJSIP/1001", kind="connect")
                        await desk_page.wait_for_selector(f'#pop[data-session="{sid}"]', timeout=10000)
                        await desk_page.wait_for_selector("#pop-timeline li", timeout=10000)
                        seen = await desk_page.evaluate(INJECTED)
                        found[f"desk pop {sid[:6]}"] = seen["bad"]
                        shown[f"desk pop {sid[:6]}"] = seen["text"]
                finally:
                    await alice.close()
                await sam.reload()
                await sam.wait_for_selector("#live-calls tr", timeout=10000)
                seen = await sam.evaluate(INJECTED)
                found["supervisor live calls"] = seen["bad"]
                shown["supervisor live calls"] = seen["text"]
                await asyncio.sleep(0.3)  # a late dialog would show up here
            finally:
                await browser.close()
        call.caller.hang_up()
        number_call.caller.hang_up()
        await call.result()
        await number_call.result()

        # every HTML page carries a Content-Security-Policy without inline scripts
        headers = {}
        supervisor = await desk(app, "sam", "sam-pass-12")
        try:
            for path in ("/login?switch=1", "/logout", "/desk", "/ops", "/v/" + "A" * 36, link[len(base):]):
                async with supervisor.http.get(base + path, headers={"Accept": "text/html"}) as r:
                    assert r.content_type == "text/html", path
                    headers[path] = r.headers.get("Content-Security-Policy", "")
        finally:
            await supervisor.close()
    missing_csp = [p for p, csp in headers.items() if not script_policy_is_strict(csp)]
    injected = {k: v for k, v in found.items() if v}
    # the payloads did reach the screens, as text
    assert PAYLOADS[0] in shown["page"] and "{{7*191}}" in shown["page"] and "1337" not in shown["page"]
    assert any(PAYLOADS[1] in t for k, t in shown.items() if k.startswith("desk pop"))
    assert any(EVIL_NUMBER in t for t in shown.values())
    assert not dialogs, dialogs
    assert not injected, injected
    assert not csp_errors, csp_errors[:5]
    assert not missing_csp, headers
    rel.tried(len(PAYLOADS) + 3)
    rel.lost(len(dialogs) + sum(len(v) for v in injected.values()), "script ran or element injected")
    rel.note(f"{len(PAYLOADS)} payloads through caller ID name and number, look-up results, flow variables, "
             f"summary, prompts, labels, agent name, queue and disposition notes; {len(found)} screens in "
             f"Chromium with the CSP enforced: no dialog, no injected element, no CSP refusal of the pages' own "
             f"script; CSP on {len(headers)} kinds of page")


# =========================================================================== bad posts

FORM = "application/x-www-form-urlencoded"
BAD_BODIES: list[tuple[str, bytes, str | None]] = [
    ("10 MB form", b"a=" + b"x" * (10 * 1024 * 1024), FORM),
    ("10 MB JSON", b'{"a": "' + b"x" * (10 * 1024 * 1024) + b'"}', "application/json"),
    ("malformed form encoding", b"%%%&&==&a=%ZZ&=&%E4%", FORM),
    ("invalid UTF-8 in a form", b"action=\xff\xfe&value=\xc3&csrf=\x80&csrf_token=\xed\xa0\x80&name=\xff", FORM),
    ("invalid UTF-8 in JSON", b'{"session_id": "\xff\xfe", "node": "\xc3"}', "application/json"),
    ("50000 fields", "&".join("a=" for _ in range(50000)).encode(), FORM),
    ("30000 distinct fields", "&".join(f"f{i}=1" for i in range(30000)).encode(), FORM),
    ("empty body", b"", FORM),
    ("no content type", b"action=tap&value=1", None),
    ("text/plain", b"hello", "text/plain"),
    ("XML", b"<?xml version='1.0'?><a>&lt;</a>", "application/xml"),
    ("JSON instead of a form", b'{"action": "tap", "value": "1", "csrf": "x"}', "application/json"),
    ("form instead of JSON", b"session_id=x&node=main", FORM),
    ("JSON array", b"[1, 2, 3]", "application/json"),
    ("JSON string", b'"just a string"', "application/json"),
    ("JSON with wrong types", b'{"session_id": [1], "node": {"a": 1}, "number": 5, "disposition": [], '
                              b'"notes": {}, "when": 3, "priority": "high", "name": [], "password": {}}',
     "application/json"),
    ("deeply nested JSON", b"[" * 100000 + b"]" * 100000, "application/json"),
    ("truncated JSON", b'{"session_id": "abc', "application/json"),
    ("NUL bytes", b"action=tap\x00&value=1\x00", FORM),
    ("broken multipart", b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated",
     "multipart/form-data; boundary=xyz"),
    ("multipart without boundary", b"whatever", "multipart/form-data"),
    ("gzip claimed, not gzip", b"not gzip at all", FORM + ";gzip"),
]


@pytest.mark.reliability("web.bad-posts")
async def test_oversized_and_malformed_posts_get_4xx_never_a_traceback(tmp_path, flows_dir, caplog, rel) -> None:
    caplog.set_level(logging.DEBUG)
    async with site(tmp_path, flows_dir) as app:
        base = base_url(app)
        call = Call(app, ["1", "8"])
        link = await call.link()
        sid = next(ws.session_id for ws in app.driver.visual_hub.sessions.values())
        sam = await desk(app, "sam", "sam-pass-12")
        phone = client()
        answers: dict[str, int] = {}
        bad: list[str] = []
        try:
            await get(phone, link)
            values = {"token": link.rsplit("/", 1)[1], "id": sid, "session_id": sid}
            routes = state_changing_routes(app.web)
            for method, path in routes:
                url = base + fill(path, values)
                http = phone if path.startswith("/v/") else sam.http
                for name, body, ctype in BAD_BODIES:
                    headers = {"X-CSRF-Token": sam.csrf}
                    if ctype is not None:
                        headers["Content-Type"] = ctype
                    if ctype and ctype.endswith(";gzip"):
                        headers["Content-Type"], headers["Content-Encoding"] = FORM, "gzip"
                    try:
                        async with http.request(method, url, data=body, headers=headers,
                                                allow_redirects=False) as resp:
                            status, text = resp.status, await resp.text()
                    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                        # the server may close the socket on a 10 MB upload after refusing it
                        status, text = 413 if "10 MB" in name else 0, repr(exc)
                    answers[f"{method} {path} {name}"] = status
                    if path == "/logout" and status == 303:
                        # a body aiohttp reads leniently, with the right CSRF header: a real sign-out
                        await sam.login("sam", "sam-pass-12")
                        await sam.page()
                        continue
                    if not (400 <= status < 500) or "Traceback" in text or 'File "' in text:
                        bad.append(f"{method} {path} [{name}] -> {status} {text[:120]!r}")
            # the WebSocket: malformed, forged, binary, oversized and nested frames
            ws_bad = await _abuse_desk_socket(app, sam)
            async with sam.http.get(f"{base}/healthz") as r:
                assert r.status == 200  # still serving
        finally:
            await phone.close()
            await sam.close()
            call.caller.hang_up()
            await call.result()
    tracebacks = no_traceback(caplog.records)
    statuses = sorted(set(answers.values()))
    rel.tried(len(answers) + ws_bad[0])
    rel.lost(len(bad) + len(ws_bad[1]) + len(tracebacks), "; ".join((bad + ws_bad[1] + tracebacks)[:3]))
    rel.note(f"{len(routes)} POST/DELETE routes × {len(BAD_BODIES)} bad bodies (10 MB, invalid UTF-8, 50000 "
             f"fields, 100000-deep JSON, wrong types and content types ...) → statuses {statuses}; "
             f"{ws_bad[0]} bad WebSocket frames refused")
    assert not bad, "\n".join(bad)
    assert not ws_bad[1], ws_bad[1]
    assert not tracebacks, tracebacks[:10]


async def _abuse_desk_socket(app: Any, sam: DeskClient) -> tuple[int, list[str]]:
    """(frames sent, problems): every bad frame gets an ``error`` reply or a clean close."""
    problems: list[str] = []
    frames: list[str | bytes] = [
        "not json", "[]", "42", '{"body": 1, "mac": 2}', '{"body": "{}"}',
        json.dumps({"body": "{}", "mac": "forged"}), json.dumps({"body": "{}", "mac": "签名"}),
        "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
        b"\x00\x01binary",
    ]
    # well signed but malformed inside
    for inner in ("not json", "[" * 50000 + "]" * 50000, json.dumps({"seq": "x", "type": "open"}),
                  json.dumps({"seq": 10**30, "type": "open", "data": {"session_id": "../../etc"}}),
                  json.dumps({"seq": 10**30 + 1, "type": "open", "data": {"session_id": ["x"] * 100}}),
                  json.dumps({"seq": 10**30 + 2, "type": "x" * 10000, "data": []})):
        frames.append(json.dumps({"body": inner, "mac": _b64(hmac.new(sam.key, inner.encode(),
                                                                       hashlib.sha256).digest())}))
    sent = 0

    async def fresh_socket() -> None:
        await sam.page()
        sam.send_seq = sam.recv_seq = 0
        await sam.connect()
        await sam.recv_type("live")  # what a supervisor's desk gets first

    async def answer() -> aiohttp.WSMessage:
        assert sam.ws is not None
        return await sam.ws.receive(timeout=5)

    await fresh_socket()
    assert sam.ws is not None
    for frame in frames:
        if sam.ws.closed:  # refused too often: a new page, a new socket
            await fresh_socket()
        if isinstance(frame, bytes):
            await sam.ws.send_bytes(frame)
        else:
            await sam.ws.send_str(frame)
        sent += 1
        msg = await answer()
        if msg.type == aiohttp.WSMsgType.TEXT:
            reply = json.loads(json.loads(msg.data)["body"])
            if reply["type"] != "error":
                problems.append(f"frame {str(frame)[:40]!r}: {reply['type']}")
        elif msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            problems.append(f"frame {str(frame)[:40]!r}: {msg.type}")
    # a message over the 64 KiB limit: the socket is closed with 1009, the server goes on
    await fresh_socket()
    await sam.ws.send_str("x" * (200 * 1024))
    sent += 1
    msg = await answer()
    if msg.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) or sam.ws.close_code != 1009:
        problems.append(f"oversized frame: {msg.type} {sam.ws.close_code}")
    # garbage below the WebSocket framing: a raw socket after the handshake
    await sam.page()
    host, port = "127.0.0.1", app.config.http_port
    reader, writer = await asyncio.open_connection(host, port)
    cookies = "; ".join(f"{c.key}={c.value}" for c in sam.http.cookie_jar)
    writer.write((f"GET /desk/ws?token={sam.token} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\nCookie: {cookies}\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        problems.append(f"raw handshake: {head[:60]!r}")
    writer.write(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage")  # bad opcode, unmasked, absurd length
    await writer.drain()
    sent += 1
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        await asyncio.wait_for(reader.read(), 5)  # the server closes it
    writer.close()
    return sent, problems


# =========================================================================== agent isolation

FORGED_IDS = ["0" * 32, "../../etc/passwd", "..%2F..%2Fetc", "a" * 500, "' OR 1=1 --", "%00", "会话", "*",
              "null", "undefined", "-1"]


@pytest.mark.reliability("web.agent-isolation")
async def test_an_agent_reads_only_the_sessions_offered_to_them(tmp_path, flows_dir, rel) -> None:
    from callback.api import request_callback

    async with site(tmp_path, flows_dir) as app:
        base = base_url(app)
        mine, theirs = await finished_call(app), await finished_call(app)
        await app.handoff.offer(mine, "PJSIP/1001", kind="connect")
        await app.handoff.offer(theirs, "PJSIP/1002", kind="connect")
        others = [await finished_call(app) for _ in range(3)]  # offered to nobody
        cb_theirs = (await request_callback(app, theirs, number="13900139000", when="asap", queue="support",
                                            language="zh-CN", reason=None, channel="web"))["id"]
        cb_mine = (await request_callback(app, mine, number="13700137000", when="asap", queue="support",
                                          language="zh-CN", reason=None, channel="web"))["id"]
        alice, bob, sam = (await desk(app, "alice", "alice-pass-1"), await desk(app, "bob", "bob-pass-12"),
                           await desk(app, "sam", "sam-pass-12"))
        tried = 0
        leaked: list[str] = []
        try:
            h = {"X-CSRF-Token": alice.csrf}

            async def http_reads(c: DeskClient, sid: str) -> dict[str, int]:
                out = {}
                for name, url in (("pop", f"{base}/desk/api/sessions/{sid}"),
                                  ("push status", f"{base}/api/visual/sessions/{sid}")):
                    async with c.http.get(url) as r:
                        out[name] = r.status
                async with c.http.post(f"{base}/api/visual/push", json={"session_id": sid, "node": "main"},
                                       headers={"X-CSRF-Token": c.csrf}) as r:
                    out["push"] = r.status
                async with c.http.post(f"{base}/desk/sessions/{sid}/disposition",
                                       json={"disposition": "resolved", "notes": "isolation"},
                                       headers={"X-CSRF-Token": c.csrf}) as r:
                    out["disposition"] = r.status
                return out

            # alice: every session in the database, by id, and forged ids
            all_ids = [s["id"] for s in await app.store.list_sessions(limit=100)]
            assert set(all_ids) >= {mine, theirs, *others}
            for sid in all_ids + FORGED_IDS:
                got = await http_reads(alice, sid)
                tried += len(got)
                if sid == mine:
                    assert got == {"pop": 200, "push status": 200, "push": 201, "disposition": 200}, got
                    continue
                if any(status < 400 or status >= 500 for status in got.values()):
                    leaked.append(f"{sid[:40]}: {got}")
            # the supervisor may read them all
            assert (await http_reads(sam, theirs))["pop"] == 200
            # the desk socket: open and push status of another's session, live calls, forged ids
            await alice.connect()
            first = await alice.recv()
            assert first["type"] == "offers" and [o["session_id"] for o in first["data"]] == [mine]
            async def next_not_mine(timeout: float = 5.0) -> dict[str, Any]:
                """The next message that is not an update of alice's own call (her push's status may come late)."""
                while True:
                    msg = await alice.recv(timeout)
                    data = msg.get("data")
                    if not (isinstance(data, dict) and data.get("session_id") == mine):
                        return msg

            for sid in [theirs, *others, *FORGED_IDS]:
                for kind in ("open", "push"):
                    await alice.send(kind, {"session_id": sid})
                    reply = await next_not_mine()
                    tried += 1
                    if reply["type"] != "error":
                        leaked.append(f"socket {kind} {sid[:40]}: {reply['type']}")
            await alice.send("live")
            tried += 1
            if (await next_not_mine())["type"] != "error":
                leaked.append("socket live calls for an agent")
            # bob's page token on alice's cookie: refused
            async with alice.http.ws_connect(f"{base}/desk/ws?token={bob.token}", headers={"Origin": base}) as ws:
                leaked.append("alice connected with bob's socket token")
                await ws.close()
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 403
        try:
            # a pop for bob's phone reaches bob and the supervisor, never alice
            await bob.connect()
            await bob.recv()
            await sam.connect()
            await sam.recv()
            await app.handoff.offer(theirs, "PJSIP/1002", kind="connect")
            assert (await bob.recv_type("pop"))["data"]["session_id"] == theirs
            assert (await sam.recv_type("pop"))["data"]["session_id"] == theirs
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                msg = await next_not_mine(timeout=1.0)
                leaked.append(f"alice got {msg['type']} of bob's call")
            tried += 1
            # callbacks by id: another agent's session's request is "not found"; own and supervisor's fine
            for c, cb, want in ((alice, cb_theirs, 404), (alice, cb_mine, 200), (sam, cb_theirs, 200),
                                (alice, "0" * 32, 404), (alice, "../x", 404)):
                async with c.http.get(f"{base}/api/callbacks/{cb}") as r:
                    tried += 1
                    if r.status != want:
                        leaked.append(f"callback {cb[:8]} read by {c is alice and 'alice' or 'sam'}: {r.status}")
            async with alice.http.delete(f"{base}/api/callbacks/{cb_theirs}", headers=h) as r:
                tried += 1
                if r.status != 404:
                    leaked.append(f"alice cancelled bob's callback: {r.status}")
            from callback.api import get_callback

            assert (await get_callback(app, cb_theirs))["status"] == "pending"
            # taking over bob's phone on the desk would show his calls: refused
            async with alice.http.post(f"{base}/desk/interface", data={"interface": "PJSIP/1002",
                                                                        "csrf_token": alice.csrf},
                                       allow_redirects=False) as r:
                tried += 1
                assert r.status == 303 and "interface_error" in r.headers["Location"]
            assert (await AccountStore(app.store.engine).get("alice")).interface == "PJSIP/1001"
            async with alice.http.get(f"{base}/desk/api/sessions/{theirs}") as r:
                assert r.status == 403
            # agents are not supervisors: the ops pages are refused
            for path in ("/ops", "/ops/report.json", "/ops/graph.svg", "/ops/export/nodes.csv"):
                async with alice.http.get(f"{base}{path}") as r:
                    tried += 1
                    if r.status != 403:
                        leaked.append(f"agent read {path}: {r.status}")
        finally:
            for c in (alice, bob, sam):
                await c.close()
        events = await app.store.events(theirs)
        assert [e["data"]["agent"] for e in events if e["kind"] == "disposition"] == ["sam"]
    rel.tried(tried)
    rel.lost(len(leaked), "; ".join(leaked[:3]))
    rel.note(f"{len(all_ids)} sessions and {len(FORGED_IDS)} forged ids × pop, push status, push, disposition "
             f"over HTTP and open/push on the socket; callbacks by id; another agent's socket token; "
             f"a pop for another phone; claiming another agent's interface; the ops pages")
    assert not leaked, leaked


# =========================================================================== brute force


async def sign_in_from(base: str, name: str, password: str, address: str = "127.0.0.1") -> tuple[int, str, Any]:
    """One sign-in by a fresh browser from ``address`` (any 127.x address reaches the server)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/login") as r:
            token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text()).group(1)
        async with http.post(f"{base}/login", data={"name": name, "password": password, "csrf_token": token},
                             allow_redirects=False) as r:
            return r.status, await r.text(), r.headers


@pytest.mark.reliability("web.brute-force")
async def test_brute_force_sign_in_is_locked_out_rate_limited_and_logged(tmp_path, flows_dir, caplog, rel) -> None:
    caplog.set_level(logging.INFO, logger="ivr.auth")
    settings = {"login_max_failures": 3, "login_lock_seconds": 2, "login_address_failures": 8,
                "login_address_window": 600}
    async with site(tmp_path, flows_dir, **settings) as app:
        base = base_url(app)
        tried = 0
        # one account, wrong passwords: locked after 3, even the right password refused meanwhile
        for _ in range(3):
            status, html, _ = await sign_in_from(base, "alice", "wrong-password")
            tried += 1
            assert status == 401
        assert "locked" in html
        account = await AccountStore(app.store.engine).get("alice")
        async with app.store.engine.connect() as conn:
            from ivr.store.models_handoff import accounts_table

            locked_until = (await conn.execute(select(accounts_table.c.locked_until).where(
                accounts_table.c.name == "alice"))).scalar_one()
        assert locked_until is not None and account is not None
        status, html, _ = await sign_in_from(base, "alice", "alice-pass-1")
        tried += 1
        assert status == 401 and "locked" in html
        status, html, _ = await sign_in_from(base, "alice", "alice-pass-1", "127.0.0.3")  # from anywhere
        tried += 1
        assert status == 401 and "locked" in html
        # the lock ends after login_lock_seconds
        await asyncio.sleep(2.2)
        status, _, headers = await sign_in_from(base, "alice", "alice-pass-1")
        assert status == 303 and headers["Location"] == "/desk"
        # many accounts from one address: that address waits, others do not
        for i in range(8):
            status, _, _ = await sign_in_from(base, f"user{i}", "guess-123")
            tried += 1
            assert status == 401
        status, html, headers = await sign_in_from(base, "sam", "sam-pass-12")
        tried += 1
        assert status == 429 and int(headers["Retry-After"]) > 0 and "Too many attempts" in html
        status, _, _ = await sign_in_from(base, "sam", "sam-pass-12", "127.0.0.2")
        assert status == 303
    messages = [r.getMessage() for r in caplog.records if r.name == "ivr.auth"]
    failed = [m for m in messages if m.startswith("sign-in failed")]
    locked = [m for m in messages if "locked" in m]
    limited = [m for m in messages if "too many failures from 127.0.0.1" in m]
    assert len(failed) == 2 + 8, failed  # 2 wrong passwords, then the 3rd locks; 8 unknown names
    assert len(locked) == 3 and len(limited) == 1, (locked, limited)
    assert all("127.0.0." in m for m in failed + locked + limited)  # the address is in every line
    signed_in = [m for m in messages if "signed in from" in m]
    assert len(signed_in) == 2
    rel.tried(tried)
    rel.lost(0)
    rel.note("login_max_failures = 3: the 3rd wrong password locks the account on every address, the right "
             "password is refused until login_lock_seconds = 2 s have passed; login_address_failures = 8: the "
             "9th attempt from that address gets 429 + Retry-After while another address signs in; "
             f"{len(failed) + len(locked) + len(limited)} refusals logged with account and address")
