"""saga_signal: signals for sagas' wait steps, kept until the wait takes them

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "saga_signal",
        sa.Column("saga_id", sa.String(128), sa.ForeignKey("saga.id", ondelete="CASCADE")),
        sa.Column("signal_id", sa.String(128)),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("data", JSON, nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("saga_id", "signal_id"),
    )
    op.create_index("ix_saga_signal_pending", "saga_signal", ["saga_id", "name", "consumed_at"])


def downgrade() -> None:
    op.drop_index("ix_saga_signal_pending", table_name="saga_signal")
    op.drop_table("saga_signal")
