"""Tables of the agent handoff feature: desk accounts, screen-pop offers and
callback requests. Declared on the trail store's ``Base`` so the migration
check (models equal to the head migrations) covers them too.

Created by the migrations ``0002_handoff`` (accounts) and
``0003_handoff_callbacks`` (offers, callbacks).
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import CHANNEL_LEN, ID_LEN, LANGUAGE_LEN, NUMBER_LEN, Base, BigIntId

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


class DeskOffer(Base):
    """A session put in front of a person: ``kind`` ``connect`` (the call
    reached their interface) or ``callback`` (a callback dialled for them).

    The desk shows an agent only the sessions offered to their interface.
    """

    __tablename__ = "desk_offers"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(ID_LEN), ForeignKey("sessions.id", ondelete="CASCADE"))
    interface: Mapped[str] = mapped_column(String(INTERFACE_LEN))
    kind: Mapped[str] = mapped_column(String(STATUS_LEN))
    queue: Mapped[str | None] = mapped_column(String(QUEUE_LEN))
    agent: Mapped[str | None] = mapped_column(String(INTERFACE_LEN))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_desk_offers_interface_at", "interface", "at"),
        Index("ix_desk_offers_session_id", "session_id"),
    )


class Callback(Base):
    """A callback request, stored with the session it came from.

    ``open_number`` equals ``number`` while the request is open (pending or
    dialling) and is NULL once closed: its unique index keeps one open request
    per number. ``status``: pending, dialling, done, failed, cancelled.
    ``claimed_by``/``lease_until``: the scheduler dialling it and until when its
    claim holds; a claim whose lease ran out is picked up again.
    """

    __tablename__ = "callbacks"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(ID_LEN), ForeignKey("sessions.id", ondelete="CASCADE"))
    number: Mapped[str] = mapped_column(String(NUMBER_LEN))
    open_number: Mapped[str | None] = mapped_column(String(NUMBER_LEN))
    queue: Mapped[str] = mapped_column(String(QUEUE_LEN))
    language: Mapped[str | None] = mapped_column(String(LANGUAGE_LEN))
    reason: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(CHANNEL_LEN))
    mode: Mapped[str] = mapped_column(String(STATUS_LEN))
    priority: Mapped[int] = mapped_column(Integer)
    asap: Mapped[bool] = mapped_column(Boolean)
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(STATUS_LEN))
    attempts: Mapped[int] = mapped_column(Integer)
    max_attempts: Mapped[int] = mapped_column(Integer)
    retry_interval: Mapped[int] = mapped_column(Integer)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    last_reason: Mapped[str | None] = mapped_column(Text)
    agent_interface: Mapped[str | None] = mapped_column(String(INTERFACE_LEN))
    call_uniqueid: Mapped[str | None] = mapped_column(String(64))  # Asterisk uniqueid of the last call placed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_by: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_callbacks_open_number", "open_number", unique=True),
        Index("ix_callbacks_status_due_at", "status", "due_at"),
        Index("ix_callbacks_session_id", "session_id"),
        Index("ix_callbacks_call_uniqueid", "call_uniqueid"),
    )


offers_table = cast(Table, DeskOffer.__table__)
callbacks_table = cast(Table, Callback.__table__)
