"""A start written in the caller's transaction (``sagas.store.joined``), on SQLite and PostgreSQL:
through a SQLAlchemy connection of the caller's own engine, and through a bare DB-API cursor
(how another framework's connection, Django's, is reached), each against what a second
connection sees."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import create_engine, make_url, text

from sagas.errors import SagaNotFound
from sagas.machine import Plan, Start, StepPlan, decide, new_status
from sagas.retry import RetryPolicy
from sagas.store import NewSaga, Store, statements
from sagas.store.joined import (
    ConnectionTransaction,
    CursorTransaction,
    compiled,
    for_cursor,
    same_database,
)

PLAN = Plan(tuple(StepPlan(n, 30.0, RetryPolicy(), True, 10.0, RetryPolicy()) for n in "ab"))
NOW = datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC)


def new_saga(saga_id: str, payload: dict[str, Any] | None = None) -> NewSaga:
    decision = decide(PLAN, new_status(saga_id, PLAN, None), Start(NOW))
    return NewSaga(
        saga_id,
        "order",
        1,
        payload or {"order": saga_id, "note": "caf\u00e9 \u2603"},
        f"corr-{saga_id}",
        decision.status,
        decision.history,
        [{"type": "dispatch", "step": 0}],
    )


def committed(store: Store, saga_id: str) -> str:
    try:
        return store.get(saga_id)[0].state.value
    except SagaNotFound:
        return "absent"


def test_a_sqlalchemy_connection_commits_or_rolls_back_the_saga_with_the_callers_rows(
    store: Store,
) -> None:
    engine = create_engine(store.url)  # the caller's own engine on the same database
    ran: list[str] = []
    try:
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS shop_order (ref TEXT PRIMARY KEY)"))
            conn.execute(text("DELETE FROM shop_order"))
            conn.commit()
            joined = ConnectionTransaction(conn, lambda action: ran.append("registered"))

            conn.execute(text("INSERT INTO shop_order VALUES ('j1')"))
            assert joined.insert(new_saga("j1"), now=NOW) is None
            # The same id again in this transaction: its own uncommitted row comes back, and
            # the transaction is still usable (no aborted transaction on PostgreSQL).
            again = joined.insert(new_saga("j1", {"other": 1}), now=NOW)
            assert again is not None and again.payload["order"] == "j1"
            assert again.outbox == [{"type": "dispatch", "step": 0}]
            conn.execute(text("INSERT INTO shop_order VALUES ('j1b')"))
            assert committed(store, "j1") == "absent"  # not before the caller commits
            conn.commit()
            assert committed(store, "j1") == "pending"
            record, status, history = store.get("j1")
            assert record.payload == {"order": "j1", "note": "caf\u00e9 \u2603"}
            assert record.created_at == NOW and record.outbox_at == NOW
            assert [s.name for s in status.steps] == ["a", "b"]
            assert [h.kind for h in history][0] == "saga_started"

            joined.insert(new_saga("j2"), now=NOW)
            conn.execute(text("INSERT INTO shop_order VALUES ('j2')"))
            conn.rollback()
            assert committed(store, "j2") == "absent"
            refs = conn.execute(text("SELECT ref FROM shop_order ORDER BY ref")).scalars().all()
            assert refs == ["j1", "j1b"]

            # A saga committed by someone else: found through this connection too.
            found = joined.insert(new_saga("j1"), now=NOW)
            assert found is not None and found.state.value == "pending"
            conn.rollback()
            joined.after_commit(lambda: None)
            assert ran == ["registered"]
    finally:
        engine.dispose()


@contextmanager
def _cursor_transaction(store: Store) -> Iterator[tuple[CursorTransaction, Any]]:
    """A bare DB-API connection of the driver the framework would use, in a transaction."""
    url = make_url(store.url)
    if url.get_backend_name() == "sqlite":
        raw: Any = sqlite3.connect(str(url.database), timeout=30, isolation_level=None)
        raw.execute("BEGIN")
        conflict: type[BaseException] = sqlite3.IntegrityError
    else:
        raw = psycopg.connect(
            host=url.host, port=url.port, user=url.username, dbname=url.database
        )  # psycopg opens a transaction on the first statement
        conflict = psycopg.errors.UniqueViolation
    savepoints = iter(range(1, 100))

    @contextmanager
    def savepoint() -> Iterator[None]:
        name = f"s{next(savepoints)}"  # generated here, not input
        raw.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            raw.execute(f"ROLLBACK TO SAVEPOINT {name}")
            raise
        raw.execute(f"RELEASE SAVEPOINT {name}")

    def execute(
        sql: str, params: Mapping[str, Any]
    ) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        if url.get_backend_name() == "sqlite":
            # What Django's SQLite cursor does with "pyformat": named parameters.
            sql = sql % {name: f":{name}" for name in params}
        cur = raw.execute(sql, dict(params))
        if cur.description is None:
            return (), ()
        return [d[0] for d in cur.description], cur.fetchall()

    pending: list[Callable[[], object]] = []
    joined = CursorTransaction(
        dialect=for_cursor(store.engine.dialect),
        execute=execute,
        savepoint=savepoint,
        conflict=conflict,
        on_commit=pending.append,
    )
    try:
        yield joined, raw
    finally:
        raw.close()


def test_a_dbapi_cursor_writes_the_same_rows_the_store_reads(store: Store) -> None:
    with _cursor_transaction(store) as (joined, raw):
        assert joined.insert(new_saga("c1"), now=NOW) is None
        again = joined.insert(new_saga("c1", {"other": 1}), now=NOW)
        assert again is not None and again.id == "c1" and again.created_at == NOW
        assert again.payload == {"order": "c1", "note": "caf\u00e9 \u2603"}
        assert again.outbox == [{"type": "dispatch", "step": 0}] and not again.parked
        assert committed(store, "c1") == "absent"
        raw.commit()
        record, status, history = store.get("c1")
        assert record.state.value == "pending" and record.outbox_at == NOW
        assert record.correlation_id == "corr-c1"
        assert [(s.name, s.state.value) for s in status.steps] == [
            ("a", "running"),
            ("b", "pending"),
        ]
        assert history[0].kind == "saga_started"

        if make_url(store.url).get_backend_name() == "sqlite":
            raw.execute("BEGIN")
        joined.insert(new_saga("c2"), now=NOW)
        raw.rollback()
        assert committed(store, "c2") == "absent"


def test_same_database() -> None:
    pg = "postgresql+psycopg://app:secret@db.internal:5432/shop"
    assert same_database(pg, "postgresql://app@db.internal/shop")  # driver, password, port
    assert not same_database(pg, "postgresql+psycopg://app@db.internal:5432/sagas")
    assert not same_database(pg, "postgresql+psycopg://other@db.internal:5432/shop")
    assert not same_database(pg, "postgresql+psycopg://app@db.other:5432/shop")
    assert same_database("sqlite:////srv/shop.db", "sqlite:////srv/shop.db")
    assert not same_database("sqlite:////srv/shop.db", "sqlite:////srv/other.db")
    assert not same_database("sqlite://", "sqlite://")  # two in-memory databases
    assert not same_database("sqlite:////srv/shop.db", pg)


def test_compiled_statements_bind_parameters_only(store: Store) -> None:
    sql, params = compiled(
        for_cursor(store.engine.dialect), statements.SELECT_SAGA, {"saga_id": "x'; DROP"}
    )
    assert "DROP" not in sql and params == {"saga_id": "x'; DROP"}
