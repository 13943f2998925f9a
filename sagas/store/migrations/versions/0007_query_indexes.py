"""Operator query indexes: saga (created_at, id), saga_step (saga_id) where error is set

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

The list (API, CLI, dashboard) is newest first on (created_at, id) and pages by keyset; this
index lets a page walk it from the newest saga or from a cursor and stop after one page, with
or without a filter (measured in bench/README.md: "Operator queries"). Index only: sagas in
flight are untouched. The partial index on steps with an error serves the error-type filter
without scanning every step (a step's error changes only on failure and on the success after
it, so the index leaves the hot path's updates alone otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_saga_created_id", "saga", ["created_at", "id"])
    has_error = sa.column("error").is_not(None)
    op.create_index(
        "ix_saga_step_error",
        "saga_step",
        ["saga_id"],
        postgresql_where=has_error,
        sqlite_where=has_error,
    )


def downgrade() -> None:
    op.drop_index("ix_saga_step_error", table_name="saga_step")
    op.drop_index("ix_saga_created_id", table_name="saga")
