"""saga tables: saga, saga_step, saga_event

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "saga",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("correlation_id", sa.String(length=128), nullable=False),
        sa.Column("failure", JSON, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("deadline_at", TS, nullable=True),
        sa.Column("wake_at", TS, nullable=True),
        sa.Column("outbox", JSON, nullable=True),
        sa.Column("outbox_at", TS, nullable=True),
        sa.Column("parked", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("lock_version", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_saga_correlation_id", "saga", ["correlation_id"])
    op.create_index("ix_saga_name_created", "saga", ["name", "created_at"])
    op.create_index("ix_saga_outbox_at", "saga", ["outbox_at"])
    op.create_index("ix_saga_state_updated", "saga", ["state", "updated_at"])
    op.create_index("ix_saga_wake_at", "saga", ["wake_at"])

    op.create_table(
        "saga_step",
        sa.Column("saga_id", sa.String(length=128), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("compensation_attempt", sa.Integer(), nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("deadline_at", TS, nullable=True),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["saga_id"], ["saga.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("saga_id", "idx"),
    )

    op.create_table(
        "saga_event",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("saga_id", sa.String(length=128), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=64), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["saga_id"], ["saga.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_saga_event_saga_id", "saga_event", ["saga_id", "id"])


def downgrade() -> None:
    op.drop_table("saga_event")
    op.drop_table("saga_step")
    op.drop_table("saga")
