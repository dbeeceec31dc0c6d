"""Agent push from the desk in real headless Chromium: an agent on a call texts
the caller the router guide from the pop, the caller's phone (a second browser
context, 360x780) opens the link and steps through the guide, and the agent's
pop shows "opened" and the steps done, pushed over the signed desk WebSocket.
Another agent cannot push to that session; a push without the CSRF token is
refused; SMS limits show up as a refusal with the reason."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from ivr import names
from ivr.testing.callers import SimLikeCaller
from ivr.testing.fake_asterisk import FakeAsterisk
from ivr.testing.handoff import QueueApp

from .conftest import ROOT
from .handoff_util import base_url
from .test_desk_browser import ARGS, CHROMIUM, DEMO_TO_AGENT, desk_app, sign_in  # noqa: F401 (fixture)
from .visual_support import LINK_RE

import playwright.async_api as playwright_api  # a test dependency: missing, the test fails
pytestmark = pytest.mark.timeout(120)

FETCH = """async ([url, body, csrf]) => {
  const headers = {"Content-Type": "application/json"};
  if (csrf !== null) headers["X-CSRF-Token"] = csrf === "page" ? document.getElementById("desk").dataset.csrf : csrf;
  const r = await fetch(url, body === null ? {headers} : {method: "POST", headers, body: JSON.stringify(body)});
  return [r.status, await r.text()];
}"""


async def desk_state(page, link: str) -> str | None:
    return await page.evaluate(
        "(l) => { const li = document.querySelector(`#push-sent li[data-link='${l}']`); "
        "return li ? li.dataset.state : null; }", link)


async def wait_desk(page, predicate: str, arg, timeout: float = 5000) -> float:
    """Poll the desk's DOM (no fixed sleeps); seconds it took."""
    started = time.perf_counter()
    await page.wait_for_function(predicate, arg=arg, polling=50, timeout=timeout)
    return time.perf_counter() - started


STATE_IS = """([l, s]) => { const li = document.querySelector(`#push-sent li[data-link='${l}']`);
  return !!li && li.dataset.state === s; }"""
STEPS_SEEN = """([l, n]) => { const li = document.querySelector(`#push-sent li[data-link='${l}']`);
  return !!li && li.querySelectorAll('.push-steps .step.seen').length === n; }"""


async def test_agent_texts_the_router_guide_and_sees_it_used(desk_app):  # noqa: F811 (the imported fixture)
    app, fake_ami = desk_app
    base = base_url(app)
    hub = app.driver.visual_hub
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            alice = await sign_in(browser, base, "alice", "alice-pass-1")
            bob = await sign_in(browser, base, "bob", "bob-pass-12")
            sam = await sign_in(browser, base, "sam", "sam-pass-12")  # a supervisor sees every call

            queue = QueueApp(fake_ami, member="PJSIP/1001", member_name="Agent One", talk=60)
            fake = queue.bind(FakeAsterisk("127.0.0.1", app.config.agi_port, inputs=SimLikeCaller(
                DEMO_TO_AGENT + ["5"]), script="demo_hotline"))
            call = asyncio.create_task(fake.run())
            await asyncio.wait_for(queue.connected.wait(), 30)
            await alice.wait_for_selector("#push:not([hidden])", timeout=5000)
            sid = await alice.get_attribute("#pop", "data-session")
            assert sid == fake._result.variables.get(names.VAR_SESSION)

            # what can be sent: the flow's guide and its open pages, never a page behind a check
            options = await alice.eval_on_selector_all(
                "#push-page option", "os => os.map(o => [o.value, o.textContent, o.parentElement.label])")
            assert options[0] == ["router_guide", "重启路由器 / Restart the router (4 steps / 步)", "Guides / 指南"]
            assert [o[0] for o in options[1:]] == ["main", "fault", "anything_else"]
            assert all(o[2] == "Pages / 页面" for o in options[1:])
            assert await alice.input_value("#push-language") == "zh-CN"
            assert await alice.text_content("#push-note") == "To / 发送至 +86138****8000"
            assert await alice.text_content("#push-title") == "Send a page / 发送页面"

            # the guards of the push API, from real pages
            status, body = await alice.evaluate(FETCH, ["/api/visual/push", {"session_id": sid,
                                                                             "node": "router_guide"}, None])
            assert status == 403 and "CSRF" in body  # no token
            status, _ = await alice.evaluate(FETCH, ["/api/visual/push", {"session_id": sid, "node": "main"},
                                                     "0" * 40])
            assert status == 403  # a wrong token
            status, body = await bob.evaluate(FETCH, ["/api/visual/push", {"session_id": sid,
                                                                           "node": "router_guide"}, "page"])
            assert status == 403 and "not offered to you" in body  # signed in, CSRF right, not his call
            status, _ = await bob.evaluate(FETCH, [f"/api/visual/sessions/{sid}", None, None])
            assert status == 403
            assert await hub.sms.outbox() == []  # nothing was texted by any of that

            await alice.evaluate("window.samePage = true")  # to show that nothing below reloads the page

            # the agent sends the router guide
            await alice.select_option("#push-page", "router_guide")
            await alice.click("#push-send")
            await wait_desk(alice, "() => document.querySelector('#push-result').textContent.startsWith('Texted')",
                            None)
            assert await alice.text_content("#push-result") == \
                "Texted / 已发送 → +86138****8000: 重启路由器 / Restart the router"
            (sms,) = await hub.sms.outbox()
            assert sms["status"] == "sent" and sms["to_number"] == "+8613800138000" and sms["session_id"] == sid
            link = LINK_RE.search(sms["body"]).group(0)
            link_id = sms["link_id"]
            await wait_desk(alice, STATE_IS, [link_id, "texted"])
            item = f"#push-sent li[data-link='{link_id}']"
            assert "已发送短信" in await alice.text_content(f"{item} .push-state")

            # the caller's phone opens the link
            phone_ctx = await browser.new_context(viewport={"width": 360, "height": 780}, device_scale_factor=1,
                                                  is_mobile=True, has_touch=True, locale="zh-CN")
            phone = await phone_ctx.new_page()
            phone.set_default_timeout(10000)
            await phone.goto(link)
            assert (await phone.locator("h1").inner_text()).strip() == "如何重启宽带路由器"
            assert await phone.locator(".step").inner_text() == "第1步，共4步"
            took = await wait_desk(alice, STATE_IS, [link_id, "opened"])
            print(f"desk shows 'opened' {took * 1000:.0f} ms after the phone showed the page")
            assert took < 3.0  # pushed over the socket: the fallback refresh waits 10 s
            opened = await alice.text_content(f"{item} .push-state")
            assert opened.startswith("opened / 已打开 ") and ":" in opened
            await wait_desk(alice, STEPS_SEEN, [link_id, 1])

            # ... and steps through the guide; the desk follows each step
            for i in (2, 3, 4):
                await phone.get_by_role("button", name="下一步").click()
                await phone.wait_for_selector(f".step:has-text('第{i}步，共4步')")
                took = await wait_desk(alice, STEPS_SEEN, [link_id, i])
                assert took < 3.0
            await phone.get_by_role("button", name="完成").click()
            await phone.wait_for_selector("h1:has-text('故障报修')")  # the guide goes on to the fault menu
            took = await wait_desk(alice, STATE_IS, [link_id, "done"])
            print(f"desk shows 'done' {took * 1000:.0f} ms after the phone showed the next page")
            activity = await alice.locator(f"{item} .push-activity li span:nth-child(2)").all_text_contents()
            assert activity == ["opened the page / 打开了页面"] + [
                f"step {i} of 4 / 第{i}步（共4步）" for i in (1, 2, 3, 4)] + [
                "finished the guide / 完成了指南 ✓", "→ 故障报修 / Report a fault"]
            assert "finished / 已完成 ✓" in await alice.text_content(f"{item} .push-steps")
            assert (await alice.text_content(f"{item} .push-state")).startswith("done / 已完成")
            assert await alice.evaluate("window.samePage === true")
            await wait_desk(sam, STATE_IS, [link_id, "done"])  # the supervisor's pop follows too

            await alice.locator("#push").scroll_into_view_if_needed()
            shot = Path(os.environ.get("IVR_SCREENSHOT_DIR", app.config.sounds_dir)) / "desk-push.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            top, push = await alice.locator("#pop").bounding_box(), await alice.locator("#push").bounding_box()
            await alice.screenshot(path=str(shot), full_page=True, clip={
                "x": top["x"], "y": top["y"], "width": top["width"],
                "height": push["y"] + push["height"] + 12 - top["y"]})
            if os.environ.get("IVR_UPDATE_SCREENSHOTS") == "1":
                (ROOT / "docs" / "img").mkdir(exist_ok=True)
                shutil.copy(shot, ROOT / "docs" / "img" / "desk-push.png")

            # a second page is texted; the third one in this contact is over the SMS limit
            await alice.select_option("#push-page", "fault")
            await alice.click("#push-send")
            await wait_desk(alice, "() => document.querySelectorAll('#push-sent li.push-item').length === 2", None)
            await alice.select_option("#push-page", "main")
            await alice.click("#push-send")
            await wait_desk(alice, "() => document.querySelector('#push-result').textContent.startsWith('Not sent')",
                            None)
            assert await alice.text_content("#push-result") == \
                "Not sent / 未发送: SMS limit for this contact reached / 本次联系的短信已达上限"
            await wait_desk(alice, "() => document.querySelectorAll('#push-sent li.push-item').length === 3", None)
            newest = alice.locator("#push-sent li.push-item").first
            assert await newest.get_attribute("data-state") == "refused"
            assert await newest.get_attribute("data-node") == "main"
            assert "本次联系的短信已达上限" in await newest.locator(".push-reason").inner_text()
            assert await alice.evaluate("window.deskStats.refused") == 0  # every message was signed right
            assert await bob.evaluate("window.deskStats.pushUpdates") == 0  # bob saw nothing of it

            queue.hangup.set()
            result = await asyncio.wait_for(call, 30)
            assert result.server_closed
        finally:
            await browser.close()

    # the trail: the page's web events carry the link they happened on
    events = await app.store.events(sid)
    mine = [e for e in events if (e["data"] or {}).get("link") == link_id and e["channel"] == "web"]
    assert [e["data"]["step"] for e in mine if e["kind"] == "guide_step"] == [1, 2, 3, 4]
    assert [e["kind"] for e in mine if e["kind"] in ("web_open", "guide_done")] == ["web_open", "guide_done"]
    pushes = [(e["data"]["agent"], e["node"]) for e in events if e["kind"] == "web_push"]
    assert pushes == [("alice", "router_guide"), ("alice", "fault"), ("alice", "main")]
    assert [e["data"]["status"] for e in events if e["kind"] == "sms"] == ["sent", "sent", "refused"]
