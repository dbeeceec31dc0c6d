"""Tables of the agent handoff feature: desk accounts, screen-pop offers and
callback requests. Declared on the trail store's ``Base`` so the migration
check (models equal to the head migrations) covers them too.

Created by the migrations ``0002_handoff`` (accounts) and
``0003_handoff_callbacks`` (offers, callbacks).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import ID_LEN, LANGUAGE_LEN, NUMBER_LEN, Base, BigIntId, JSONType

NAME_LEN = 64
ROLE_LEN = 16
INTERFACE_LEN = 128
QUEUE_LEN = 128
STATUS_LEN = 16


class Account(Base):
    """A person who signs in to the agent desk or the ops dashboard.

    ``password_hash`` is a self-describing scrypt hash (see :mod:`ivr.auth`).
    ``failed_logins`` and ``locked_until`` carry the per-account lock-out, so it
    holds across every server sharing the database.
    """

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(ROLE_LEN))
    interface: Mapped[str | None] = mapped_column(String(INTERFACE_LEN))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_accounts_name", "name", unique=True),)


accounts_table = cast(Table, Account.__table__)
