"""Links texted to callers: ``<public_url>/v/<token>``.

A token is 18 random bytes (144 bits) followed by a 9-byte HMAC-SHA256 tag
under the server's secret, base64url: 36 characters. A tampered or made-up
token fails the tag check before any database read; a real one is looked up by
its SHA-256 (the token itself is never stored). A link belongs to one session,
expires (``visual_link_ttl`` after it was sent, then sliding while it is used)
and is bound to the first browser that opens it (the hash of that browser's
device cookie is kept); another browser gets a page that says so.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from ivr.store.engine import WRITE_OPTION
from visual_ivr.models import links_table as LINKS

RANDOM_BYTES = 18
TAG_BYTES = 9
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{36}$")
DEVICE_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_secret(config: Any) -> bytes:
    """``secret_key`` from the settings, else one generated once and kept in a
    file beside the SQLite database (or ``var/secret_key``)."""
    if config.secret_key:
        return config.secret_key.encode()
    url = str(config.database_url)
    folder = Path(url.split(":///", 1)[1]).parent if url.startswith("sqlite") and ":///" in url else Path("var")
    path = folder / "secret_key"
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(32).encode()
        path.touch(mode=0o600)
        path.write_bytes(key)
        return key


@dataclass(frozen=True)
class Link:
    id: str
    session_id: str
    kind: str
    node: str
    language: str | None
    created_at: datetime
    expires_at: datetime
    opened_at: datetime | None
    device_hash: str | None
    ended_at: datetime | None
    end_reason: str | None
    created_by: str | None
    to_masked: str | None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "device_hash"}
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.isoformat()
        return out


@dataclass(frozen=True)
class Redeemed:
    """``status``: ok, bad (malformed or tampered), unknown, expired, ended, other_device."""

    status: str
    link: Link | None = None
    first_open: bool = False


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class LinkStore:
    def __init__(self, engine: Any, secret: bytes, *, ttl: float = 900):
        self.engine = engine
        self._wengine = engine.execution_options(**{WRITE_OPTION: True})
        self.secret = secret
        self.ttl = ttl

    # ---- tokens
    def _tag(self, random_part: bytes) -> bytes:
        return hmac.new(self.secret, b"visual-link|" + random_part, hashlib.sha256).digest()[:TAG_BYTES]

    def new_token(self) -> str:
        raw = secrets.token_bytes(RANDOM_BYTES)
        return _b64(raw + self._tag(raw))

    def well_formed(self, token: str) -> bool:
        """Format and signature: False for anything this server did not make."""
        if not TOKEN_RE.match(token or ""):
            return False
        data = _unb64(token)
        return len(data) == RANDOM_BYTES + TAG_BYTES and hmac.compare_digest(
            data[RANDOM_BYTES:], self._tag(data[:RANDOM_BYTES]))

    def csrf_token(self, link_id: str, device: str) -> str:
        return hmac.new(self.secret, f"csrf|{link_id}|{device}".encode(), hashlib.sha256).hexdigest()[:40]

    def check_csrf(self, link_id: str, device: str, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(self.csrf_token(link_id, device), str(value))

    @staticmethod
    def new_device() -> str:
        return secrets.token_urlsafe(32)

    # ---- rows
    async def issue(self, session_id: str, *, kind: str, node: str, language: str | None,
                    to_masked: str | None = None, created_by: str | None = None,
                    ttl: float | None = None) -> tuple[str, Link]:
        token = self.new_token()
        now = datetime.now(UTC)
        values = {
            "id": uuid.uuid4().hex, "token_hash": sha256(token), "session_id": session_id, "kind": kind,
            "node": node, "language": language, "to_masked": to_masked, "created_by": created_by,
            "created_at": now, "expires_at": now + timedelta(seconds=ttl or self.ttl),
        }
        async with self._wengine.begin() as conn:
            await conn.execute(insert(LINKS).values(**values))
        return token, self._link({**values, "opened_at": None, "device_hash": None, "ended_at": None,
                                  "end_reason": None})

    @staticmethod
    def _link(row: Any) -> Link:
        r = dict(row)
        return Link(r["id"], r["session_id"], r["kind"], r["node"], r["language"], _utc(r["created_at"]),
                    _utc(r["expires_at"]), _utc(r["opened_at"]), r["device_hash"], _utc(r["ended_at"]),
                    r["end_reason"], r["created_by"], r["to_masked"])

    async def redeem(self, token: str, device: str | None) -> Redeemed:
        """Check a token for a browser (``device``: its cookie value, None if it has none yet)."""
        if not self.well_formed(token):
            return Redeemed("bad")
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(LINKS).where(LINKS.c.token_hash == sha256(token)))).mappings().first()
        if row is None:
            return Redeemed("unknown")
        link = self._link(row)
        now = datetime.now(UTC)
        device_hash = sha256(device) if device else None
        if link.device_hash is not None and link.device_hash != device_hash:
            return Redeemed("other_device", link)
        if link.ended_at is not None:
            return Redeemed("ended", link)
        if link.expires_at <= now:
            return Redeemed("expired", link)
        if link.device_hash is None:
            if device_hash is None:
                raise ValueError("a first open needs the browser's device id")
            async with self._wengine.begin() as conn:
                result = await conn.execute(
                    update(LINKS).where(LINKS.c.id == link.id, LINKS.c.device_hash.is_(None))
                    .values(device_hash=device_hash, opened_at=now))
            if result.rowcount != 1:  # another browser won the race
                return Redeemed("other_device", link)
            return Redeemed("ok", self._link({**dict(row), "device_hash": device_hash, "opened_at": now}),
                            first_open=True)
        return Redeemed("ok", link)

    async def touch(self, link_id: str) -> None:
        """Slide the expiry while the caller uses the page."""
        async with self._wengine.begin() as conn:
            await conn.execute(update(LINKS).where(LINKS.c.id == link_id)
                               .values(expires_at=datetime.now(UTC) + timedelta(seconds=self.ttl)))

    async def end(self, link_id: str, reason: str) -> None:
        async with self._wengine.begin() as conn:
            await conn.execute(update(LINKS).where(LINKS.c.id == link_id, LINKS.c.ended_at.is_(None))
                               .values(ended_at=datetime.now(UTC), end_reason=reason[:32]))

    async def for_session(self, session_id: str) -> list[Link]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(LINKS).where(LINKS.c.session_id == session_id)
                                       .order_by(LINKS.c.created_at))).mappings().all()
        return [self._link(r) for r in rows]
