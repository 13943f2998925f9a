"""A start that joins the caller's own database transaction.

When a web request writes an order row and starts its saga, the saga must exist if and only if
the order commits. With the saga store in the application's database, the start writes the saga
row (with its first command in the row's outbox) on the caller's connection, inside the
caller's transaction, and publishes that command once the transaction has committed; if the
process dies between commit and publish, the sweeper finds the outbox and publishes it.

Two shapes of caller connection:

- ``ConnectionTransaction``: a SQLAlchemy ``Connection`` (Flask-SQLAlchemy's
  ``session.connection()``), written with the store's own statements;
- ``CursorTransaction``: a DB-API cursor owned by another framework (Django's
  ``connection.cursor()``). The same statements are compiled by SQLAlchemy for the store's
  dialect, with bound parameters only, and run on that cursor.

A taken saga id must not abort the caller's transaction: on PostgreSQL the insert runs inside a
savepoint (a failed statement there poisons the whole transaction); on SQLite a failed insert
undoes only itself. The existing row is then read through the caller's connection, so a start
repeated inside one transaction finds its own uncommitted row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any, Protocol

from sqlalchemy import Insert, make_url
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable

from ..errors import StoreConflict
from . import statements
from .engine import translated
from .records import NewSaga, SagaRecord, record_from_row
from .schema import saga_table
from .writes import insert_statements

Action = Callable[[], object]  # its result is ignored


class CallerTransaction(Protocol):
    """The caller's open transaction on the saga store's database."""

    def insert(self, new: NewSaga, *, now: datetime) -> SagaRecord | None:
        """Write the new saga in the caller's transaction; the existing record instead when
        its id is taken (committed, or written earlier in this same transaction)."""

    def after_commit(self, action: Action) -> None:
        """Run ``action`` once the caller's transaction commits; never if it rolls back."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """A caller transaction the start cannot join (the saga store is another database, or its
    driver differs): the start is made after the caller commits, and not at all on rollback."""

    after_commit: Callable[[Action], None]
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionTransaction:
    """A SQLAlchemy ``Connection`` in the caller's transaction."""

    conn: Connection
    on_commit: Callable[[Action], None]

    def insert(self, new: NewSaga, *, now: datetime) -> SagaRecord | None:
        is_postgres = self.conn.dialect.name == "postgresql"
        with translated(self.conn.engine.url.render_as_string(hide_password=True)):
            try:
                with self.conn.begin_nested() if is_postgres else nullcontext():
                    for statement, params in insert_statements(is_postgres, new, now=now):
                        self.conn.execute(statement, params)
            except IntegrityError:
                row = self.conn.execute(statements.SELECT_SAGA, {"saga_id": new.saga_id}).first()
                if row is None:  # pragma: no cover - a conflict on some other key
                    raise
                return record_from_row(row)
        return None

    def after_commit(self, action: Action) -> None:
        self.on_commit(action)


# Run one compiled statement on the caller's cursor: (column names, rows).
Execute = Callable[[str, Mapping[str, Any]], tuple[Sequence[str], Sequence[Sequence[Any]]]]


@dataclass(frozen=True, slots=True)
class CursorTransaction:
    """A DB-API cursor in the caller's transaction (another framework's connection)."""

    dialect: Dialect  # the store's dialect, with the caller's paramstyle (``for_cursor``)
    execute: Execute
    savepoint: Callable[[], AbstractContextManager[Any]]  # rolls back to itself on error
    conflict: type[BaseException]  # what the caller's layer raises for a duplicate key
    on_commit: Callable[[Action], None]

    def insert(self, new: NewSaga, *, now: datetime) -> SagaRecord | None:
        is_postgres = self.dialect.name == "postgresql"
        try:
            with self.savepoint():
                for statement, params in insert_statements(is_postgres, new, now=now):
                    rows = params if isinstance(params, list) else [params]
                    for row in rows:
                        self.execute(*compiled(self.dialect, statement, row))
        except self.conflict as exc:
            found = self._read(new.saga_id)
            if found is None:  # pragma: no cover - a conflict on some other key
                raise StoreConflict(f"saga store refused a duplicate key: {exc}") from exc
            return found
        return None

    def after_commit(self, action: Action) -> None:
        self.on_commit(action)

    def _read(self, saga_id: str) -> SagaRecord | None:
        names, rows = self.execute(
            *compiled(self.dialect, statements.SELECT_SAGA, {"saga_id": saga_id})
        )
        if not rows:
            return None
        return record_from_row(_row(self.dialect, names, rows[0]))


def for_cursor(dialect: Dialect) -> Dialect:
    """A dialect like ``dialect`` that compiles ``%(name)s`` parameters (pyformat), the style
    DB-API wrappers such as Django's accept on every backend."""
    made: Dialect = type(dialect)(paramstyle="pyformat")  # type: ignore[call-arg]
    return made


def compiled(
    dialect: Dialect, statement: Executable, params: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """``statement`` compiled for ``dialect`` with ``params`` bound and converted by their
    column types (JSON serialised, the driver's adapters applied), ready for a DB-API cursor."""
    keys = list(params) if _bare_insert(statement) else None
    done = statement.compile(dialect=dialect, column_keys=keys)  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for name, value in done.construct_params(params).items():
        process = done.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        out[name] = process(value) if process is not None else value
    return str(done), out


def _bare_insert(statement: Executable) -> bool:
    # ``insert(table)`` with its values given at execution: compile the columns given.
    return isinstance(statement, Insert) and not statement._values and statement.select is None


def _row(dialect: Dialect, names: Sequence[str], values: Sequence[Any]) -> SimpleNamespace:
    """A saga row read by the caller's cursor, its values converted as the store's would be."""
    converted: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        column = saga_table.c.get(name)
        process = None
        if column is not None:
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
        # Only text needs converting: a cursor with its own converters (Django's SQLite
        # datetimes, psycopg's JSON) has handed over Python values already.
        converted[name] = process(value) if process and isinstance(value, str | bytes) else value
    return SimpleNamespace(**converted)


def same_database(a: str, b: str) -> bool:
    """Do two SQLAlchemy URLs name the same database (driver and password aside)?"""
    x, y = make_url(a), make_url(b)
    if x.get_backend_name() != y.get_backend_name():
        return False
    if x.get_backend_name() == "sqlite":
        return bool(x.database) and x.database == y.database
    return (x.host or "", x.port or 5432, x.database, x.username, x.query.get("host")) == (
        y.host or "",
        y.port or 5432,
        y.database,
        y.username,
        y.query.get("host"),
    )
