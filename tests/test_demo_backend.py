"""The demo backend (ivr.demo_backend) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ivr import demo_backend
from ivr.demo_backend import (
    ACCOUNTS,
    AREAS,
    TZ,
    DemoAccount,
    add_routes,
    create_demo_backend,
    mask_phone,
    normalize_phone,
    resident_id_check_digit,
)
from ivr.lookup import perform_lookup

FIXED_NOW = datetime(2026, 11, 25, 10, 30, tzinfo=TZ)


def gb11643_valid(number: str) -> bool:
    """Independent GB 11643-1999 check (ISO 7064 MOD 11-2), written from the standard."""
    if not re.fullmatch(r"\d{17}[\dX]", number):
        return False
    total = sum(int(d) * (2 ** (17 - i) % 11) for i, d in enumerate(number[:17]))
    check = (12 - total % 11) % 11
    return number[17] == ("X" if check == 10 else str(check))


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(method, self.base + path, **kwargs) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json(), resp

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, body, _ = await self.call("GET", path, **kwargs)
        return status, body

    async def post(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, body, _ = await self.call("POST", path, **kwargs)
        return status, body


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    root = web.Application()
    root.add_subapp("/demo-api", create_demo_backend(now=lambda: FIXED_NOW, slow_seconds=0.5))
    runner, port = await _serve(root)
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{port}/demo-api", http)
    await runner.cleanup()


# --- data ------------------------------------------------------------------


def test_a_dozen_accounts_with_unique_numbers_and_phones() -> None:
    assert len(ACCOUNTS) == 12
    assert len({a.account for a in ACCOUNTS}) == 12
    phones = [p for a in ACCOUNTS for p in a.phones]
    assert len(phones) == len(set(phones))
    for acc in ACCOUNTS:
        assert re.fullmatch(r"\d{8}", acc.account)
        assert acc.tier in ("vip", "normal")
        assert acc.area in AREAS
        assert all(normalize_phone(p) == p for p in acc.phones)
        date.fromisoformat(acc.due_date)
    assert any(a.balance < 0 for a in ACCOUNTS) and any(a.tier == "vip" for a in ACCOUNTS)
    assert any(a.resident_id.endswith("X") for a in ACCOUNTS)
    assert any(p.startswith("0") for a in ACCOUNTS for p in a.phones)  # a landline


def test_all_resident_ids_pass_the_gb11643_check_digit() -> None:
    for acc in ACCOUNTS:
        rid = acc.resident_id
        assert gb11643_valid(rid), (acc.account, rid)
        assert resident_id_check_digit(rid[:17]) == rid[17]
        date(int(rid[6:10]), int(rid[10:12]), int(rid[12:14]))  # a real birth date
    assert gb11643_valid("110105199003071239")
    assert not gb11643_valid("110105199003071238")
    assert resident_id_check_digit("11010519900307123") == "9"
    with pytest.raises(ValueError):
        resident_id_check_digit("123")


def test_docstring_table_matches_the_data() -> None:
    doc = demo_backend.__doc__ or ""
    rows = {line.split()[0]: line for line in doc.splitlines() if re.match(r"^\d{8}\s", line)}
    assert set(rows) == {a.account for a in ACCOUNTS}
    for acc in ACCOUNTS:
        row = rows[acc.account]
        for value in (acc.name_zh, acc.name_en, acc.resident_id, acc.pin, ", ".join(acc.phones),
                      acc.tier, acc.status, f"{acc.balance:.2f}", acc.due_date, acc.area):
            assert value in row, (acc.account, value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13800138000", "13800138000"),
        ("+8613800138000", "13800138000"),
        ("+86 138-0013-8000", "13800138000"),
        ("8613800138000", "13800138000"),
        ("008613800138000", "13800138000"),
        ("013800138000", "13800138000"),
        ("01065529988", "01065529988"),
        ("+86 10 6552 9988", "01065529988"),
        ("861065529988", "01065529988"),
        ("057187654321", "057187654321"),
        ("anonymous", None),
        ("1001", None),
        ("", None),
    ],
)
def test_normalize_phone(raw: str, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


def test_mask_phone() -> None:
    assert mask_phone("13800138000") == "138****8000"
    assert mask_phone("01065529988") == "010****9988"


# --- endpoints ---------------------------------------------------------------


async def test_health(api: Api) -> None:
    assert await api.get("/health") == (200, {"status": "ok", "service": "ivr-demo-backend", "accounts": 12})


async def test_account(api: Api) -> None:
    status, body = await api.get("/accounts/20240001")
    assert status == 200
    assert body["account"] == "20240001"
    assert (body["name_zh"], body["name_en"], body["tier"]) == ("张伟", "Zhang Wei", "vip")
    assert body["balance"] == 268.5 and body["arrears"] is False
    assert body["area"] == "chaoyang" and body["area_zh"] == "朝阳区"
    assert body["phones"] == ["138****8000", "010****9988"]
    text = str(body)
    assert "110105199003071239" not in text and "123456" not in text  # no ID number, no PIN


async def test_account_errors(api: Api) -> None:
    status, body = await api.get("/accounts/20249999")
    assert status == 404 and body["error"] == "unknown account"
    status, body = await api.get("/accounts/2024")
    assert status == 400 and body["error"] == "bad account number"
    status, body = await api.get("/accounts/abcdefgh/balance")
    assert status == 400


async def test_balance_with_arrears(api: Api) -> None:
    status, body = await api.get("/accounts/20240002/balance")
    assert status == 200
    assert body == {"account": "20240002", "balance": -35.2, "currency": "CNY", "arrears": True,
                    "amount_due": 35.2, "due_date": "2026-11-30", "status": "active"}
    status, body = await api.get("/accounts/20240004/balance")
    assert body["arrears"] is False and body["amount_due"] == 0


async def test_bills(api: Api) -> None:
    status, body = await api.get("/accounts/20240002/bills")
    assert status == 200
    assert body["count"] == 3 and len(body["bills"]) == 3
    months = [b["month"] for b in body["bills"]]
    assert months == ["2026-11", "2026-10", "2026-09"]
    for bill in body["bills"]:
        assert isinstance(bill["amount"], (int, float)) and bill["amount"] > 0
        date.fromisoformat(bill["due_date"])
    assert body["bills"][0]["paid"] is False  # arrears: the latest bill is unpaid
    status, body = await api.get("/accounts/20240001/bills", params={"limit": "12"})
    assert status == 200 and body["count"] == 6 and all(b["paid"] for b in body["bills"])
    status, body = await api.get("/accounts/20240001/bills", params={"limit": "1"})
    assert body["count"] == 1


@pytest.mark.parametrize("limit", ["0", "13", "abc", "-1", ""])
async def test_bills_bad_limit(api: Api, limit: str) -> None:
    status, body = await api.get("/accounts/20240001/bills", params={"limit": limit})
    assert status == 400 and body["error"] == "bad limit"


@pytest.mark.parametrize(
    ("account", "body", "verified"),
    [
        ("20240001", {"id_last6": "071239"}, True),
        ("20240001", {"id_last6": "071238"}, False),
        ("20240005", {"id_last6": "12662X"}, True),
        ("20240005", {"id_last6": "12662x"}, True),
        ("20240005", {"id_last6": "12662*"}, True),  # keypads have no X
        ("20240001", {"pin": "123456"}, True),
        ("20240001", {"pin": "654321"}, False),
        ("20240011", {"pin": 271828}, True),
        ("20240002", {"id_last6": "071239"}, False),  # someone else's ID
    ],
)
async def test_verify(api: Api, account: str, body: dict[str, Any], verified: bool) -> None:
    status, answer = await api.post(f"/accounts/{account}/verify", json=body)
    assert status == 200
    assert answer["verified"] is verified
    assert answer["method"] == next(iter(body))


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "bad fields"),
        ({"pin": "123456", "id_last6": "071239"}, "bad fields"),
        ({"pin": "12"}, "bad pin"),
        ({"pin": "12ab56"}, "bad pin"),
        ({"id_last6": "07123"}, "bad id_last6"),
        ({"id_last6": "X71239"}, "bad id_last6"),
        ({"pin": ["123456"]}, "bad field"),
        ({"pin": True}, "bad field"),
    ],
)
async def test_verify_bad_fields(api: Api, body: dict[str, Any], error: str) -> None:
    status, answer = await api.post("/accounts/20240001/verify", json=body)
    assert status == 400 and answer["error"] == error


async def test_verify_bad_json_and_unknown_account(api: Api) -> None:
    for raw in (b"{not json", b"[1, 2]", b"", b'"pin"', b"[" * 100_000):
        status, answer = await api.post("/accounts/20240001/verify", data=raw)
        assert status == 400 and answer["error"] == "bad json", raw[:10]
    status, answer = await api.post("/accounts/20249999/verify", json={"pin": "123456"})
    assert status == 404


async def test_customer_by_phone(api: Api) -> None:
    status, body = await api.get("/customers/by-phone/13800138000")
    assert status == 200
    assert (body["account"], body["tier"], body["line"]) == ("20240001", "vip", "mobile")
    status, body = await api.get("/customers/by-phone/01065529988")
    assert (status, body["account"], body["line"]) == (200, "20240001", "landline")
    status, body = await api.get("/customers/by-phone/+8613912345678")
    assert (status, body["account"], body["tier"]) == (200, "20240002", "normal")
    for unknown in ("13000000000", "anonymous", "1001"):
        status, body = await api.get(f"/customers/by-phone/{unknown}")
        assert status == 404 and body["error"] == "unknown number"


async def test_faults(api: Api) -> None:
    status, body = await api.post("/faults", json={"account": "20240001", "kind": "no_internet",
                                                   "phone": "+86 138 0013 8000"})
    assert status == 201
    assert body["ticket"] == "F202611250001"
    assert body["phone"] == "13800138000"
    assert body["known_outage"] is True and body["outage_id"] == "OUT-001"  # chaoyang outage
    assert datetime.fromisoformat(body["eta"]) > FIXED_NOW
    status, again = await api.get("/faults/" + body["ticket"])
    assert status == 200 and again == body

    status, other = await api.post("/faults", json={"account": "20240004", "kind": "no_signal",
                                                    "phone": "18688886666"})
    assert status == 201 and other["ticket"] == "F202611250002"
    assert other["known_outage"] is False and other["outage_id"] is None
    assert other["eta"] == "2026-11-26T10:30:00+08:00"  # normal tier: 24 h


async def test_fault_idempotency_key(api: Api) -> None:
    body = {"account": "20240003", "kind": "line_noise", "phone": "02150801234"}
    headers = {"Idempotency-Key": "abc123"}
    status, first, _ = await api.call("POST", "/faults", json=body, headers=headers)
    status2, second, resp = await api.call("POST", "/faults", json=body, headers=headers)
    assert status == status2 == 201
    assert first == second
    assert resp.headers["Idempotent-Replayed"] == "true"
    _, third = await api.post("/faults", json=body)
    assert third["ticket"] != first["ticket"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"account": "20240001", "kind": "alien_invasion", "phone": "13800138000"}, 400, "bad kind"),
        ({"account": "20240001", "phone": "13800138000"}, 400, "bad kind"),
        ({"account": "20240001", "kind": "other", "phone": "12"}, 400, "bad phone"),
        ({"account": "20240001", "kind": "other"}, 400, "bad phone"),
        ({"account": "123", "kind": "other", "phone": "13800138000"}, 400, "bad account number"),
        ({"kind": "other", "phone": "13800138000"}, 400, "bad account number"),
        ({"account": "20249999", "kind": "other", "phone": "13800138000"}, 404, "unknown account"),
        ({"account": {"x": 1}, "kind": "other", "phone": "13800138000"}, 400, "bad field"),
    ],
)
async def test_fault_errors(api: Api, body: dict[str, Any], status: int, error: str) -> None:
    got_status, answer = await api.post("/faults", json=body)
    assert (got_status, answer["error"]) == (status, error)


async def test_fault_ticket_errors(api: Api) -> None:
    status, body = await api.get("/faults/F209901010001")
    assert status == 404 and body["error"] == "unknown ticket"
    status, body = await api.get("/faults/nonsense")
    assert status == 400
    status, body = await api.post("/faults", data=b"{oops")
    assert status == 400 and body["error"] == "bad json"


async def test_outages(api: Api) -> None:
    status, body = await api.get("/outages")
    assert status == 200 and body["count"] == 3
    status, body = await api.get("/outages", params={"area": "chaoyang"})
    assert body["count"] == 1
    outage = body["outages"][0]
    assert outage["status"] == "active" and outage["services"] == ["broadband"]
    started, ends = (datetime.fromisoformat(outage[k]) for k in ("started", "expected_end"))
    assert started < FIXED_NOW < ends
    for name in ("朝阳", "朝阳区", "CHAOYANG"):
        _, body = await api.get("/outages", params={"area": name})
        assert body["count"] == 1, name
    _, body = await api.get("/outages", params={"area": "浦东"})
    assert body["outages"][0]["status"] == "planned"
    _, body = await api.get("/outages", params={"area": "haidian"})
    assert body == {"area": "haidian", "count": 0, "outages": []}


async def test_unknown_path_and_method_are_json(api: Api) -> None:
    status, body = await api.get("/nothing/here")
    assert status == 404 and body["error"] == "not found"
    status, body, resp = await api.call("GET", "/faults")
    assert status == 405 and "POST" in resp.headers["Allow"]
    status, body = await api.post("/accounts/20240001")
    assert status == 405


async def test_unexpected_error_is_json_without_traceback(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self: DemoAccount) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(DemoAccount, "summary", boom)
    async with api.http.get(api.base + "/accounts/20240001") as resp:
        text = await resp.text()
    assert resp.status == 500
    assert "Traceback" not in text and "secret" not in text
    assert (await api.get("/health"))[0] == 200


async def test_special_accounts_exercise_failure_branches(api: Api) -> None:
    down = await perform_lookup(api.http, {"url": api.base + "/accounts/90000503", "retries": 1})
    assert (down["ok"], down["status"], down["error"], down["attempts"]) == (False, 503, "http 503", 2)
    slow = await perform_lookup(api.http, {"url": api.base + "/accounts/90000504/balance", "timeout": 0.2})
    assert slow["error"] == "timeout"
    status, body = await api.get("/accounts/90000504")  # waits slow_seconds, then unknown
    assert status == 404


async def test_add_routes_mounts_under_a_prefix() -> None:
    root = web.Application()
    sub = add_routes(root, prefix="/backend")
    assert isinstance(sub, web.Application)
    runner, port = await _serve(root)
    try:
        async with aiohttp.ClientSession() as http:
            result = await perform_lookup(http, {"url": f"http://127.0.0.1:{port}/backend/customers/by-phone/13309298888"})
            assert result["ok"] and result["data"]["account"] == "20240010"
            assert result["data"]["tier"] == "vip"
    finally:
        await runner.cleanup()


async def test_tickets_are_per_instance_and_start_with_f_year() -> None:
    app = create_demo_backend()
    runner, port = await _serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/faults",
                                 json={"account": "20240006", "kind": "tv_no_signal",
                                       "phone": "057187654321"}) as resp:
                body = await resp.json()
        assert resp.status == 201
        assert re.fullmatch(r"F\d{8}0001", body["ticket"])
        assert body["known_outage"] is True  # xihu IPTV fault
    finally:
        await runner.cleanup()
