"""Desk accounts and sign-in: hashing, the CLI, cookies, roles, CSRF, lock-outs."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer

from ivr import auth
from ivr.auth import (
    AccountError,
    AccountStore,
    Signer,
    BadSignature,
    check_csrf,
    csrf_token,
    current_account,
    hash_password,
    load_secret,
    require_role,
    setup_auth,
    validate_interface,
    verify_password,
)
from ivr.store import make_engine, migrate

ROOT = Path(__file__).resolve().parents[1]


def test_password_hash_is_salted_scrypt() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$")
    assert verify_password("correct horse", a) and verify_password("correct horse", b)
    assert not verify_password("correct hors", a)
    assert not verify_password("x", "not-a-hash") and not verify_password("x", None)
    with pytest.raises(AccountError):
        hash_password("")


@pytest.mark.parametrize("iface", ["PJSIP/1001", "Local/agent1@ivr-agents", "SIP/alice", "IAX2/peer-2"])
def test_interfaces_accepted(iface: str) -> None:
    assert validate_interface(iface) == iface


@pytest.mark.parametrize("iface", ["", "1001", "PJSIP/", "PJSIP/1001,t", "PJSIP/1001\nAction: x", "Local/a b"])
def test_interfaces_refused(iface: str) -> None:
    with pytest.raises(AccountError):
        validate_interface(iface)


def test_signer_refuses_forgery_other_purpose_and_expiry() -> None:
    signer = Signer(b"k" * 32)
    token = signer.sign("session", {"a": "1"}, ttl=60)
    assert signer.unsign("session", token)["a"] == "1"
    with pytest.raises(BadSignature):
        signer.unsign("desk", token)
    raw, mac = token.split(".")
    forged = raw[:-2] + ("A" if raw[-2] != "A" else "B") + raw[-1] + "." + mac
    with pytest.raises(BadSignature):
        signer.unsign("session", forged)
    with pytest.raises(BadSignature):
        Signer(b"o" * 32).unsign("session", token)
    with pytest.raises(BadSignature):
        signer.unsign("session", signer.sign("session", {"a": "1"}, ttl=-1))
    for junk in (None, "", "a.b.c", "x" * 9000, "abc.def"):
        with pytest.raises(BadSignature):
            signer.unsign("session", junk)


def test_secret_generated_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "var" / "secret_key"
    first = load_secret(None, path)
    assert len(first) >= 32 and load_secret(None, path) == first
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_secret("a-configured-secret-value", path) == b"a-configured-secret-value"
    with pytest.raises(ValueError):
        load_secret("short", path)


def _cli(args: list[str], stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ivr.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_agents_add_reads_password_from_stdin(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    done = _cli(["agents", "--database-url", db, "add", "alice", "--interface", "PJSIP/1001"], "s3cret-pass\n")
    assert done.returncode == 0, done.stderr
    assert "agent alice (PJSIP/1001) saved" in done.stdout
    done = _cli(["agents", "--database-url", db, "add", "sam", "--role", "supervisor"], "another-pass\n")
    assert done.returncode == 0, done.stderr
    # exists already: a clear error, exit 2 (bad interfaces and passwords: the same path, below)
    again = _cli(["agents", "--database-url", db, "add", "alice", "--interface", "PJSIP/1001"], "s3cret-pass\n")
    assert again.returncode == 2 and "exists already" in again.stderr
    listed = _cli(["agents", "--database-url", db, "list"], "")
    assert listed.returncode == 0
    assert "alice\tagent\tPJSIP/1001" in listed.stdout and "sam\tsupervisor\t-" in listed.stdout

    import asyncio

    async def check() -> None:
        engine = make_engine(db)
        try:
            accounts = AccountStore(engine)
            account = await accounts.check_password("alice", "s3cret-pass")
            assert account.interface == "PJSIP/1001" and account.role == "agent"
            with pytest.raises(AccountError, match="at least 8"):
                await accounts.create("carol", "short", interface="PJSIP/3")
            with pytest.raises(AccountError, match="needs an interface"):
                await accounts.create("carol", "long-enough", role="agent")
            with pytest.raises(AccountError, match="role must be"):
                await accounts.create("carol", "long-enough", role="admin")
        finally:
            await engine.dispose()

    asyncio.run(check())


# --------------------------------------------------------------------- web


@pytest.fixture
async def site(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'auth.db'}")
    await migrate(engine)
    webapp = web.Application()
    setup_auth(webapp, engine, b"test-secret-" * 4)

    @require_role("agent", "supervisor")
    async def desk(request: web.Request) -> web.Response:
        account = current_account(request)
        return web.Response(text=f"desk of {account.name} {csrf_token(request)}", content_type="text/html")

    @require_role("supervisor")
    async def api_all(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    @require_role("agent", "supervisor")
    async def post_note(request: web.Request) -> web.Response:
        form = await request.post()
        check_csrf(request, form.get("csrf_token"))
        return web.json_response({"saved": form.get("note")})

    webapp.router.add_get("/desk", desk)
    webapp.router.add_get("/api/all", api_all)
    webapp.router.add_get("/ops", api_all)
    webapp.router.add_post("/api/note", post_note)
    accounts = webapp[auth.AUTH_KEY].accounts
    await accounts.create("alice", "alice-pass-1", interface="PJSIP/1001")
    await accounts.create("sam", "sam-pass-12", role="supervisor")
    server = TestServer(webapp)
    await server.start_server()
    try:
        yield server, webapp[auth.AUTH_KEY]
    finally:
        await server.close()
        await engine.dispose()


def _client(**kw) -> aiohttp.ClientSession:
    # cookies from a bare IP address are dropped unless the jar is "unsafe"
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kw)


def _token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


async def _login(session: aiohttp.ClientSession, base: str, name: str, password: str, nxt: str = ""):
    async with session.get(f"{base}/login" + (f"?next={nxt}" if nxt else "")) as resp:
        token = _token(await resp.text())
    data = {"name": name, "password": password, "csrf_token": token}
    if nxt:
        data["next"] = nxt
    return await session.post(f"{base}/login", data=data, allow_redirects=False)


async def test_sign_in_roles_and_redirects(site) -> None:
    server, _ = site
    base = str(server.make_url("")).rstrip("/")
    async with _client() as s:
        # a stranger's browser is sent to sign in, an API client gets 401
        async with s.get(f"{base}/desk?x=1", headers={"Accept": "text/html"}, allow_redirects=False) as r:
            location = yarl.URL(r.headers["Location"])
            assert r.status == 302 and location.path == "/login" and location.query["next"] == "/desk?x=1"
        async with s.get(f"{base}/api/all") as r:
            assert r.status == 401 and (await r.json())["error"]
        resp = await _login(s, base, "alice", "alice-pass-1", "/desk")
        assert resp.status == 303 and resp.headers["Location"] == "/desk"
        cookie = resp.cookies["ivr_auth"]
        assert cookie["httponly"] and cookie["samesite"] == "Lax"
        async with s.get(f"{base}/desk") as r:
            assert r.status == 200 and "desk of alice" in await r.text()
        async with s.get(f"{base}/api/all") as r:  # an agent is not a supervisor
            assert r.status == 403
        async with s.get(f"{base}/ops", headers={"Accept": "text/html"}) as r:
            assert r.status == 403 and "Not allowed" in await r.text()
    async with _client() as s:
        resp = await _login(s, base, "sam", "sam-pass-12")
        assert resp.status == 303 and resp.headers["Location"] == "/desk"
        async with s.get(f"{base}/api/all") as r:
            assert r.status == 200


async def test_open_redirect_refused(site) -> None:
    server, _ = site
    base = str(server.make_url("")).rstrip("/")
    async with _client() as s:
        resp = await _login(s, base, "alice", "alice-pass-1", "//evil.example/x")
        assert resp.status == 303 and resp.headers["Location"] == "/desk"


async def test_csrf_required_on_every_post(site) -> None:
    server, _ = site
    base = str(server.make_url("")).rstrip("/")
    async with _client() as s:
        async with s.post(f"{base}/login", data={"name": "alice", "password": "alice-pass-1"},
                          allow_redirects=False) as r:
            assert r.status == 403
        resp = await _login(s, base, "alice", "alice-pass-1")
        assert resp.status == 303
        async with s.get(f"{base}/desk") as r:
            token = (await r.text()).split()[-1]
        async with s.post(f"{base}/api/note", data={"note": "hi"}) as r:
            assert r.status == 403
        async with s.post(f"{base}/api/note", data={"note": "hi", "csrf_token": "forged"}) as r:
            assert r.status == 403
        async with s.post(f"{base}/api/note", data={"note": "hi", "csrf_token": token}) as r:
            assert r.status == 200 and (await r.json())["saved"] == "hi"
        async with s.post(f"{base}/api/note", data={"note": "hi"}, headers={"X-CSRF-Token": token}) as r:
            assert r.status == 200
    # another browser (another CSRF cookie) cannot replay the token
    async with _client() as other:
        resp = await _login(other, base, "alice", "alice-pass-1")
        async with other.post(f"{base}/api/note", data={"note": "x", "csrf_token": token}) as r:
            assert r.status == 403


async def test_forged_cookie_and_disabled_account(site) -> None:
    server, state = site
    base = str(server.make_url("")).rstrip("/")
    forged = Signer(b"another-secret-at-all").sign("session", {"a": "x", "r": "supervisor"}, ttl=60)
    async with _client(cookies={"ivr_auth": forged}) as s:
        async with s.get(f"{base}/api/all") as r:
            assert r.status == 401
    async with _client() as s:
        await _login(s, base, "alice", "alice-pass-1")
        async with s.get(f"{base}/desk") as r:
            assert r.status == 200
        await state.accounts.set_disabled("alice")
        state.forget((await state.accounts.get("alice")).id)
        async with s.get(f"{base}/desk", headers={"Accept": "text/html"}, allow_redirects=False) as r:
            assert r.status == 302


async def test_account_lockout_and_address_limit(site, caplog) -> None:
    server, state = site
    base = str(server.make_url("")).rstrip("/")
    caplog.set_level(logging.WARNING, logger="ivr.auth")
    async with _client() as s:
        for _ in range(auth.ACCOUNT_MAX_FAILURES):
            resp = await _login(s, base, "alice", "wrong-password")
            assert resp.status == 401
        # locked: even the right password is refused for now
        resp = await _login(s, base, "alice", "alice-pass-1")
        assert resp.status == 401 and "locked" in await resp.text()
        assert any("locked" in r.getMessage() for r in caplog.records)
        # sam is not affected by alice's lock
        resp = await _login(s, base, "sam", "sam-pass-12")
        assert resp.status == 303
    # the per-address limit: a lower limit keeps the test short
    state.addresses.limit = 3
    state.addresses.clear("127.0.0.1")
    async with _client() as s:
        for i in range(3):
            resp = await _login(s, base, f"nobody{i}", "whatever-pw")
            assert resp.status == 401
        resp = await _login(s, base, "sam", "sam-pass-12")
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert any("too many failures from 127.0.0.1" in r.getMessage() for r in caplog.records)


async def test_logout_needs_csrf_and_clears_cookie(site) -> None:
    server, _ = site
    base = str(server.make_url("")).rstrip("/")
    async with _client() as s:
        await _login(s, base, "alice", "alice-pass-1")
        async with s.get(f"{base}/logout") as r:
            token = _token(await r.text())
        async with s.post(f"{base}/logout", data={}, allow_redirects=False) as r:
            assert r.status == 403
        async with s.post(f"{base}/logout", data={"csrf_token": token}, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(f"{base}/desk", headers={"Accept": "text/html"}, allow_redirects=False) as r:
            assert r.status == 302


async def test_server_has_sign_in(server) -> None:
    """``ivr serve`` mounts /login (the auth extension is on by default)."""
    base = f"http://127.0.0.1:{server.config.http_port}"
    async with _client() as s:
        async with s.get(f"{base}/login") as r:
            assert r.status == 200 and 'name="csrf_token"' in await r.text()
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
