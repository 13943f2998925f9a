"""saga_step heartbeats: the attempt's hard deadline, its last heartbeat and the progress

Nullable columns only: steps in flight when this runs keep their one deadline (``timeout_at``
NULL means "no heartbeat deadline"), so they time out exactly as they would have before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("saga_step") as batch:
        batch.add_column(sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("progress", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("saga_step") as batch:
        batch.drop_column("progress")
        batch.drop_column("heartbeat_at")
        batch.drop_column("timeout_at")
