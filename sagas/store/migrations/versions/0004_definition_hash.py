"""saga.definition_hash: the fingerprint of the definition a saga started on

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Sagas in flight at the upgrade keep NULL (started before fingerprints): they are checked by
their step names only, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("saga") as batch:
        batch.add_column(sa.Column("definition_hash", sa.String(32), nullable=True))
    op.create_index("ix_saga_name_version_state", "saga", ["name", "version", "state"])


def downgrade() -> None:
    op.drop_index("ix_saga_name_version_state", table_name="saga")
    with op.batch_alter_table("saga") as batch:
        batch.drop_column("definition_hash")
