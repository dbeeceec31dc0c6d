"""Sign-in for the people who use the server's web pages: the agent desk and the
ops dashboard share one account table, one ``/login`` page and one session cookie.

Accounts
    Stored in the trail database (table ``accounts``): a unique name, a role
    (:data:`ROLES`: ``agent`` or ``supervisor``), the agent's Asterisk interface
    (``PJSIP/1001``, ``Local/agent1@ivr-agents``) and a password hashed with
    scrypt (:func:`hash_password`, stdlib ``hashlib.scrypt``, a fresh salt per
    hash, parameters stored in the hash so they can be raised later).
    ``ivr agents add NAME --interface IFACE [--role supervisor]`` creates one.

Sessions
    A signed cookie (HMAC-SHA256 with a key derived from the server secret,
    :func:`load_secret`) naming the account, its role and an expiry. Every
    request guarded by :func:`require_role` re-reads the account (cached for a
    few seconds), so a disabled account or a changed role takes effect at once
    on every server sharing the database.

CSRF
    Every POST form carries ``csrf_token`` (:func:`csrf_token` in the template,
    :func:`check_csrf` in the handler); scripts send it as the ``X-CSRF-Token``
    header. The token is an HMAC of a random per-browser cookie, so a page on
    another site can neither read nor forge it.

Brute force
    Sign-in attempts are limited per client address (sliding window, in
    memory: ``login_address_failures`` per ``login_address_window`` seconds)
    and per account (``login_max_failures`` consecutive failures lock the
    account for ``login_lock_seconds``, stored in the database so the lock
    holds on every server); every refusal is logged.

Handlers::

    from ivr.auth import require_role, current_account, csrf_token, check_csrf

    @require_role("supervisor")
    async def page(request):            # HTML: redirect to /login?next=...; API: 401/403 JSON
        account = current_account(request)
        ...
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote

import jinja2
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ivr.store.engine import WRITE_OPTION
from ivr.store.models_handoff import accounts_table as AC

__all__ = [
    "ROLES",
    "Account",
    "AccountError",
    "AddressLimiter",
    "AccountStore",
    "Auth",
    "AUTH_KEY",
    "BadSignature",
    "LoginRefused",
    "Signer",
    "check_csrf",
    "csrf_token",
    "current_account",
    "get_auth",
    "hash_password",
    "load_secret",
    "read_json",
    "read_post",
    "require_role",
    "setup_auth",
    "validate_interface",
    "verify_password",
]

log = logging.getLogger("ivr.auth")

ROLES = ("agent", "supervisor")

SESSION_COOKIE = "ivr_auth"
CSRF_COOKIE = "ivr_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = 12 * 3600.0

# scrypt: n=2**15, r=8, p=1 is ~32 MiB and ~0.1 s per hash (OWASP's minimum is
# n=2**17 with more memory; raise N_LOG2 where the servers have the memory).
SCRYPT_N_LOG2 = 15
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAXMEM = 256 * 1024 * 1024

# Brute-force limits.
ACCOUNT_MAX_FAILURES = 5          # consecutive failures before the account is locked
ACCOUNT_LOCK_SECONDS = 15 * 60
IP_MAX_FAILURES = 20              # failures per client address within the window
IP_WINDOW_SECONDS = 10 * 60

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Technology/resource[@context]: what Queue members and Dial targets look like.
_INTERFACE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,15}/[A-Za-z0-9][A-Za-z0-9._@+-]{0,110}$")


class AccountError(ValueError):
    """A bad account name, role, interface or password (the message says which)."""


class LoginRefused(Exception):
    """Sign-in refused; ``reason`` is for the log (``bad``, ``locked``, ``rate``, ``disabled``)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class BadSignature(Exception):
    """A signed token that is malformed, forged, for another purpose or expired."""


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    role: str
    interface: str | None
    disabled: bool = False

    @property
    def is_supervisor(self) -> bool:
        return self.role == "supervisor"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "interface": self.interface}


# --------------------------------------------------------------------- passwords

def hash_password(password: str) -> str:
    """``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>`` of ``password``."""
    if not isinstance(password, str) or not password:
        raise AccountError("the password is empty")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** SCRYPT_N_LOG2, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N_LOG2), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_password(password: str, encoded: str | None) -> bool:
    """True when ``password`` matches ``encoded`` (constant time; False on any malformed hash)."""
    try:
        scheme, n_log2, r, p, salt, digest = (encoded or "").split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=2 ** int(n_log2), r=int(r), p=int(p),
                             maxmem=_SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def needs_rehash(encoded: str) -> bool:
    try:
        _, n_log2, r, p, *_ = encoded.split("$")
        return (int(n_log2), int(r), int(p)) != (SCRYPT_N_LOG2, SCRYPT_R, SCRYPT_P)
    except ValueError:
        return True


_DUMMY_HASH: str | None = None


def _burn_time(password: str) -> None:
    """Spend as long as a real check, so unknown names do not answer faster."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_hex(8))
    verify_password(password, _DUMMY_HASH)


def validate_interface(interface: str) -> str:
    """An Asterisk interface such as ``PJSIP/1001`` or ``Local/agent1@ivr-agents``."""
    value = (interface or "").strip()
    if not _INTERFACE_RE.match(value):
        raise AccountError(
            f"{interface!r} is not an Asterisk interface (TECH/resource, e.g. PJSIP/1001 or Local/agent1@ivr-agents)")
    return value


def validate_name(name: str) -> str:
    value = (name or "").strip()
    if not _NAME_RE.match(value):
        raise AccountError(f"{name!r} is not a usable account name (letters, digits, . _ @ -; at most 64)")
    return value


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


# ---------------------------------------------------------------------- accounts

def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _account(row: Any) -> Account:
    return Account(row["id"], row["name"], row["role"], row["interface"], bool(row["disabled"]))


class AccountStore:
    """Accounts in the trail database (any AsyncEngine migrated to head)."""

    def __init__(self, engine: AsyncEngine, *, max_failures: int = ACCOUNT_MAX_FAILURES,
                 lock_seconds: float = ACCOUNT_LOCK_SECONDS):
        self.engine = engine
        self._write = engine.execution_options(**{WRITE_OPTION: True})
        self.max_failures = max_failures
        self.lock_seconds = lock_seconds

    async def create(self, name: str, password: str, *, role: str = "agent", interface: str | None = None,
                     replace: bool = False) -> Account:
        """Create an account (``replace``: or update the one of that name)."""
        name = validate_name(name)
        role = validate_role(role)
        iface = validate_interface(interface) if interface else None
        if role == "agent" and not iface:
            raise AccountError("an agent needs an interface (e.g. --interface PJSIP/1001)")
        if len(password) < 8:
            raise AccountError("the password must have at least 8 characters")
        hashed = await asyncio.to_thread(hash_password, password)  # ~0.1 s: keep calls running
        async with self._write.begin() as conn:
            row = (await conn.execute(select(AC.c.id).where(AC.c.name == name))).first()
            if row is not None:
                if not replace:
                    raise AccountError(f"account {name!r} exists already")
                await conn.execute(update(AC).where(AC.c.id == row.id).values(
                    password_hash=hashed, role=role, interface=iface, disabled=False, failed_logins=0,
                    locked_until=None))
                return Account(row.id, name, role, iface)
            account_id = uuid.uuid4().hex
            await conn.execute(insert(AC).values(
                id=account_id, name=name, password_hash=hashed, role=role, interface=iface, disabled=False,
                failed_logins=0, created_at=_now()))
        return Account(account_id, name, role, iface)

    async def get(self, name: str) -> Account | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(AC).where(AC.c.name == name))).mappings().first()
        return _account(row) if row else None

    async def get_by_id(self, account_id: str) -> Account | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(AC).where(AC.c.id == account_id))).mappings().first()
        return _account(row) if row else None

    async def list(self) -> list[Account]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(AC).order_by(AC.c.name))).mappings().all()
        return [_account(r) for r in rows]

    async def by_interface(self, interface: str) -> list[Account]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(AC).where(AC.c.interface == interface))).mappings().all()
        return [_account(r) for r in rows if not r["disabled"]]

    async def set_interface(self, account_id: str, interface: str, *, claim: bool = False) -> Account | None:
        """Set an account's interface. ``claim`` (an agent choosing it on the desk):
        refused when another enabled account has it, since an interface's pops and
        sessions are visible to whoever holds it (``ivr agents`` may still share one)."""
        iface = validate_interface(interface)
        if claim:
            if any(a.id != account_id and not a.disabled and (a.interface or "").lower() == iface.lower()
                   for a in await self.list()):
                raise AccountError(f"{iface} is another account's interface; ask a supervisor")
        async with self._write.begin() as conn:
            await conn.execute(update(AC).where(AC.c.id == account_id).values(interface=iface))
        return await self.get_by_id(account_id)

    async def set_password(self, name: str, password: str) -> None:
        if len(password) < 8:
            raise AccountError("the password must have at least 8 characters")
        async with self._write.begin() as conn:
            result = await conn.execute(update(AC).where(AC.c.name == name).values(
                password_hash=await asyncio.to_thread(hash_password, password), failed_logins=0,
                locked_until=None))
        if result.rowcount == 0:
            raise AccountError(f"no account {name!r}")

    async def set_disabled(self, name: str, disabled: bool = True) -> None:
        async with self._write.begin() as conn:
            result = await conn.execute(update(AC).where(AC.c.name == name).values(disabled=disabled))
        if result.rowcount == 0:
            raise AccountError(f"no account {name!r}")

    async def remove(self, name: str) -> bool:
        async with self._write.begin() as conn:
            result = await conn.execute(delete(AC).where(AC.c.name == name))
        return bool(result.rowcount)

    async def check_password(self, name: str, password: str) -> Account:
        """The account when ``password`` is right; raises :class:`LoginRefused`.

        ``max_failures`` consecutive failures lock the account for
        ``lock_seconds`` (``locked``; even the right password is refused until then).
        """
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(AC).where(AC.c.name == name))).mappings().first()
        if row is None:
            await asyncio.to_thread(_burn_time, password)
            raise LoginRefused("unknown")
        locked = _utc(row["locked_until"])
        now = _now()
        if locked and locked > now:
            raise LoginRefused("locked", (locked - now).total_seconds())
        if not await asyncio.to_thread(verify_password, password, row["password_hash"]):
            async with self._write.begin() as conn:  # counted atomically: parallel guesses all count
                failures = (await conn.execute(
                    update(AC).where(AC.c.id == row["id"]).values(failed_logins=AC.c.failed_logins + 1)
                    .returning(AC.c.failed_logins))).scalar_one()
                if failures >= self.max_failures:
                    await conn.execute(update(AC).where(AC.c.id == row["id"]).values(
                        failed_logins=0, locked_until=now + timedelta(seconds=self.lock_seconds)))
            if failures >= self.max_failures:
                raise LoginRefused("locking", self.lock_seconds)
            raise LoginRefused("bad")
        if row["disabled"]:
            raise LoginRefused("disabled")
        values = {"failed_logins": 0, "locked_until": None, "last_login_at": now}
        if needs_rehash(row["password_hash"]):
            values["password_hash"] = await asyncio.to_thread(hash_password, password)
        async with self._write.begin() as conn:
            await conn.execute(update(AC).where(AC.c.id == row["id"]).values(values))
        return _account(row)


# ------------------------------------------------------------------ signed tokens

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(configured: str | None, keep_in: str | os.PathLike[str] = "var/secret_key") -> bytes:
    """The server secret: ``configured`` when set, otherwise one generated once
    and kept (mode 0600) in ``keep_in``. Servers sharing a database must share it:
    set ``secret_key`` (or ``IVR_SECRET_KEY``) on every one of them."""
    if configured:
        if len(configured) < 16:
            raise ValueError("secret_key must have at least 16 characters")
        return configured.encode()
    path = Path(keep_in)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
        log.info("generated a server secret in %s", path)
    for _ in range(50):  # another process may be writing it this very moment
        value = path.read_text().strip()
        if value:
            return value.encode()
        time.sleep(0.01)
    raise ValueError(f"{path} is empty: delete it or set secret_key")


class Signer:
    """Signs small JSON payloads for one purpose each (cookie, CSRF, desk messages ...).

    A token is ``b64(json).b64(hmac)``; the key is derived from the server
    secret and the purpose, so a token made for one use is refused by another.
    """

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the server secret is too short")
        self._secret = secret

    def key(self, purpose: str) -> bytes:
        return hmac.new(self._secret, b"ivr:" + purpose.encode(), hashlib.sha256).digest()

    def mac(self, purpose: str, data: bytes | str) -> str:
        if isinstance(data, str):
            data = data.encode()
        return _b64(hmac.new(self.key(purpose), data, hashlib.sha256).digest())

    def sign(self, purpose: str, payload: dict[str, Any], ttl: float | None = None) -> str:
        body = dict(payload)
        if ttl is not None:
            body["exp"] = int(time.time() + ttl)
        raw = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{raw}.{self.mac(purpose, raw)}"

    def unsign(self, purpose: str, token: str | None) -> dict[str, Any]:
        if not token or not isinstance(token, str) or token.count(".") != 1 or len(token) > 8192:
            raise BadSignature("malformed")
        raw, mac = token.split(".")
        if not hmac.compare_digest(mac, self.mac(purpose, raw)):
            raise BadSignature("bad signature")
        try:
            body = json.loads(_unb64(raw))
        except ValueError:
            raise BadSignature("malformed") from None
        if not isinstance(body, dict):
            raise BadSignature("malformed")
        exp = body.get("exp")
        if exp is not None and (not isinstance(exp, (int, float)) or exp < time.time()):
            raise BadSignature("expired")
        return body


# --------------------------------------------------------------- rate limiting

class AddressLimiter:
    """Failures per client address within a sliding window (per process): failed
    sign-ins here, unknown link tokens in :mod:`visual_ivr.web`."""

    def __init__(self, limit: int = IP_MAX_FAILURES, window: float = IP_WINDOW_SECONDS):
        self.limit = limit
        self.window = window
        self._fails: dict[str, deque[float]] = {}

    def _trim(self, address: str) -> deque[float]:
        q = self._fails.setdefault(address, deque())
        cutoff = time.monotonic() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def retry_after(self, address: str) -> float | None:
        q = self._trim(address)
        if len(q) >= self.limit:
            return max(1.0, q[0] + self.window - time.monotonic())
        return None

    def fail(self, address: str) -> None:
        self._trim(address).append(time.monotonic())
        if len(self._fails) > 10000:  # forget quiet addresses
            for key in [k for k, v in self._fails.items() if not v][:5000]:
                del self._fails[key]

    def clear(self, address: str) -> None:
        self._fails.pop(address, None)


# ------------------------------------------------------------------------ web

AUTH_KEY: web.AppKey["Auth"] = web.AppKey("ivr_auth")
_ACCOUNT: web.RequestKey[Account] = web.RequestKey("ivr_account", Account)
_CSRF_SEED: web.RequestKey[str] = web.RequestKey("ivr_csrf_seed", str)
_CSRF_NEW: web.RequestKey[str] = web.RequestKey("ivr_csrf_new", str)

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
    autoescape=jinja2.select_autoescape(["html", "xml"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class Auth:
    """Sign-in state of one web application (kept in ``webapp[AUTH_KEY]``)."""

    CACHE_SECONDS = 5.0

    def __init__(self, accounts: AccountStore, signer: Signer, *, session_ttl: float = SESSION_TTL,
                 secure_cookies: bool = False, address_limit: int = IP_MAX_FAILURES,
                 address_window: float = IP_WINDOW_SECONDS):
        self.accounts = accounts
        self.signer = signer
        self.session_ttl = session_ttl
        self.secure_cookies = secure_cookies
        self.addresses = AddressLimiter(address_limit, address_window)
        self._cache: dict[str, tuple[float, Account | None]] = {}

    # ---- sessions
    def session_token(self, account: Account) -> str:
        return self.signer.sign("session", {"a": account.id, "n": account.name, "r": account.role,
                                            "i": int(time.time()), "s": secrets.token_hex(8)}, ttl=self.session_ttl)

    async def account_for(self, request: web.Request) -> Account | None:
        """The signed-in account of ``request`` as the database has it now, or None."""
        if _ACCOUNT in request:
            return request[_ACCOUNT]
        try:
            body = self.signer.unsign("session", request.cookies.get(SESSION_COOKIE))
        except BadSignature:
            return None
        account_id = str(body.get("a", ""))
        cached = self._cache.get(account_id)
        if cached and cached[0] > time.monotonic():
            account = cached[1]
        else:
            account = await self.accounts.get_by_id(account_id)
            self._cache[account_id] = (time.monotonic() + self.CACHE_SECONDS, account)
        if account is None or account.disabled:
            return None
        request[_ACCOUNT] = account
        return account

    def forget(self, account_id: str) -> None:
        self._cache.pop(account_id, None)

    # ---- CSRF
    def csrf_for(self, seed: str) -> str:
        return self.signer.mac("csrf", seed)

    # ---- pages
    async def login_page(self, request: web.Request) -> web.Response:
        nxt = _safe_next(request.query.get("next"))
        account = await self.account_for(request)
        if account is not None and request.query.get("switch") != "1":
            raise web.HTTPFound(nxt or _home(account))
        return render(request, "login.html", {"next": nxt, "error": None, "name": ""})

    async def login_post(self, request: web.Request) -> web.Response:
        form = await _form(request)
        check_csrf(request, form.get(CSRF_FIELD))
        name = str(form.get("name", "")).strip()[:64]
        password = str(form.get("password", ""))[:1024]
        nxt = _safe_next(str(form.get("next", "")))
        address = client_address(request)
        wait = self.addresses.retry_after(address)
        if wait is not None:
            log.warning("sign-in refused: too many failures from %s (account %r)", address, _printable(name))
            resp = render(request, "login.html", {"next": nxt, "name": name,
                                                  "error": "Too many attempts. Try again later."}, status=429)
            resp.headers["Retry-After"] = str(int(wait))
            return resp
        try:
            account = await self.accounts.check_password(name, password)
        except LoginRefused as exc:
            self.addresses.fail(address)
            if exc.reason in ("locked", "locking"):
                log.warning("sign-in refused: account %r locked (%s) from %s", _printable(name), exc.reason, address)
            else:
                log.warning("sign-in failed for %r from %s (%s)", _printable(name), address, exc.reason)
            message = ("This account is locked for a while after too many failed attempts."
                       if exc.reason in ("locked", "locking") else "Wrong name or password.")
            return render(request, "login.html", {"next": nxt, "name": name, "error": message}, status=401)
        self.addresses.clear(address)
        self.forget(account.id)
        log.info("%s %r signed in from %s", account.role, account.name, address)
        resp = web.HTTPSeeOther(nxt or _home(account))
        resp.set_cookie(SESSION_COOKIE, self.session_token(account), max_age=int(self.session_ttl), httponly=True,
                        samesite="Lax", secure=self.secure_cookies or request.secure, path="/")
        # a new CSRF seed for the new session
        seed = secrets.token_urlsafe(24)
        resp.set_cookie(CSRF_COOKIE, seed, httponly=True, samesite="Lax",
                        secure=self.secure_cookies or request.secure, path="/")
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            form = await _form(request)
            check_csrf(request, form.get(CSRF_FIELD))
            account = await self.account_for(request)
            if account:
                log.info("%s %r signed out", account.role, account.name)
            resp = web.HTTPSeeOther("/login")
            resp.del_cookie(SESSION_COOKIE, path="/")
            resp.del_cookie(CSRF_COOKIE, path="/")
            raise resp
        return render(request, "logout.html", {"account": await self.account_for(request)})


def _home(account: Account) -> str:
    return "/desk"


def _safe_next(value: str | None) -> str | None:
    """Only local paths: no scheme, no host, no ``//`` (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    if any(ord(ch) < 32 for ch in value) or len(value) > 1000:
        return None
    return value


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:64]


#: What reading a client's body may raise: bad encodings and multipart (ValueError,
#: UnicodeDecodeError), JSON nested too deep (RecursionError), a body that does not
#: match its Content-Encoding (HttpProcessingError, RequestPayloadError).
BODY_ERRORS: tuple[type[BaseException], ...] = (ValueError, RecursionError, HttpProcessingError,
                                                RequestPayloadError)


def _bad_body(request: web.Request) -> web.HTTPBadRequest:
    if request.path.startswith("/api/") or request.content_type == "application/json":
        return web.HTTPBadRequest(text=json.dumps({"error": "malformed request body"}),
                                  content_type="application/json")
    return web.HTTPBadRequest(text="malformed request body")


async def read_post(request: web.Request) -> Any:
    """``await request.post()``, with a malformed body a 400 (never a traceback)."""
    try:
        return await request.post()
    except BODY_ERRORS:
        raise _bad_body(request) from None


async def read_json(request: web.Request) -> Any:
    """``await request.json()``, with a malformed body a 400 (never a traceback)."""
    try:
        return await request.json()
    except BODY_ERRORS:
        raise _bad_body(request) from None


async def _form(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        data = await read_json(request)
        if not isinstance(data, dict):
            raise _bad_body(request)
        return data
    return dict(await read_post(request))


def client_address(request: web.Request) -> str:
    """The peer address (a reverse proxy in front must pass the real one itself)."""
    return request.remote or "unknown"


def get_auth(request_or_app: web.Request | web.Application) -> Auth:
    app = request_or_app.app if isinstance(request_or_app, web.Request) else request_or_app
    try:
        return app[AUTH_KEY]
    except KeyError:
        raise RuntimeError("sign-in is not set up on this web application (ivr.auth.setup_auth)") from None


def current_account(request: web.Request) -> Account | None:
    """The account that :func:`require_role` admitted for this request, or None.

    Outside ``require_role`` it returns the account only if an earlier
    ``await get_auth(request).account_for(request)`` loaded it.
    """
    return request.get(_ACCOUNT)


def csrf_token(request: web.Request) -> str:
    """The CSRF token to put in this page's forms (field ``csrf_token``)."""
    seed = request.get(_CSRF_SEED) or request.cookies.get(CSRF_COOKIE)
    if not seed or len(seed) > 128:
        seed = secrets.token_urlsafe(24)
        request[_CSRF_NEW] = seed  # the middleware sets the cookie on the response
    request[_CSRF_SEED] = seed
    return get_auth(request).csrf_for(seed)


def check_csrf(request: web.Request, token: Any = None) -> None:
    """Raise 403 unless ``token`` (or the ``X-CSRF-Token`` header) matches this browser's seed."""
    if token is None:
        token = request.headers.get(CSRF_HEADER)
    seed = request.cookies.get(CSRF_COOKIE)
    if not seed or not isinstance(token, str) or not hmac.compare_digest(token, get_auth(request).csrf_for(seed)):
        log.warning("CSRF check failed for %s %s from %s", request.method, request.path, client_address(request))
        raise web.HTTPForbidden(text="invalid or missing CSRF token; reload the page and try again")


def _wants_html(request: web.Request) -> bool:
    if request.path.startswith("/api/") or request.headers.get("Upgrade", "").lower() == "websocket":
        return False
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("Accept", "")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_role(*roles: str) -> Callable[[Handler], Handler]:
    """Admit only signed-in accounts with one of ``roles`` (any role when none given).

    HTML pages (GET asking for ``text/html``) send strangers to
    ``/login?next=<this page>`` and show a 403 page to the wrong role; API and
    WebSocket requests get JSON 401 / 403.
    """
    for role in roles:
        validate_role(role)
    allowed = frozenset(roles or ROLES)

    def deco(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            account = await get_auth(request).account_for(request)
            if account is None:
                if _wants_html(request):
                    raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='/')}")
                raise web.HTTPUnauthorized(text=json.dumps({"error": "sign in first"}),
                                           content_type="application/json")
            if account.role not in allowed:
                log.warning("%s %r refused %s %s (needs %s)", account.role, account.name, request.method,
                            request.path, "/".join(sorted(allowed)))
                if _wants_html(request):
                    return render(request, "forbidden.html", {"account": account}, status=403)
                raise web.HTTPForbidden(text=json.dumps({"error": "not allowed for your role"}),
                                        content_type="application/json")
            return await handler(request)

        return wrapper

    return deco


def render(request: web.Request, template: str, context: dict[str, Any], *, status: int = 200,
           env: jinja2.Environment | None = None) -> web.Response:
    """Render a Jinja2 template (autoescaped) with ``csrf_token`` and ``account`` available."""
    ctx = {"csrf_token": csrf_token(request), "account": current_account(request), **context}
    html = (env or _TEMPLATES).get_template(template).render(ctx)
    resp = web.Response(text=html, content_type="text/html", status=status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        resp = exc
        _finish(request, resp)
        raise
    _finish(request, resp)
    return resp


def _finish(request: web.Request, resp: web.StreamResponse) -> None:
    payload = request.content
    if payload.exception() is not None and not payload.is_eof():
        # aiohttp gave up on this body (it does not match its Content-Encoding or
        # chunking): nothing more comes for it. Ended here, and the connection
        # closed after the answer, aiohttp does not try to read it again later
        # (an "Unhandled exception" with a traceback in the log).
        payload.feed_eof()
        resp.force_close()
    new = request.get(_CSRF_NEW)
    if new and not resp.prepared:
        auth = request.app.get(AUTH_KEY)
        resp.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="Lax",
                        secure=bool(auth and auth.secure_cookies) or request.secure, path="/")
    if resp.content_type == "text/html" and not resp.prepared:
        for key, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(key, value)


def setup_auth(webapp: web.Application, engine: AsyncEngine, secret: bytes, *, secure_cookies: bool = False,
               max_failures: int = ACCOUNT_MAX_FAILURES, lock_seconds: float = ACCOUNT_LOCK_SECONDS,
               address_limit: int = IP_MAX_FAILURES, address_window: float = IP_WINDOW_SECONDS) -> Auth:
    """Add ``/login``, ``/logout`` and the CSRF/security-header middleware to ``webapp``."""
    if AUTH_KEY in webapp:
        return webapp[AUTH_KEY]
    auth = Auth(AccountStore(engine, max_failures=max_failures, lock_seconds=lock_seconds), Signer(secret),
                secure_cookies=secure_cookies, address_limit=address_limit, address_window=address_window)
    webapp[AUTH_KEY] = auth
    webapp.middlewares.append(_auth_middleware)
    webapp.router.add_get("/login", auth.login_page)
    webapp.router.add_post("/login", auth.login_post)
    webapp.router.add_get("/logout", auth.logout)
    webapp.router.add_post("/logout", auth.logout)
    return auth


async def _extension(app: Any) -> None:
    """Server extension: sign-in on the server's web app, with the configured secret."""
    config = app.config
    secret = load_secret(config.secret_key)
    secure = bool(config.public_url and config.public_url.startswith("https:"))
    setup_auth(app.web, app.store.engine, secret, secure_cookies=secure,
               max_failures=config.login_max_failures, lock_seconds=config.login_lock_seconds,
               address_limit=config.login_address_failures, address_window=config.login_address_window)


def _register() -> None:
    from ivr import server

    if _extension not in server.EXTENSIONS:
        # first, so features added later can rely on sign-in being there
        server.EXTENSIONS.insert(0, _extension)


_register()
