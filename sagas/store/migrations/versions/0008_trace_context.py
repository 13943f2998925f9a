"""saga.trace_context: the W3C trace context a saga's spans are parented to

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Nullable: sagas in flight at the upgrade (and every saga while tracing is off) keep NULL, and
their steps simply emit no saga spans.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("saga") as batch:
        batch.add_column(
            sa.Column("trace_context", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("saga") as batch:
        batch.drop_column("trace_context")
