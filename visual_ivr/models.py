"""Tables of the visual IVR: issued links and text messages (the outbox).

They live on the trail store's metadata (``ivr.store.models.Base``) so the
store's migrations and model checks see one schema; the migration is
``ivr/store/migrations/versions/0003_visual.py`` (a branch from ``0001``).
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import DateTime, ForeignKey, Index, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from ivr.store.models import ID_LEN, NODE_LEN, Base, BigIntId


class VisualLink(Base):
    """One link texted to a caller. Only the SHA-256 of the token is kept;
    ``device_hash`` binds the link to the first browser that opened it."""

    __tablename__ = "visual_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(ID_LEN), ForeignKey("sessions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    node: Mapped[str] = mapped_column(String(NODE_LEN))
    language: Mapped[str | None] = mapped_column(String(16))
    to_masked: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    device_hash: Mapped[str | None] = mapped_column(String(64))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        Index("ix_visual_links_token_hash", "token_hash", unique=True),
        Index("ix_visual_links_session_id", "session_id"),
    )


class SmsMessage(Base):
    """Every text message asked for: sent, refused by the limits, or failed.

    With the ``outbox`` gateway this table is where messages "go" (the demo
    needs no provider); with the others it is the log the limits count on.
    """

    __tablename__ = "sms_messages"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    session_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    link_id: Mapped[str | None] = mapped_column(String(32))
    to_number: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    gateway: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    provider_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_sms_messages_to_number_created_at", "to_number", "created_at"),
        Index("ix_sms_messages_session_id", "session_id"),
        Index("ix_sms_messages_created_at", "created_at"),
    )


links_table = cast(Table, VisualLink.__table__)
sms_table = cast(Table, SmsMessage.__table__)
