"""The SQLAlchemy engine, the database clock, and the one place driver errors become ours.

Everything outside ``sagas.store`` sees ``StoreUnavailable`` (the server cannot be reached or
dropped the connection: retry later), ``StoreConflict`` (a unique key was taken by a concurrent
writer) or ``StoreError`` (anything else the database refused), never a SQLAlchemy exception.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, make_url, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..clock import SYSTEM, Clock
from ..errors import StoreConflict, StoreError, StoreUnavailable
from ..settings import mask_url
from .records import utc

CONNECT_TIMEOUT = 10  # seconds, for a PostgreSQL URL without its own connect_timeout

# Execution option of the store's read-only connections (see make_engine's SQLite begin).
READ_ONLY = "sagas_read_only"


def make_engine(url: str) -> Engine:
    engine = _create(url)
    if url not in ("sqlite://", "sqlite:///:memory:"):  # one connection is the whole database
        _fresh_pool_after_fork(engine)
    return engine


def _fresh_pool_after_fork(engine: Engine) -> None:
    """A forked child (a prefork Celery worker, a preloaded gunicorn or uWSGI web process that
    starts sagas) must not use the parent's pooled connections: two processes on one socket
    interleave their statements. The child gets an empty pool and leaves the parent's
    connections open for the parent (SQLAlchemy's ``dispose(close=False)``)."""
    ref = weakref.ref(engine)

    def in_child() -> None:
        forked = ref()
        if forked is not None:
            forked.dispose(close=False)

    os.register_at_fork(after_in_child=in_child)


def _create(url: str) -> Engine:
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take effect
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Take the write lock up front: this is SQLite's stand-in for SELECT ... FOR UPDATE.
            # Reads (READ_ONLY) do not: in WAL mode they never wait for a writer, such as a web
            # request's open transaction on the same file.
            if conn.get_execution_options().get(READ_ONLY, False):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pre-ping: it costs a round trip on every checkout. A connection the server dropped fails
    # its first statement instead; SQLAlchemy then invalidates the whole pool, the call surfaces
    # as StoreUnavailable and is retried by its caller (coordinator tasks retry their message, a
    # participant replies by message, the sweeper runs again next beat).
    # A server that accepts and never answers (a blackholed host, a hung proxy) must not hold
    # a caller, such as a web request starting a saga, for the OS's TCP timeout: it becomes
    # StoreUnavailable after CONNECT_TIMEOUT seconds unless the URL sets its own.
    parsed = make_url(url)
    wait = parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query
    args = {"connect_timeout": CONNECT_TIMEOUT} if wait else {}
    return create_engine(url, pool_size=5, max_overflow=5, connect_args=args)


@contextmanager
def translated(url: str) -> Iterator[None]:
    """Turn driver errors raised inside the block into the store's typed errors."""
    try:
        yield
    except IntegrityError as exc:
        raise StoreConflict(f"saga store refused a duplicate key: {exc.orig}") from exc
    except OperationalError as exc:
        raise StoreUnavailable(f"saga store {mask_url(url)} unavailable: {exc.orig}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"saga store {mask_url(url)} unavailable: {exc.orig}") from exc
        raise StoreError(f"saga store {mask_url(url)} error: {exc.orig}") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"saga store {mask_url(url)} error: {exc}") from exc


def dropped_connection(exc: BaseException) -> bool:
    """Did this store error come from a pooled connection the server had dropped?"""
    return bool(getattr(exc.__cause__, "connection_invalidated", False))


def db_now(conn: Connection, is_postgres: bool, clock: Clock = SYSTEM) -> datetime:
    """The database clock on PostgreSQL; ``clock`` (Python's, or a test's fake) on SQLite."""
    if is_postgres:
        value = conn.execute(select(func.now())).scalar_one()
        return utc(value) or value
    return clock.now()
