"""The visual IVR pages over HTTP: links, devices, CSRF, escaping, limits, agent push, hand-backs."""

from __future__ import annotations

import datetime as dt
import re

import aiohttp
import pytest
from sqlalchemy import update

from visual_ivr.models import links_table

from .visual_support import Call, client, csrf, get, post, until, visual_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def app(tmp_path, flows_dir):
    async with visual_server(tmp_path, flows_dir) as app:
        yield app


def no_dump(html: str) -> None:
    assert "Traceback" not in html and "File \"" not in html and "95598" in html


async def test_link_device_binding_tampering_guessing_and_expiry(app):
    call = Call(app, ["1", "8"])
    link = await call.link()
    token = link.rsplit("/", 1)[1]
    async with client() as phone, client() as laptop:
        status, html = await get(phone, link)
        assert status == 200 and '<html lang="zh-CN">' in html and "<h1>主菜单</h1>" in html
        assert "余额和账单" in html and "找人工客服" in html
        status, html = await get(phone, link)  # the same browser again
        assert status == 200 and "<h1>主菜单</h1>" in html
        status, html = await get(laptop, link)  # another device
        assert status == 403 and "另一台设备" in html
        no_dump(html)
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        for bad in (flipped, token[:20], app.driver.visual_hub.links.new_token(), "x" * 36, "..%2F..%2Fetc"):
            status, html = await get(phone, link.replace(token, bad))
            assert status == 404, bad
            no_dump(html)
        # a second link, never opened, then expired
        hub = app.driver.visual_hub
        token2, link2 = await hub.links.issue(next(iter(hub.calls)), kind="push", node="main", language="en-US")
        async with app.store.engine.begin() as conn:
            await conn.execute(update(links_table).where(links_table.c.id == link2.id)
                               .values(expires_at=link2.created_at.replace(year=2020)))
        status, html = await get(laptop, link.replace(token, token2))
        assert status == 410 and '<html lang="en-US">' in html and "expired" in html
        no_dump(html)
    call.caller.hang_up()
    session, events = await call.session()
    assert session["outcome"] == "hangup"


async def test_csrf_and_bad_requests_get_4xx_pages(app):
    call = Call(app, ["1", "8"])
    link = await call.link()
    async with client() as phone, client() as stranger:
        status, html = await get(phone, link)
        token = csrf(html)
        for data in ({"action": "tap", "value": "1"}, {"action": "tap", "value": "1", "csrf": "0" * 40},
                     {"action": "tap", "value": "1", "csrf": token[:-1]}):
            status, html = await post(phone, link, data)
            assert status == 403 and "请求无效" in html, data
            no_dump(html)
        status, html = await post(stranger, link, {"action": "tap", "value": "1", "csrf": token})
        assert status == 403  # no device cookie: a cross-site form cannot pass
        for data in ({"action": "tap", "value": "7"}, {"action": "tap", "value": "<script>"},
                     {"action": "launch", "value": "1"}, {"action": "text", "value": "123"}):
            status, html = await post(phone, link, {**data, "csrf": token})
            assert status == 400, data
            no_dump(html)
        status, html = await get(phone, link.rsplit("/", 1)[0] + "/a/b/c")
        assert status == 404 and "找不到页面" in html
        status, _ = await get(phone, link.rsplit("/", 1)[0] + "/static/nothing.css")
        assert status == 404
        async with phone.post(link, data={"action": "tap", "value": "1", "csrf": token},
                              allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].endswith(link.rsplit("/", 1)[1])
        status, html = await get(phone, link)
        assert "<h1>输入账户号码</h1>" in html
        # digits are checked like on the phone, errors inline, nothing consumed
        status, html = await post(phone, link, {"action": "text", "value": "2024", "csrf": token})
        assert status == 200 and 'role="alert">请输入8位<' in html and 'aria-invalid="true"' in html
        status, html = await post(phone, link, {"action": "text", "value": "abc", "csrf": token})
        assert 'role="alert">只能输入数字<' in html
    call.caller.hang_up()
    session, events = await call.session()
    web = [e for e in events if e["channel"] == "web"]
    assert [e["data"]["reason"] for e in web if e["kind"] == "input_invalid"] == ["length"]
    assert not [e for e in web if e["kind"] == "nomatch"]


EVIL = "<script>alert('x')</script><img src=x onerror=alert(1)>"

EVIL_FLOW = """
id: evil
title: {zh-CN: "测试<b>标题</b>", en-US: "Test <b>title</b>"}
languages: [zh-CN, en-US]
settings: {failure: bye, global_keys: {"0": person}}
prompts:
  hi: {zh-CN: "你好 {{ caller_name }}", en-US: "Hello {{ caller_name }}"}
  sent: {zh-CN: 请看屏幕, en-US: Look at your screen}
  result: {zh-CN: "结果：{{ who }}", en-US: "Result: {{ who }}"}
  menu: {zh-CN: 菜单, en-US: Menu}
start: send
nodes:
  send:
    type: offer_visual
    mode: send
    sms: {zh-CN: "链接 {{ link }} {{ caller_name }}", en-US: "Link {{ link }}"}
    sent_prompt: sent
    page: look
    next: menu
  look:
    type: lookup
    url: EVIL_URL
    assign: {who: "response.name", bills: "response.bills", extra: "[caller_name, caller_name]"}
    next: say
    failure: bye
  say: {type: say, prompt: [hi, result], next: menu}
  menu:
    type: menu
    label: {zh-CN: "菜单 {{ x }}", en-US: Menu}
    prompt: menu
    choices: [{key: 1, label: {zh-CN: "<i>一</i>", en-US: "<i>one</i>"}, next: bye}]
  person: {type: transfer, queue: support}
  bye: {type: hangup}
"""


async def test_script_injection_through_variables_and_lookups(app, flows_dir):
    from aiohttp import web

    async def evil_backend(request):
        return web.json_response({"name": EVIL, "bills": [{"month": EVIL, "<b>amount</b>": "\"><svg onload=x>"}]})

    backend = web.Application()
    backend.router.add_get("/evil", evil_backend)
    runner = web.AppRunner(backend)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    (flows_dir / "evil.yaml").write_text(EVIL_FLOW.replace("EVIL_URL", f"http://127.0.0.1:{port}/evil"),
                                         encoding="utf-8")
    app.registry.reload()
    call = Call(app, [], script="evil", calleridname=EVIL.replace(" ", "_"))
    try:
        link = await call.link()
        async with client() as phone:
            status, html = await get(phone, link)
            assert status == 200 and "Extra" in html and "Bills" in html
            for raw in ("<script>alert", "<img src=x", "<i>一</i>", "<svg", "<b>amount</b>", "<b>标题"):
                assert raw not in html, raw
            assert "&lt;script&gt;alert(" in html and "&lt;i&gt;一&lt;/i&gt;" in html
            assert "测试&lt;b&gt;标题&lt;/b&gt;" in html and "&#34;&gt;&lt;svg onload=x&gt;" in html
            assert re.search(r"<th scope=\"row\">Extra</th><td>&lt;script&gt;", html), html
            async with phone.get(link) as resp:
                csp = resp.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp
                assert resp.headers["Referrer-Policy"] == "no-referrer"
        call.caller.hang_up()
        await call.result()
    finally:
        await runner.cleanup()


async def test_sms_limits_are_told_to_the_caller_and_recorded(tmp_path, flows_dir):
    async with visual_server(tmp_path, flows_dir, sms_limit_per_session=1) as app:
        call = Call(app, ["1", "8"])
        await call.link()
        await call.holding()
        waits = len(call.caller.waits)
        call.caller.press("5")  # back to the phone menu
        await until(lambda: len(call.caller.waits) > waits and call.caller.waits[-1].timeout_ms == 5000)
        call.caller.press("8")  # a second text in the same session: refused
        await until(lambda: "ivr/zh-CN/visual_refused" in call.fake._result.played)
        call.caller.hang_up()
        session, events = await call.session()
    sms = [e["data"] for e in events if e["kind"] == "sms"]
    assert [(s["status"], s["reason"]) for s in sms] == [("sent", None), ("refused", "limit_session")]
    assert sms[1]["to"] == "+86138****8000" and sms[1]["gateway"] == "outbox"
    back = [e for e in events if e["kind"] == "visual_hold"]
    assert back and back[0]["data"] == {"status": "key", "opened": False}


async def test_abandoned_page_resumes_in_voice_where_the_page_got_to(tmp_path, flows_dir):
    path = flows_dir / "demo_hotline.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("    page: main\n", "    page: main\n    hold_timeout: 1\n"),
                    encoding="utf-8")
    async with visual_server(tmp_path, flows_dir) as app:
        call = Call(app, ["1", "8"])
        link = await call.link()
        async with client() as phone:
            _, html = await get(phone, link)
            _, html = await post(phone, link, {"action": "tap", "value": "1", "csrf": csrf(html)})
            assert "<h1>输入账户号码</h1>" in html
            await until(lambda: any(c.startswith("GET DATA ivr/zh-CN/ask_account") for c in call.fake._result.commands),
                        timeout=8)
            _, html = await get(phone, link)
            assert "已回到电话服务" in html
        call.caller.hang_up()
        session, events = await call.session()
    kinds = [(e["channel"], e["kind"]) for e in events]
    assert ("voice", "visual_back") in kinds
    back = next(e for e in events if e["kind"] == "visual_back")
    assert back["data"]["reason"] == "abandoned" and back["node"] == "ask_account"
    assert session["outcome"] == "hangup" and session["end_node"] == "ask_account"
    assert "EXEC StopMusicOnHold" in call.fake._result.commands


async def test_agent_push_of_a_guide_and_what_the_desk_sees(app):
    call = Call(app, ["1", "3", "1"])  # outages, then goodbye: a finished call
    result = await call.result()
    sid = result.variables["IVR_SESSION"]
    base = f"http://127.0.0.1:{app.config.http_port}/api/visual"
    async with aiohttp.ClientSession() as desk, client() as phone:
        async with desk.post(base + "/push", json={"session_id": sid, "node": "router_guide"}) as r:
            assert r.status == 401
        auth = {"Authorization": "Bearer desk-secret"}
        async with desk.post(base + "/push", json={"session_id": sid, "node": "nope"}, headers=auth) as r:
            assert r.status == 400
        async with desk.post(base + "/push", json={"session_id": "0" * 32, "node": "main"}, headers=auth) as r:
            assert r.status == 404
        async with desk.post(base + "/push", data=b"{", headers=auth) as r:
            assert r.status == 400
        # the balance menu is behind the verification branch: a push must not skip that check
        async with desk.post(base + "/push", json={"session_id": sid, "node": "billing_menu"}, headers=auth) as r:
            assert r.status == 400
            assert "cannot be sent; one of: router_guide, main, fault, anything_else" in (await r.json())["error"]
        async with desk.post(base + "/push", json={"session_id": sid, "node": "router_guide", "language": "en-US"},
                             headers=auth) as r:
            assert r.status == 201
            body = await r.json()
            assert body["sms"]["status"] == "sent" and body["sms"]["to"] == "+86138****8000"
        link = await call.link()
        status, html = await get(phone, link)
        assert status == 200 and '<html lang="en-US">' in html
        assert "<h1>How to restart your broadband router</h1>" in html and "Step 1 of 4" in html
        assert "Unplug the power cable" in html
        _, html = await post(phone, link, {"action": "tap", "value": "1", "csrf": csrf(html)})
        assert "Step 2 of 4" in html and "Previous step" in html
        async with desk.get(f"{base}/sessions/{sid}", headers=auth) as r:
            seen = await r.json()
    (link_row,) = seen["links"]
    assert link_row["kind"] == "push" and link_row["node"] == "router_guide" and link_row["opened_at"]
    assert link_row["created_by"] == "desk" and "token" not in str(link_row) and "device_hash" not in link_row
    web = [(e["kind"], e["node"]) for e in seen["events"] if e["channel"] == "web"]
    assert web[0] == ("web_push", "router_guide")
    assert ("web_open", "router_guide") in web and ("guide_step", "router_guide") in web
    steps = [e["data"]["step"] for e in seen["events"] if e["kind"] == "guide_step"]
    assert steps == [1, 2]
    # every web event of the page names its link
    assert {e["data"].get("link") for e in seen["events"] if e["channel"] == "web" and e["kind"] != "web_push"} \
        == {link_row["id"]}
    panel = seen["push"]
    # the page went on in English
    assert panel["can_send"] and panel["to"] == "+86138****8000" and panel["language"] == "en-US"
    assert [p["node"] for p in panel["pages"]] == ["router_guide", "main", "fault", "anything_else"]
    (sent,) = panel["sent"]
    assert sent["state"] == "opened" and sent["by"] == "desk" and sent["language"] == "en-US"
    assert sent["steps"] == {"of": 4, "seen": [1, 2], "finished": False}
    assert [a["text"] for a in sent["activity"]] == [
        "opened the page / 打开了页面", "step 1 of 4 / 第1步（共4步）", "step 2 of 4 / 第2步（共4步）"]


async def test_push_refusals_say_why(app):
    from ivr.store.models import sessions_table

    auth = {"Authorization": "Bearer desk-secret"}
    base = f"http://127.0.0.1:{app.config.http_port}/api/visual"
    landline = Call(app, ["1", "3", "1"], callerid="01062345678")
    mobile = Call(app, ["1", "3", "1"])
    landline_sid = (await landline.result()).variables["IVR_SESSION"]
    mobile_sid = (await mobile.result()).variables["IVR_SESSION"]
    async with aiohttp.ClientSession() as desk:
        async with desk.post(base + "/push", json={"session_id": landline_sid, "node": "main"}, headers=auth) as r:
            body = await r.json()
            assert r.status == 400 and body["reason"] == "not_mobile"
            assert body["reason_text"] == "the caller's number is not a mobile / 来电号码不是手机号码"
        async with desk.get(f"{base}/sessions/{landline_sid}", headers=auth) as r:
            panel = (await r.json())["push"]
            assert panel["available"] and not panel["can_send"] and panel["why"] == "not_mobile"
        async with app.store.engine.begin() as conn:  # a contact that ended two days ago
            await conn.execute(update(sessions_table).where(sessions_table.c.id == mobile_sid).values(
                ended_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)))
        async with desk.post(base + "/push", json={"session_id": mobile_sid, "node": "main"}, headers=auth) as r:
            body = await r.json()
            assert r.status == 409 and body["reason"] == "too_old"
        async with desk.get(f"{base}/sessions/..%2Fetc", headers=auth) as r:
            assert r.status in (400, 404)
    assert await app.driver.visual_hub.sms.outbox() == []


async def test_signed_in_push_needs_csrf_and_an_offered_session(app):
    from ivr.auth import AccountStore
    from ivr.store.models_handoff import offers_table

    from .handoff_util import DeskClient

    call = Call(app, ["1", "3", "1"])
    sid = (await call.result()).variables["IVR_SESSION"]
    accounts = AccountStore(app.store.engine)
    await accounts.create("carol", "carol-pass-1", interface="PJSIP/1003")
    await accounts.create("dave", "dave-pass-12", interface="PJSIP/1004")
    await accounts.create("sue", "sue-pass-123", role="supervisor")
    async with app.store.engine.begin() as conn:  # the call was offered to carol's phone
        await conn.execute(offers_table.insert().values(session_id=sid, interface="PJSIP/1003", kind="connect",
                                                        at=dt.datetime.now(dt.timezone.utc)))
    base = f"http://127.0.0.1:{app.config.http_port}"
    clients = {name: DeskClient(base) for name in ("carol", "dave", "sue")}
    try:
        for name, password in (("carol", "carol-pass-1"), ("dave", "dave-pass-12"), ("sue", "sue-pass-123")):
            await clients[name].login(name, password)
            await clients[name].page()

        async def push(name: str, node: str, csrf: str | None = "page") -> tuple[int, dict]:
            c = clients[name]
            headers = {} if csrf is None else {"X-CSRF-Token": c.csrf if csrf == "page" else csrf}
            async with c.http.post(base + "/api/visual/push", json={"session_id": sid, "node": node},
                                   headers=headers) as r:
                return r.status, await r.json()

        assert (await push("carol", "router_guide", None))[0] == 403  # no CSRF token
        assert (await push("carol", "router_guide", clients["dave"].csrf))[0] == 403  # someone else's token
        carol = clients["carol"]
        async with carol.http.post(base + "/api/visual/push", headers={"X-CSRF-Token": carol.csrf},
                                   json={"session_id": sid, "node": "main", "number": "13900139000"}) as r:
            assert r.status == 403  # people text the caller's own number, never one typed in
        status, body = await push("dave", "router_guide")
        assert status == 403 and body["error"] == "that session was not offered to you"
        async with clients["dave"].http.get(f"{base}/api/visual/sessions/{sid}") as r:
            assert r.status == 403
        status, body = await push("carol", "router_guide")
        assert status == 201 and body["sms"]["status"] == "sent"
        status, body = await push("sue", "fault")  # a supervisor may push to any session
        assert status == 201
        async with clients["carol"].http.get(f"{base}/api/visual/sessions/{sid}") as r:
            sent = (await r.json())["push"]["sent"]
        assert [(s["node"], s["by"], s["state"]) for s in sent] == [("fault", "sue", "texted"),
                                                                     ("router_guide", "carol", "texted")]
    finally:
        for c in clients.values():
            await c.close()


async def test_callback_at_a_slot_then_cancelled(app):
    call = Call(app, ["2", "8"])
    link = await call.link()
    async with client() as phone:
        _, html = await get(phone, link)
        token = csrf(html)
        status, html = await get(phone, link + "?view=person")
        assert status == 200 and "Call me back as soon as possible" in html and "Book this time" in html
        slots = re.findall(r'<option value="([^"]+)">', html)
        assert len(slots) == 6
        status, _ = await post(phone, link, {"action": "callback", "value": "2020-01-01T10:00:00+08:00",
                                             "csrf": token})
        assert status == 400  # only the slots offered
        status, html = await post(phone, link, {"action": "callback", "value": slots[1], "csrf": token})
        assert status == 200 and "Callback booked" in html and "+86138****8000" in html
        status, html = await post(phone, link, {"action": "cancel_callback", "csrf": token})
        assert "The callback is cancelled." in html
    session, events = await call.session()
    request = app.driver.visual_hub.calls[session["id"]].callback
    assert request["queue"] == "support-en" and request["status"] == "cancelled"
    asked = [e for e in events if e["kind"] == "callback_requested"]
    assert [e["data"]["slot"] for e in asked] in ([slots[1]], [dt.datetime.fromisoformat(slots[1]).astimezone(
        dt.timezone.utc).isoformat()])
    # the page booked through the callback feature: the request is stored with the session
    from callback.api import get_callback

    stored = await get_callback(app, request["id"])
    assert stored is not None and stored["status"] == "cancelled" and stored["queue"] == "support-en"
    assert session["outcome"] == "callback"


async def test_connect_without_ami_puts_the_call_through_by_the_flow(app):
    call = Call(app, ["1", "8"])
    link = await call.link()
    await call.holding()
    async with client() as phone:
        _, html = await get(phone, link)
        status, html = await get(phone, link + "?view=person")
        assert "现在转接我的通话" in html
        status, html = await post(phone, link, {"action": "connect", "csrf": csrf(html)})
        assert status == 200 and "请在电话中继续" in html
    session, events = await call.session()
    result = await call.result()
    assert ("Queue", "support,c,,,300") in result.executed  # the voice face carried out the flow's transfer
    transfers = [e for e in events if e["kind"] == "transfer"]
    assert [e["channel"] for e in transfers] == ["web"]  # decided on screen, done once by the call
    assert [e["channel"] for e in events if e["kind"] == "transfer_result"] == ["voice"]
    assert session["outcome"] == "transfer"


async def test_caller_hangs_up_while_on_screen_and_the_page_goes_on(app):
    call = Call(app, ["1", "8"])
    link = await call.link()
    async with client() as phone:
        _, html = await get(phone, link)
        token = csrf(html)
        await call.holding()
        call.caller.hang_up()
        session, _ = await call.session()
        assert session["outcome"] == "hangup" and session["end_node"] == "main"
        status, html = await post(phone, link, {"action": "tap", "value": "3", "csrf": token})
        assert status == 200 and "停电停网信息" in html
        status, html = await post(phone, link, {"action": "tap", "value": "1", "csrf": token})
        assert "感谢使用" in html and "感谢您的来电，再见。" in html
    session = await app.store.get_session(session["id"])
    assert session["outcome"] == "completed" and session["end_node"] == "goodbye"


async def test_a_refused_callback_is_shown_and_the_session_goes_on(app, monkeypatch):
    from visual_ivr import hub as hub_module

    async def refuse(*args, **kwargs):
        raise ValueError("that time has passed")

    monkeypatch.setattr(hub_module.callbacks, "request_callback", refuse)
    call = Call(app, ["1", "8"])
    link = await call.link()
    async with client() as phone:
        _, html = await get(phone, link)
        status, html = await post(phone, link, {"action": "callback", "value": "asap", "csrf": csrf(html)})
        assert status == 200 and "暂时无法预约回电" in html and "<h1>联系人工客服</h1>" in html
        _, html = await get(phone, link)
        assert "<h1>主菜单</h1>" in html  # nothing ended
    call.caller.hang_up()
    session, _ = await call.session()
    assert session["outcome"] == "hangup"


ASK_FLOW = """
id: askweb
title: {zh-CN: 故障描述, en-US: Fault description}
languages: [zh-CN, en-US]
settings: {failure: bye}
prompts:
  sent: {zh-CN: 请看屏幕, en-US: Look at your screen}
  describe: {zh-CN: 请描述故障, en-US: Describe the fault}
  thanks: {zh-CN: "收到：{{ fault }}", en-US: "Noted: {{ fault }}"}
start: send
nodes:
  send:
    type: offer_visual
    mode: send
    sms: {zh-CN: "链接 {{ link }}", en-US: "Link {{ link }}"}
    sent_prompt: sent
    page: describe
    next: describe
  describe: {type: ask, label: {zh-CN: 故障描述, en-US: Fault}, prompt: describe, var: fault, next: thanks}
  thanks: {type: say, prompt: thanks, next: bye}
  bye: {type: hangup}
"""


async def test_free_spoken_answer_is_typed_on_the_page(app, flows_dir):
    (flows_dir / "askweb.yaml").write_text(ASK_FLOW, encoding="utf-8")
    app.registry.reload()
    call = Call(app, [], script="askweb")
    link = await call.link()
    async with client() as phone:
        status, html = await get(phone, link)
        assert status == 200 and "<h1>故障描述</h1>" in html and 'name="action" value="text"' in html
        assert 'inputmode="text"' in html and "请输入您的回答" in html
        token = csrf(html)
        status, html = await post(phone, link, {"action": "text", "value": "   ", "csrf": token})
        assert status == 200 and 'role="alert"' in html and "<h1>故障描述</h1>" in html  # nothing consumed
        status, html = await post(phone, link, {"action": "text", "value": "光猫红灯 <script>x</script>",
                                                "csrf": token})
        assert status == 200 and "收到：光猫红灯 &lt;script&gt;x&lt;/script&gt;" in html and "<script>x" not in html
    session, events = await call.session()
    ok = [e for e in events if e["kind"] == "input_ok" and e["node"] == "describe"]
    assert [(e["channel"], e["data"]["value"], e["data"]["mode"]) for e in ok] == [
        ("web", "光猫红灯 <script>x</script>", "text")]
