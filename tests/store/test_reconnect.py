"""The pool has no pre-ping: a connection PostgreSQL dropped (a restart, an idle timeout) must
cost a retry inside the store, not a "store unavailable" error to the caller."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from sagas.store import Store


def _drop_connections(store: Store) -> int:
    """Terminate every server connection of the store's pool (as a restart would)."""
    admin = create_engine(store.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            )
    finally:
        admin.dispose()


def test_single_statements_survive_dropped_pool_connections(pg_store: Store) -> None:
    assert pg_store.peek("absent")[0] is None  # a pooled connection now exists
    assert pg_store.load("absent") is None
    assert _drop_connections(pg_store) >= 1
    record, now = pg_store.peek("absent")  # first use of a dead connection: retried, no error
    assert record is None and abs((datetime.now(UTC) - now).total_seconds()) < 60
    assert _drop_connections(pg_store) >= 1
    assert pg_store.load("absent") is None
    assert _drop_connections(pg_store) >= 1
    assert pg_store.open_attempt("absent", 0) is None
