"""Tables of the trail store: one row per session, one row per trail event.

The same declarations run on SQLite (the laptop default) and PostgreSQL (several
servers sharing one database). JSON columns are ``JSON`` on SQLite and ``JSONB``
on PostgreSQL; timestamps are always timezone-aware UTC (SQLite stores them
without an offset, the store reads them back as UTC).

The schema itself is created by the migrations in ``ivr/store/migrations``;
these models must stay equal to the head migration (a test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Column lengths; the store clips values to them before writing.
ID_LEN = 64  # uuid4 hex ids are 32; room for ids made elsewhere
FLOW_ID_LEN = 128
FLOW_VERSION_LEN = 64
CHANNEL_LEN = 32
NUMBER_LEN = 64
UNIQUEID_LEN = 64
LANGUAGE_LEN = 16
OUTCOME_LEN = 32
NODE_LEN = 128
KIND_LEN = 64

#: Plain JSON on SQLite, JSONB on PostgreSQL. Python ``None`` is stored as SQL NULL.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

#: 64-bit ids on PostgreSQL; ``INTEGER PRIMARY KEY`` (the rowid) on SQLite.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Session(Base):
    """One contact: from the first turn on any face to its end.

    ``outcome`` is NULL while the session is live. ``state`` is the latest engine
    state (used to continue on another face); ``variables`` holds non-masked
    variables only; ``reason`` says why the caller came to a person.
    """

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    flow_id: Mapped[str] = mapped_column(String(FLOW_ID_LEN))
    flow_version: Mapped[str] = mapped_column(String(FLOW_VERSION_LEN))
    channel: Mapped[str] = mapped_column(String(CHANNEL_LEN))
    caller: Mapped[str | None] = mapped_column(String(NUMBER_LEN))
    dialed: Mapped[str | None] = mapped_column(String(NUMBER_LEN))
    uniqueid: Mapped[str | None] = mapped_column(String(UNIQUEID_LEN))
    language: Mapped[str | None] = mapped_column(String(LANGUAGE_LEN))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(OUTCOME_LEN))
    end_node: Mapped[str | None] = mapped_column(String(NODE_LEN))
    summary: Mapped[str | None] = mapped_column(Text)
    state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    variables: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    reason: Mapped[str | None] = mapped_column(Text)
    # who answered and when (agent handoff, migration 0003_handoff_callbacks)
    agent: Mapped[str | None] = mapped_column(String(128))
    agent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_sessions_caller", "caller"),
        Index("ix_sessions_flow_id_started_at", "flow_id", "started_at"),
        Index("ix_sessions_started_at", "started_at"),
    )


class TrailEvent(Base):
    """One trail entry. ``seq`` orders a session's events (1, 2, 3 ...).

    The unique index on ``(session_id, seq)`` is also the index that serves the
    foreign key and every "events of this session, in order" read.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(ID_LEN), ForeignKey("sessions.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    channel: Mapped[str] = mapped_column(String(CHANNEL_LEN))
    kind: Mapped[str] = mapped_column(String(KIND_LEN))
    node: Mapped[str | None] = mapped_column(String(NODE_LEN))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)

    __table_args__ = (
        Index("ix_events_session_id_seq", "session_id", "seq", unique=True),
        # rare kinds (transfer, callback_*, survey, sms ...) for the ops analytics (migration 0002_ops)
        Index("ix_events_kind_session_id", "kind", "session_id"),
    )


sessions_table = cast(Table, Session.__table__)
events_table = cast(Table, TrailEvent.__table__)


# Feature tables declared on the same Base (kept in modules of their own).
from . import models_handoff  # noqa: E402,F401
