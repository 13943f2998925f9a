"""Starting a saga when the caller's Django transaction commits."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from ...admission import validate_start
from ...catalog import registered_sagas
from ...payload import check_saga_id
from ...tasks import start_saga
from .conf import settings


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
