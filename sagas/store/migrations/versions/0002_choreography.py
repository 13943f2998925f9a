"""choreography: saga.kind, the handled-event ledger and orphaned events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("saga") as batch:
        batch.add_column(
            sa.Column(
                "kind",
                sa.String(length=16),
                server_default=sa.text("'orchestrated'"),
                nullable=False,
            )
        )
    op.create_table(
        "saga_handled",
        sa.Column("saga_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.ForeignKeyConstraint(["saga_id"], ["saga.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("saga_id", "key"),
    )
    op.create_table(
        "saga_orphan_event",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("service", sa.String(length=128), nullable=False),
        sa.Column("saga_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("event_id", "service"),
    )


def downgrade() -> None:
    op.drop_table("saga_orphan_event")
    op.drop_table("saga_handled")
    with op.batch_alter_table("saga") as batch:
        batch.drop_column("kind")
