"""Agent handoff: screen-pop offers and callback requests.

Revision ID: 0003_handoff_callbacks
Revises: 0002_handoff
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_handoff_callbacks"
down_revision: str | None = "0002_handoff"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # who answered the call and when (the latest person, from AMI AgentConnect / BridgeEnter)
    op.add_column("sessions", sa.Column("agent", sa.String(128), nullable=True))
    op.add_column("sessions", sa.Column("agent_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "desk_offers",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("interface", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(128), nullable=True),
        sa.Column("agent", sa.String(128), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name="fk_desk_offers_session_id_sessions",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_desk_offers"),
    )
    op.create_index("ix_desk_offers_interface_at", "desk_offers", ["interface", "at"])
    op.create_index("ix_desk_offers_session_id", "desk_offers", ["session_id"])

    op.create_table(
        "callbacks",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("number", sa.String(64), nullable=False),
        sa.Column("open_number", sa.String(64), nullable=True),
        sa.Column("queue", sa.String(128), nullable=False),
        sa.Column("language", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("asap", sa.Boolean(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("retry_interval", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_outcome", sa.String(32), nullable=True),
        sa.Column("last_reason", sa.Text(), nullable=True),
        sa.Column("agent_interface", sa.String(128), nullable=True),
        sa.Column("call_uniqueid", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_by", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"], name="fk_callbacks_session_id_sessions",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_callbacks"),
    )
    op.create_index("ix_callbacks_open_number", "callbacks", ["open_number"], unique=True)
    op.create_index("ix_callbacks_status_due_at", "callbacks", ["status", "due_at"])
    op.create_index("ix_callbacks_session_id", "callbacks", ["session_id"])
    op.create_index("ix_callbacks_call_uniqueid", "callbacks", ["call_uniqueid"])


def downgrade() -> None:
    op.drop_index("ix_callbacks_call_uniqueid", table_name="callbacks")
    op.drop_index("ix_callbacks_session_id", table_name="callbacks")
    op.drop_index("ix_callbacks_status_due_at", table_name="callbacks")
    op.drop_index("ix_callbacks_open_number", table_name="callbacks")
    op.drop_table("callbacks")
    op.drop_index("ix_desk_offers_session_id", table_name="desk_offers")
    op.drop_index("ix_desk_offers_interface_at", table_name="desk_offers")
    op.drop_table("desk_offers")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("agent_at")
        batch.drop_column("agent")
