"""Small helpers shared by the store-tier tests."""

from __future__ import annotations

from sqlalchemy import text

from sagas.store import Store

TABLES = ("saga", "saga_step", "saga_event")


def wipe(store: Store) -> None:
    with store.engine.begin() as conn:
        for table in reversed(TABLES):
            conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed table names


def count_rows(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608
            for table in TABLES
        }
