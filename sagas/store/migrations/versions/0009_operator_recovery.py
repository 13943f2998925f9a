"""saga.paused_at and saga.forked_from: operator pause/resume and forks linked to their original

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Both nullable with no default: sagas in flight read as not paused and not forked, and
    # adding them rewrites no row on PostgreSQL.
    with op.batch_alter_table("saga") as batch:
        batch.add_column(sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("forked_from", sa.String(128), nullable=True))
    op.create_index("ix_saga_forked_from", "saga", ["forked_from"])


def downgrade() -> None:
    op.drop_index("ix_saga_forked_from", table_name="saga")
    with op.batch_alter_table("saga") as batch:
        batch.drop_column("forked_from")
        batch.drop_column("paused_at")
