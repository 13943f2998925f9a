"""Starting a saga from Django code: in the caller's transaction, or when it commits.

``saga.start(payload, ...)`` inside ``transaction.atomic()`` (or a view under
``ATOMIC_REQUESTS``) writes the saga row in that transaction when the saga store is
``DATABASES["default"]`` (the default): the saga exists if and only if the transaction commits,
and its first step is dispatched by ``transaction.on_commit``. If the process dies between the
commit and that publish, the command is still in the row's outbox and the sweeper publishes it.
With the store in another database, the start is made when the transaction commits (nothing on
rollback). Outside any atomic block, a start commits on its own at once, as everywhere else.

``start_saga_on_commit(name, ...)`` sends the ``start_saga`` message after the commit instead:
for a saga defined in another codebase, or when the coordinator should write the row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction

from ...admission import validate_start
from ...catalog import registered_sagas
from ...errors import ConfigurationError
from ...payload import check_saga_id
from ...runtime import Runtime
from ...store.joined import (
    Action,
    CallerTransaction,
    CursorTransaction,
    Deferred,
    for_cursor,
    same_database,
)
from ...tasks import start_saga
from .conf import database_url, settings


def start_saga_on_commit(
    name: str,
    payload: Any,
    *,
    saga_id: str,
    correlation_id: str | None = None,
    using: str | None = None,
) -> str:
    """Send ``start_saga.delay(name, payload, ...)`` once the current transaction of database
    ``using`` (default: ``"default"``) commits; at once when no transaction is open (autocommit).
    Returns ``saga_id``.

    The start is checked now, in the request: a bad payload (``PayloadInvalid``,
    ``PayloadNotJSON``, ``PayloadTooLarge``) or id (``InvalidSagaId``) raises here, before
    anything is committed, when this process has the saga's definition (every installed app's
    ``sagas.py`` is imported when Django starts); a saga defined only in another codebase has
    its ids checked here and its payload by the coordinator. The payload is sent in its
    validated form (a pydantic model becomes its JSON dict).

    A transaction that rolls back (the view raised inside ``transaction.atomic()``) sends
    nothing: no saga is started. The message is sent after the commit, so a broker that refuses
    it then raises from the commit (the rows are committed; the same ``saga_id`` makes a retried
    request start one saga, never two).
    """
    definition = registered_sagas().get(name)
    if definition is not None:
        data, sid, cid = validate_start(
            name, definition.payload_model, payload, saga_id, correlation_id, settings()
        )
        message: dict[str, Any] = {"saga_id": sid, "correlation_id": cid}
    else:
        data = payload
        sid = check_saga_id(saga_id)
        message = {"saga_id": sid}
        if correlation_id is not None:
            message["correlation_id"] = check_saga_id(correlation_id, field="correlation_id")
    transaction.on_commit(lambda: start_saga.delay(name, data, **message), using=using)
    return sid


def caller_transaction(rt: Runtime) -> CallerTransaction | Deferred | None:
    """The open ``atomic()`` block of ``DATABASES["default"]`` a start should join, if any
    (registered with ``sagas.starter.join_transactions`` when the app is ready)."""
    conn = connections[DEFAULT_DB_ALIAS]
    if not conn.in_atomic_block:
        return None

    def on_commit(action: Action) -> None:
        # robust: a failed publish after the commit is logged, not raised into the request;
        # the outbox keeps the command for the sweeper.
        transaction.on_commit(action, using=DEFAULT_DB_ALIAS, robust=True)

    try:
        theirs = database_url(conn.settings_dict)
    except ConfigurationError:
        theirs = ""
    if not theirs or not same_database(rt.store.url, theirs):
        return Deferred(on_commit, "the saga store is not DATABASES['default']")
    # Django's PostgreSQL driver module (psycopg or psycopg2); not imported here, since
    # importing Django's psycopg helpers fails where neither is installed (SQLite projects).
    driver = getattr(getattr(conn, "Database", None), "__name__", "")
    if conn.vendor == "postgresql" and driver != "psycopg":
        return Deferred(on_commit, f"Django's database driver is {driver}, the store's psycopg")

    def execute(
        sql: str, params: Mapping[str, Any]
    ) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            if cursor.description is None:
                return (), ()
            return [d[0] for d in cursor.description], cursor.fetchall()

    return CursorTransaction(
        dialect=for_cursor(rt.store.engine.dialect),
        execute=execute,
        savepoint=lambda: transaction.atomic(using=DEFAULT_DB_ALIAS),
        conflict=IntegrityError,
        on_commit=on_commit,
    )
