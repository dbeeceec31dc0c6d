"""Demo business backend: the customer systems of a telecom/utility hotline.

The shipped demo flow's ``lookup`` nodes call these JSON endpoints, so the
whole product can be tried without a real CRM. Everything is fictitious and
in memory; fault tickets are lost on restart. Mount it in the server's web
app with ``add_routes(app)`` (a sub-application under ``/demo-api``), or run
``create_demo_backend()`` on its own.

Endpoints (paths relative to the prefix; every answer, errors included, is
JSON; amounts are numbers in CNY, dates ISO 8601, times with ``+08:00``):

=======================================  ==================================================
``GET  /health``                         ``{"status": "ok", "accounts": 12}``
``GET  /accounts/{account}``             account summary (no ID number, no PIN; phones masked)
``GET  /accounts/{account}/balance``     balance, arrears flag, amount due, due date
``GET  /accounts/{account}/bills``       ``?limit=3`` (1..12), newest first
``POST /accounts/{account}/verify``      ``{"id_last6": "071239"}`` or ``{"pin": "123456"}``
                                         -> ``{"verified": bool}``; ``*`` or ``x`` stand for ``X``
``GET  /customers/by-phone/{number}``    account, tier and names for a caller's number; 404 if none
``POST /faults``                         ``{"account", "kind", "phone"}`` -> 201 ``{"ticket": "F2026..."}``
``GET  /faults/{ticket}``                a stored fault ticket
``GET  /outages``                        ``?area=chaoyang`` (slug or Chinese name); all areas if omitted
=======================================  ==================================================

Errors: ``{"error": "<label>", "detail": "..."}`` with 400 (bad JSON or
fields), 404 (unknown account, number, ticket or path), 405, 413, 500, 503.
An account number is 8 digits; anything else is a 400.

Caller numbers are matched after normalising: ``+86 138-0013-8000``,
``8613800138000`` and ``13800138000`` are the same mobile; ``+86 10 6552 9988``
and ``01065529988`` the same Beijing landline.

``POST /faults`` honours an ``Idempotency-Key`` header (sent by
:mod:`ivr.lookup` on retried POSTs): a repeat gets the first ticket back.
Fault kinds: ``no_internet``, ``slow_internet``, ``no_dial_tone``,
``line_noise``, ``no_signal``, ``tv_no_signal``, ``other``.

Demo accounts (resident ID numbers carry valid GB 11643 check digits;
``id_last6`` is their last six characters):

=========  ======  ===========  ==================  ======  =========================  ======  =========  =======  ==========  ========
account    name    name_en      resident_id         pin     phones                     tier    status     balance  due_date    area
=========  ======  ===========  ==================  ======  =========================  ======  =========  =======  ==========  ========
20240001   张伟    Zhang Wei    110105199003071239  123456  13800138000, 01065529988   vip     active     268.50   2026-12-15  chaoyang
20240002   王芳    Wang Fang    110108198511202340  246810  13912345678                normal  active     -35.20   2026-11-30  haidian
20240003   李娜    Li Na        310115199207154327  135790  13661234567, 02150801234   vip     active     0.00     2026-12-15  pudong
20240004   刘洋    Liu Yang     440305198802283214  112233  18688886666                normal  active     1024.00  2026-12-15  nanshan
20240005   陈静    Chen Jing    51010419951212662X  654321  15928001234                normal  suspended  -128.90  2026-11-10  jinjiang
20240006   杨磊    Yang Lei     330106197806301112  778899  13588889999, 057187654321  vip     active     56.30    2026-12-15  xihu
20240007   赵敏    Zhao Min     420106200001011528  202020  17705551234                normal  active     12.00    2026-12-15  wuchang
20240008   黄强    Huang Qiang  320102196505059017  505050  02584561234                normal  active     -7.85    2026-12-05  xuanwu
20240009   周婷    Zhou Ting    120101199811110044  909090  13820001234                normal  active     150.00   2026-12-15  heping
20240010   吴刚    Wu Gang      610113198309097750  314159  13309298888                vip     active     300.00   2026-12-15  yanta
20240011   徐丽    Xu Li        500103199104044424  271828  13996001234                normal  suspended  -560.00  2026-10-15  yuzhong
20240012   孙浩    Sun Hao      370202200212125512  161803  15666661234                normal  active     88.80    2026-12-15  shinan
=========  ======  ===========  ==================  ======  =========================  ======  =========  =======  ==========  ========

Outages (times relative to start-up): an active broadband outage in
``chaoyang`` (hits 20240001), an active IPTV/broadband fault in ``xihu``
(hits 20240006), and planned maintenance in ``pudong`` tomorrow 01:00-05:00.

Special account numbers, to try a flow's failure branches:

- ``90000503``: every account endpoint answers 503 (backend down);
- ``90000504``: every account endpoint answers only after ``slow_seconds``
  (10 s by default, more than any sensible look-up timeout), then 404.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

__all__ = [
    "ACCOUNTS",
    "DEMO_PREFIX",
    "DEMO_STATE",
    "FAULT_KINDS",
    "DemoAccount",
    "DemoState",
    "add_routes",
    "create_demo_backend",
    "mask_phone",
    "normalize_phone",
    "resident_id_check_digit",
]

log = logging.getLogger(__name__)

DEMO_PREFIX = "/demo-api"
TZ = ZoneInfo("Asia/Shanghai")
CURRENCY = "CNY"

SPECIAL_DOWN = "90000503"
SPECIAL_SLOW = "90000504"

FAULT_KINDS = frozenset(
    {"no_internet", "slow_internet", "no_dial_tone", "line_noise", "no_signal", "tv_no_signal", "other"}
)
MAX_FAULTS = 10_000  # in-memory tickets kept (oldest dropped first)
MAX_BILLS = 12

_ACCOUNT_RE = re.compile(r"^\d{8}$")
_PIN_RE = re.compile(r"^\d{4,8}$")
_ID_LAST6_RE = re.compile(r"^\d{5}[\dX]$")
_TICKET_RE = re.compile(r"^F\d{12}$")
_MOBILE_RE = re.compile(r"^1[3-9]\d{9}$")

# GB 11643-1999: weights of the first 17 digits, and the check character by
# (weighted sum mod 11).
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def resident_id_check_digit(first17: str) -> str:
    """Return the GB 11643 check character ('0'-'9' or 'X') for 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("need exactly 17 digits")
    return _ID_CHECK[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def normalize_phone(number: str) -> str | None:
    """Normalise a Chinese phone number to its national form, or ``None``.

    Mobiles become 11 digits starting with ``1``; landlines keep their trunk
    ``0`` and area code (``01065529988``). ``+86``/``0086``/``86`` prefixes,
    a trunk ``0`` before a mobile and separators are dropped. ``None`` when
    what is left is not 7 to 12 digits (``anonymous``, an extension ...).
    """
    digits = "".join(c for c in number if c.isascii() and c.isdigit())
    national = False
    if number.strip().startswith("+") or digits.startswith("0086"):
        digits = digits[4:] if digits.startswith("0086") else digits
        digits, national = (digits[2:], True) if digits.startswith("86") else (digits, False)
    elif digits.startswith("86") and len(digits) in (12, 13):
        digits, national = digits[2:], True
    if national and not _MOBILE_RE.match(digits):
        digits = "0" + digits  # landline given without its trunk prefix
    elif len(digits) == 12 and digits.startswith("0") and _MOBILE_RE.match(digits[1:]):
        digits = digits[1:]  # trunk prefix dialled before a mobile
    if not 7 <= len(digits) <= 12:
        return None
    return digits


def mask_phone(number: str) -> str:
    """``13800138000`` -> ``138****8000``: enough for a caller to recognise."""
    if len(number) <= 7:
        return number[:2] + "*" * (len(number) - 2)
    return number[:3] + "*" * (len(number) - 7) + number[-4:]


@dataclass(frozen=True)
class DemoAccount:
    account: str
    name_zh: str
    name_en: str
    resident_id: str
    pin: str
    phones: tuple[str, ...]
    tier: str  # "vip" | "normal"
    status: str  # "active" | "suspended"
    balance: float  # negative = arrears
    due_date: str
    area: str
    services: tuple[str, ...]
    plan_zh: str
    plan_en: str
    monthly_fee: float

    @property
    def arrears(self) -> bool:
        return self.balance < 0

    def summary(self) -> dict[str, Any]:
        area = AREAS[self.area]
        return {
            "account": self.account,
            "name_zh": self.name_zh,
            "name_en": self.name_en,
            "tier": self.tier,
            "status": self.status,
            "area": self.area,
            "area_zh": area[0],
            "city_en": area[1],
            "services": list(self.services),
            "plan_zh": self.plan_zh,
            "plan_en": self.plan_en,
            "balance": self.balance,
            "currency": CURRENCY,
            "due_date": self.due_date,
            "arrears": self.arrears,
            "phones": [mask_phone(p) for p in self.phones],
        }

    def balance_view(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "balance": self.balance,
            "currency": CURRENCY,
            "arrears": self.arrears,
            "amount_due": round(-self.balance, 2) if self.arrears else 0.0,
            "due_date": self.due_date,
            "status": self.status,
        }

    def bills(self) -> list[dict[str, Any]]:
        """Six monthly bills, newest first, deterministic per account."""
        seed = int(self.account[-2:])
        out: list[dict[str, Any]] = []
        for i, month in enumerate(range(11, 5, -1)):  # 2026-11 back to 2026-06
            extra = ((seed * 7 + i * 13) % 23) * 0.5
            due_month = month + 1
            due = f"2026-{due_month:02d}-15" if due_month <= 12 else "2027-01-15"
            out.append(
                {
                    "month": f"2026-{month:02d}",
                    "amount": round(self.monthly_fee + extra, 2),
                    "due_date": due,
                    "paid": not (i == 0 and self.arrears),
                }
            )
        return out


# slug -> (Chinese name, city in English)
AREAS: dict[str, tuple[str, str]] = {
    "chaoyang": ("朝阳区", "Beijing"),
    "haidian": ("海淀区", "Beijing"),
    "pudong": ("浦东新区", "Shanghai"),
    "nanshan": ("南山区", "Shenzhen"),
    "jinjiang": ("锦江区", "Chengdu"),
    "xihu": ("西湖区", "Hangzhou"),
    "wuchang": ("武昌区", "Wuhan"),
    "xuanwu": ("玄武区", "Nanjing"),
    "heping": ("和平区", "Tianjin"),
    "yanta": ("雁塔区", "Xi'an"),
    "yuzhong": ("渝中区", "Chongqing"),
    "shinan": ("市南区", "Qingdao"),
}

_BB_LL = ("broadband", "landline")
ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount("20240001", "张伟", "Zhang Wei", "110105199003071239", "123456",
                ("13800138000", "01065529988"), "vip", "active", 268.50, "2026-12-15",
                "chaoyang", (*_BB_LL, "mobile"), "融合套餐：千兆宽带+固话+5G 199元",
                "Bundle: 1000M fibre + landline + 5G, 199", 199.0),
    DemoAccount("20240002", "王芳", "Wang Fang", "110108198511202340", "246810",
                ("13912345678",), "normal", "active", -35.20, "2026-11-30",
                "haidian", ("mobile",), "5G畅享套餐 128元", "5G Plus, 128", 128.0),
    DemoAccount("20240003", "李娜", "Li Na", "310115199207154327", "135790",
                ("13661234567", "02150801234"), "vip", "active", 0.00, "2026-12-15",
                "pudong", (*_BB_LL, "mobile", "iptv"), "全家享套餐 299元",
                "Family bundle, 299", 299.0),
    DemoAccount("20240004", "刘洋", "Liu Yang", "440305198802283214", "112233",
                ("18688886666",), "normal", "active", 1024.00, "2026-12-15",
                "nanshan", ("mobile",), "5G畅享套餐 169元", "5G Plus, 169", 169.0),
    DemoAccount("20240005", "陈静", "Chen Jing", "51010419951212662X", "654321",
                ("15928001234",), "normal", "suspended", -128.90, "2026-11-10",
                "jinjiang", ("broadband", "mobile"), "宽带+5G 99元", "Fibre + 5G, 99", 99.0),
    DemoAccount("20240006", "杨磊", "Yang Lei", "330106197806301112", "778899",
                ("13588889999", "057187654321"), "vip", "active", 56.30, "2026-12-15",
                "xihu", (*_BB_LL, "iptv"), "千兆宽带+IPTV 159元", "1000M fibre + IPTV, 159",
                159.0),
    DemoAccount("20240007", "赵敏", "Zhao Min", "420106200001011528", "202020",
                ("17705551234",), "normal", "active", 12.00, "2026-12-15",
                "wuchang", ("mobile",), "校园卡 39元", "Campus SIM, 39", 39.0),
    DemoAccount("20240008", "黄强", "Huang Qiang", "320102196505059017", "505050",
                ("02584561234",), "normal", "active", -7.85, "2026-12-05",
                "xuanwu", ("landline",), "固话月租 25元", "Landline line rental, 25", 25.0),
    DemoAccount("20240009", "周婷", "Zhou Ting", "120101199811110044", "909090",
                ("13820001234",), "normal", "active", 150.00, "2026-12-15",
                "heping", ("broadband", "mobile"), "宽带+5G 129元", "Fibre + 5G, 129", 129.0),
    DemoAccount("20240010", "吴刚", "Wu Gang", "610113198309097750", "314159",
                ("13309298888",), "vip", "active", 300.00, "2026-12-15",
                "yanta", ("broadband", "mobile", "iptv"), "尊享套餐 399元",
                "Premier bundle, 399", 399.0),
    DemoAccount("20240011", "徐丽", "Xu Li", "500103199104044424", "271828",
                ("13996001234",), "normal", "suspended", -560.00, "2026-10-15",
                "yuzhong", ("broadband", "mobile"), "宽带+5G 99元", "Fibre + 5G, 99", 99.0),
    DemoAccount("20240012", "孙浩", "Sun Hao", "370202200212125512", "161803",
                ("15666661234",), "normal", "active", 88.80, "2026-12-15",
                "shinan", ("mobile",), "5G畅享套餐 128元", "5G Plus, 128", 128.0),
)


def _outages(now: datetime) -> list[dict[str, Any]]:
    """Demo outages, timed relative to ``now`` so some are always in progress."""
    def iso(t: datetime) -> str:
        return t.replace(microsecond=0).isoformat()

    chaoyang_end = now + timedelta(hours=2, minutes=30)
    xihu_end = now + timedelta(hours=1, minutes=20)
    night = (now + timedelta(days=1)).replace(hour=1, minute=0, second=0, microsecond=0)
    return [
        {
            "id": "OUT-001", "area": "chaoyang", "area_zh": AREAS["chaoyang"][0],
            "services": ["broadband"], "status": "active", "kind": "fibre_cut",
            "started": iso(now - timedelta(hours=1, minutes=30)), "expected_end": iso(chaoyang_end),
            "message_zh": f"朝阳区部分小区光缆故障，宽带中断，预计{chaoyang_end:%H:%M}恢复。",
            "message_en": f"A fibre cut in parts of Chaoyang has broken broadband; "
                          f"service expected back by {chaoyang_end:%H:%M}.",
        },
        {
            "id": "OUT-002", "area": "xihu", "area_zh": AREAS["xihu"][0],
            "services": ["iptv", "broadband"], "status": "active", "kind": "equipment_fault",
            "started": iso(now - timedelta(minutes=40)), "expected_end": iso(xihu_end),
            "message_zh": f"西湖区机房设备故障，电视和宽带受影响，预计{xihu_end:%H:%M}恢复。",
            "message_en": f"An equipment fault in Xihu affects TV and broadband; "
                          f"expected fixed by {xihu_end:%H:%M}.",
        },
        {
            "id": "OUT-003", "area": "pudong", "area_zh": AREAS["pudong"][0],
            "services": ["broadband", "landline"], "status": "planned", "kind": "maintenance",
            "started": iso(night), "expected_end": iso(night + timedelta(hours=4)),
            "message_zh": "浦东新区将于明日凌晨1点至5点进行网络升级，宽带和固话可能短暂中断。",
            "message_en": "Network upgrade in Pudong tomorrow 01:00-05:00; "
                          "broadband and landlines may drop briefly.",
        },
    ]


@dataclass
class DemoState:
    """All mutable demo data of one backend instance."""

    now: Callable[[], datetime] = lambda: datetime.now(TZ)
    slow_seconds: float = 10.0
    accounts: dict[str, DemoAccount] = field(default_factory=lambda: {a.account: a for a in ACCOUNTS})
    by_phone: dict[str, DemoAccount] = field(default_factory=dict)
    outages: list[dict[str, Any]] = field(default_factory=list)
    faults: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    idempotency: OrderedDict[str, str] = field(default_factory=OrderedDict)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        for acc in self.accounts.values():
            for phone in acc.phones:
                if phone in self.by_phone:
                    raise ValueError(f"phone {phone} registered twice")
                self.by_phone[phone] = acc
        if not self.outages:
            self.outages = _outages(self.now())

    def new_ticket(self) -> str:
        """``F`` + date + a 4-digit sequence, e.g. ``F202611250001``."""
        while True:
            ticket = f"F{self.now():%Y%m%d}{next(self._seq) % 10_000:04d}"
            if ticket not in self.faults:
                return ticket


DEMO_STATE = web.AppKey("ivr_demo_backend_state", DemoState)


class ApiError(Exception):
    """Turned into a JSON error answer by the middleware."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every error leaves as JSON; nothing leaks a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response({"error": exc.error, "detail": exc.detail}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        label = (exc.reason or "error").lower()
        return web.json_response({"error": label, "detail": ""}, status=exc.status, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("demo backend: unexpected error on %s %s", request.method, request.path)
        return web.json_response({"error": "internal error", "detail": ""}, status=500)


def _state(request: web.Request) -> DemoState:
    return request.config_dict[DEMO_STATE]


async def _account(request: web.Request) -> DemoAccount:
    number = request.match_info["account"]
    if not _ACCOUNT_RE.match(number):
        raise ApiError(400, "bad account number", "an account number is 8 digits")
    state = _state(request)
    if number == SPECIAL_DOWN:
        raise ApiError(503, "backend unavailable", "demo account that simulates an outage")
    if number == SPECIAL_SLOW:
        await asyncio.sleep(state.slow_seconds)
    account = state.accounts.get(number)
    if account is None:
        raise ApiError(404, "unknown account", f"no account {number}")
    return account


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # bounded by the app's client_max_size (413 above it)
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        raise ApiError(400, "bad json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad json", "the body must be a JSON object")
    return body


def _text_field(body: dict[str, Any], key: str) -> str | None:
    """A string field (ints accepted and converted); ``None`` when absent."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ApiError(400, "bad field", f"{key} must be a string")
    return str(value).strip()


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": "ivr-demo-backend",
                              "accounts": len(_state(request).accounts)})


async def get_account(request: web.Request) -> web.Response:
    return web.json_response((await _account(request)).summary())


async def get_balance(request: web.Request) -> web.Response:
    return web.json_response((await _account(request)).balance_view())


async def get_bills(request: web.Request) -> web.Response:
    account = await _account(request)
    raw = request.query.get("limit", "3")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_BILLS:
        raise ApiError(400, "bad limit", f"limit must be 1..{MAX_BILLS}")
    bills = account.bills()[: int(raw)]
    return web.json_response({"account": account.account, "currency": CURRENCY,
                              "count": len(bills), "bills": bills})


async def verify(request: web.Request) -> web.Response:
    account = await _account(request)
    body = await _json_object(request)
    id_last6, pin = _text_field(body, "id_last6"), _text_field(body, "pin")
    if (id_last6 is None) == (pin is None):
        raise ApiError(400, "bad fields", "give exactly one of id_last6 or pin")
    if id_last6 is not None:
        # Keypads have no X: callers press * for it, as Chinese IVRs tell them.
        given = id_last6.upper().replace("*", "X")
        if not _ID_LAST6_RE.match(given):
            raise ApiError(400, "bad id_last6", "six characters: digits, the last may be X or *")
        expected, method = account.resident_id[-6:], "id_last6"
    else:
        assert pin is not None
        if not _PIN_RE.match(pin):
            raise ApiError(400, "bad pin", "a PIN is 4 to 8 digits")
        given, expected, method = pin, account.pin, "pin"
    ok = hmac.compare_digest(given.encode(), expected.encode())
    return web.json_response({"account": account.account, "method": method, "verified": ok})


async def customer_by_phone(request: web.Request) -> web.Response:
    # Caller IDs can be anything ("anonymous", an extension): all of that is
    # simply an unknown caller, so the flow has one branch to handle.
    number = normalize_phone(request.match_info["number"])
    account = _state(request).by_phone.get(number) if number else None
    if number is None or account is None:
        raise ApiError(404, "unknown number", "no account has this number registered")
    return web.json_response({
        "phone": number, "account": account.account, "tier": account.tier,
        "name_zh": account.name_zh, "name_en": account.name_en,
        "status": account.status, "area": account.area,
        "line": "mobile" if number.startswith("1") else "landline",
    })


def _area_outages(state: DemoState, area: str | None) -> list[dict[str, Any]]:
    if not area:
        return list(state.outages)
    key = area.strip().lower()
    return [o for o in state.outages if key in _area_names(o)]


def _area_names(outage: dict[str, Any]) -> tuple[str, ...]:
    """The names an area goes by: ``chaoyang``, ``朝阳区``, ``朝阳``."""
    zh: str = outage["area_zh"]
    return (outage["area"], zh, zh.removesuffix("新区").removesuffix("区"))


async def get_outages(request: web.Request) -> web.Response:
    area = request.query.get("area")
    found = _area_outages(_state(request), area)
    return web.json_response({"area": area, "count": len(found), "outages": found})


async def create_fault(request: web.Request) -> web.Response:
    state = _state(request)
    body = await _json_object(request)
    key = request.headers.get("Idempotency-Key", "")[:128]
    if key and key in state.idempotency and state.idempotency[key] in state.faults:
        return web.json_response(state.faults[state.idempotency[key]], status=201,
                                 headers={"Idempotent-Replayed": "true"})

    account_no, kind, phone_raw = (_text_field(body, k) for k in ("account", "kind", "phone"))
    if not account_no or not _ACCOUNT_RE.match(account_no):
        raise ApiError(400, "bad account number", "account must be 8 digits")
    account = state.accounts.get(account_no)
    if account is None:
        raise ApiError(404, "unknown account", f"no account {account_no}")
    if kind not in FAULT_KINDS:
        raise ApiError(400, "bad kind", "kind must be one of " + ", ".join(sorted(FAULT_KINDS)))
    phone = normalize_phone(phone_raw or "")
    if phone is None:
        raise ApiError(400, "bad phone", "phone must be a callback number")

    now = state.now()
    active = [o for o in state.outages if o["area"] == account.area and o["status"] == "active"
              and set(o["services"]) & set(account.services)]
    if active:
        eta = datetime.fromisoformat(active[0]["expected_end"])
    else:
        eta = now + timedelta(hours=4 if account.tier == "vip" else 24)
    ticket = state.new_ticket()
    fault = {
        "ticket": ticket, "account": account.account, "kind": kind, "phone": phone,
        "status": "open", "created": now.replace(microsecond=0).isoformat(),
        "eta": eta.replace(microsecond=0).isoformat(),
        "known_outage": bool(active), "outage_id": active[0]["id"] if active else None,
    }
    state.faults[ticket] = fault
    while len(state.faults) > MAX_FAULTS:
        state.faults.popitem(last=False)
    if key:
        state.idempotency[key] = ticket
        while len(state.idempotency) > MAX_FAULTS:
            state.idempotency.popitem(last=False)
    return web.json_response(fault, status=201)


async def get_fault(request: web.Request) -> web.Response:
    ticket = request.match_info["ticket"].upper()
    if not _TICKET_RE.match(ticket):
        raise ApiError(400, "bad ticket", "a ticket looks like F202611250001")
    fault = _state(request).faults.get(ticket)
    if fault is None:
        raise ApiError(404, "unknown ticket", f"no ticket {ticket}")
    return web.json_response(fault)


def create_demo_backend(
    *, now: Callable[[], datetime] | None = None, slow_seconds: float = 10.0
) -> web.Application:
    """Return the demo backend as an aiohttp application (mount it as a sub-app).

    ``now`` replaces the clock (tests); ``slow_seconds`` is how long the slow
    special account ``90000504`` keeps a request waiting.
    """
    app = web.Application(middlewares=[_json_errors], client_max_size=64 * 1024)
    app[DEMO_STATE] = DemoState(now=now or (lambda: datetime.now(TZ)), slow_seconds=slow_seconds)
    app.router.add_get("/health", health)
    app.router.add_get("/accounts/{account}", get_account)
    app.router.add_get("/accounts/{account}/balance", get_balance)
    app.router.add_get("/accounts/{account}/bills", get_bills)
    app.router.add_post("/accounts/{account}/verify", verify)
    app.router.add_get("/customers/by-phone/{number}", customer_by_phone)
    app.router.add_post("/faults", create_fault)
    app.router.add_get("/faults/{ticket}", get_fault)
    app.router.add_get("/outages", get_outages)
    return app


def add_routes(app: web.Application, prefix: str = DEMO_PREFIX) -> web.Application:
    """Mount the demo backend under ``prefix`` in ``app``; return the sub-app."""
    sub = create_demo_backend()
    app.add_subapp(prefix, sub)
    return sub


def main(argv: list[str] | None = None) -> int:
    """Run the demo backend on its own: ``python -m ivr.demo_backend --port 8081``."""
    import argparse

    parser = argparse.ArgumentParser(description="the demo business backend, standalone")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    root = web.Application()
    add_routes(root, DEMO_PREFIX)
    web.run_app(root, host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
