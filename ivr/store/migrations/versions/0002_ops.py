"""Operations analytics: find rare trail events (transfers, callbacks, surveys,
SMS, agent connections) without reading every event of the range.

Revision ID: 0002_ops
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_ops"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_events_kind_session_id", "events", ["kind", "session_id"])


def downgrade() -> None:
    op.drop_index("ix_events_kind_session_id", table_name="events")
