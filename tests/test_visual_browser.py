"""The visual IVR in real headless Chromium, driven from a fake-Asterisk call."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from ivr.testing.fake_ami import FakeAmiServer

from .conftest import ROOT
from .visual_support import Call, visual_server

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# IVR_SCREENSHOTS=1 writes the phone-sized screenshots shown in the README.
SHOTS = ROOT / "docs" / "img" if os.environ.get("IVR_SCREENSHOTS") else None


class Phone:
    def __init__(self, page, shots: Path):
        self.page = page
        self.shots = shots

    async def h1(self) -> str:
        return (await self.page.locator("h1").inner_text()).strip()

    async def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(self.shots / f"visual-{name}.png"), full_page=False)


async def open_phone(pw, shots: Path, *, javascript: bool = True) -> tuple:
    browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    context = await browser.new_context(viewport={"width": 360, "height": 780}, device_scale_factor=1,
                                        is_mobile=True, has_touch=True, locale="zh-CN",
                                        java_script_enabled=javascript)
    page = await context.new_page()
    page.set_default_timeout(10000)
    return browser, Phone(page, shots)


async def test_call_continues_on_screen_and_books_a_callback(tmp_path, flows_dir):
    from playwright.async_api import async_playwright

    async with visual_server(tmp_path, flows_dir) as app, async_playwright() as pw:
        call = Call(app, ["1", "8"])  # Mandarin, then 8: continue on screen
        link = await call.link()
        browser, phone = await open_phone(pw, SHOTS or tmp_path / "shots")
        page = phone.page
        try:
            await page.goto(link)
            assert await phone.h1() == "主菜单"  # the node the caller was at
            assert await page.locator("html").get_attribute("lang") == "zh-CN"
            await phone.shot("main")
            await page.get_by_role("button", name="余额和账单").click()
            await page.wait_for_selector("h1:has-text('输入账户号码')")
            field = page.get_by_label("输入账户号码")
            await field.fill("2024")
            await page.get_by_role("button", name="确定").click()
            await page.wait_for_selector("[role=alert]")
            assert await page.locator("[role=alert]").inner_text() == "请输入8位"
            assert await page.evaluate("document.activeElement.id") == "value"  # focus back on the field
            await phone.shot("input-error")
            await page.get_by_label("输入账户号码").fill("20240001")
            await page.get_by_role("button", name="确定").click()
            await page.wait_for_selector("h1:has-text('身份核实')")
            await page.get_by_label("身份核实").fill("110105199003071239")
            await page.get_by_role("button", name="确定").click()
            await page.wait_for_selector("h1:has-text('余额和账单')")
            await page.get_by_role("button", name="查询余额").click()
            await page.wait_for_selector("table.kv")
            assert "268.50" in await page.locator(".prompt").first.inner_text()
            cells = await page.locator("table.kv tr").all_inner_texts()
            assert any("账户余额（元）" in c and "268.50" in c for c in cells), cells
            assert any("缴费截止日期" in c and "2026-12-15" in c for c in cells), cells
            await phone.shot("balance")
            await page.get_by_role("link", name="找人工客服").click()
            await page.wait_for_selector("h1:has-text('联系人工客服')")
            assert await page.get_by_role("button", name="现在转接我的通话").count() == 1  # the call is live
            await phone.shot("person")
            await page.get_by_role("button", name="尽快给我回电").click()
            await page.wait_for_selector("h1:has-text('已为您预约回电')")
            await phone.shot("callback")
        finally:
            await browser.close()
        session, events = await call.session()
        result = await call.result()
    # the call followed the page: goodbye, then hang up with the callback as the result
    assert session["outcome"] == "callback"
    assert ("IVR_RESULT", "callback") in result.variables_set
    assert result.commands[-3:] == ["STREAM FILE ivr/zh-CN/visual_goodbye \"\"", 'SET VARIABLE IVR_RESULT "callback"',
                                    "HANGUP"]
    assert "EXEC StartMusicOnHold default" in result.commands
    # the callback request carries one trail: the call's events, then the page's, in order
    request = app.driver.visual_hub.calls[session["id"]].callback
    assert request["when"] == "asap" and request["queue"] == "support" and request["number"].endswith("8000")
    asked = next(i for i, e in enumerate(events) if e["kind"] == "callback_requested")
    assert events[asked]["data"]["id"] == request["id"] and events[asked]["channel"] == "web"
    trail = events[:asked + 1]
    assert [e["seq"] for e in trail] == list(range(1, len(trail) + 1))
    channels = [e["channel"] for e in trail]
    first_web = channels.index("web")
    assert set(channels[:first_web]) == {"voice"} and set(channels[first_web:]) == {"web"}
    marks = [(e["channel"], e["kind"], e["node"]) for e in trail if e["kind"] in
             ("choice", "sms", "web_open", "input_ok", "lookup", "callback_requested")]
    assert marks == [
        ("voice", "lookup", "identify"), ("voice", "choice", "main"), ("voice", "sms", "visual"),
        ("web", "web_open", "main"), ("web", "choice", "main"), ("web", "input_ok", "ask_account"),
        ("web", "input_ok", "ask_id"), ("web", "lookup", "verify"), ("web", "choice", "billing_menu"),
        ("web", "lookup", "balance"), ("web", "callback_requested", None),
    ], marks
    assert "110105199003071239" not in json.dumps([events, session], ensure_ascii=False)
    assert [e["kind"] for e in events][-2:] == ["session_end", "visual_back"]


async def test_talk_to_a_person_moves_the_live_call_into_the_queue(tmp_path, flows_dir):
    from playwright.async_api import async_playwright

    channel = "PJSIP/trunk-0000002a"
    async with FakeAmiServer() as ami:
        ami.add_channel(channel)
        async with visual_server(tmp_path, flows_dir, ami_host="127.0.0.1", ami_port=ami.port,
                                 ami_username=ami.username, ami_secret=ami.secret) as app, \
                async_playwright() as pw:
            await app.ami.wait_connected(5)
            call = Call(app, ["2", "8"], channel=channel)  # English this time
            link = await call.link()

            async def asterisk_redirects() -> None:
                await ami.wait_for_action("Redirect", timeout=30)
                call.caller.moved.set()  # the channel leaves the AGI: the pending command returns -1

            watcher = asyncio.create_task(asterisk_redirects())
            # this phone has JavaScript off: every page works without it
            browser, phone = await open_phone(pw, SHOTS or tmp_path / "shots", javascript=False)
            page = phone.page
            try:
                await page.goto(link)
                assert await phone.h1() == "Main menu"
                assert await page.locator("html").get_attribute("lang") == "en-US"
                await call.holding()
                await page.get_by_role("link", name="Talk to a person").click()
                await page.get_by_role("button", name="Connect my call now").click()
                await page.wait_for_selector("h1:has-text('Connecting you')")
                await phone.shot("moved")
            finally:
                await browser.close()
            await watcher
            session, events = await call.session()
            result = await call.result()
    assert ami.redirects == [(channel, "ivr-queue", "s", "1")]
    setvars = {a["Variable"]: a["Value"] for a in ami.actions_named("Setvar")}
    assert setvars["IVR_QUEUE"] == "support-en" and setvars["IVR_PRIO"] == "10"
    assert setvars["__IVR_SESSION"] == session["id"] and setvars["__IVR_LANGUAGE"] == "en-US"
    assert "asked for a person" in setvars["__IVR_REASON"] or "要求人工服务" in setvars["__IVR_REASON"]
    # Asterisk's side, as in agi-redirect.json: the pending WAIT FOR DIGIT returned -1
    waits = [i for i, c in enumerate(result.commands) if c.startswith("WAIT FOR DIGIT")]
    assert result.replies[waits[-1]] == ["200 result=-1"]
    assert "HANGUP" not in result.commands and result.server_closed
    # the session records that the server moved the call, not that the caller hung up
    assert session["outcome"] == "moved", session
    moved = [e for e in events if e["kind"] == "moved"]
    assert moved and moved[0]["channel"] == "web" and moved[0]["data"]["queue"] == "support-en"
    hangup = [e for e in events if e["kind"] == "hangup"]
    assert hangup and hangup[-1]["channel"] == "voice" and hangup[-1]["data"]["reason"] == "moved"
    assert events.index(moved[0]) < events.index(hangup[-1])
