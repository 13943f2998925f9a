"""Writing sagas: a new saga, and a transition applied only if the row is still at the version
it was read at. One statement on PostgreSQL (``sagas.statements``); plain statements on SQLite,
inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, null, update
from sqlalchemy.engine import Connection

from . import statements
from .machine import next_wakeup
from .records import NewSaga, Transition, event_json, event_rows, payload_hash, step_values
from .schema import event_table, saga_table, step_table


def insert_saga(conn: Connection, is_postgres: bool, new: NewSaga, *, now: datetime) -> None:
    saga_id, status, outbox = new.saga_id, new.status, new.outbox
    saga_values = {
        "id": saga_id,
        "name": new.name,
        "kind": new.kind,
        "version": new.version,
        "state": status.state.value,
        "payload": new.payload,
        "payload_hash": payload_hash(new.payload),
        "correlation_id": new.correlation_id,
        "failure": None,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
        "deadline_at": status.deadline_at,
        "wake_at": next_wakeup(status),
        "outbox": list(outbox) if outbox else None,
        "outbox_at": now if outbox else None,
        "parked": False,
        "lock_version": 1,
    }
    steps = [step_values(saga_id, i, st) for i, st in enumerate(status.steps)]
    if is_postgres:
        # One statement (atomic on its own): the saga, its steps and its first history rows.
        params = statements.insert_params(saga_values, steps, event_json(new.history))
        conn.execute(statements.INSERT_SAGA, params)
        return
    conn.execute(
        insert(saga_table).values({**saga_values, "outbox": saga_values["outbox"] or null()})
    )
    conn.execute(insert(step_table), steps)
    events = event_rows(saga_id, new.history, now)
    if events:
        conn.execute(insert(event_table), events)


def write_transition(conn: Connection, is_postgres: bool, t: Transition, *, now: datetime) -> bool:
    """Write a transition if the saga row is still at ``t.record.lock_version``; False if not."""
    record, old, new, history, outbox = t.record, t.old, t.new, t.history, t.outbox
    parked, clear_outbox = t.parked, t.clear_outbox
    values: dict[str, Any] = {
        "state": new.state.value,
        "failure": new.failure.as_json() if new.failure else None,
        "updated_at": now,
        "wake_at": next_wakeup(new),
        "lock_version": record.lock_version + 1,
    }
    if clear_outbox:
        values.update(outbox=None, outbox_at=None)
    elif outbox:
        values.update(outbox=[*(record.outbox or []), *outbox], outbox_at=now)
    if new.state.terminal and not old.state.terminal:
        values["finished_at"] = now
    if parked is not None:
        values["parked"] = parked
    changed = [
        step_values(record.id, i, after)
        for i, (before, after) in enumerate(zip(old.steps, new.steps, strict=True))
        if before != after
    ]
    if is_postgres:
        # One round trip: the saga row (if unchanged), every changed step and the history.
        params = statements.save_params(
            record.id, record.lock_version, now, values, changed, event_json(history)
        )
        return bool(conn.execute(statements.save(tuple(values)), params).scalar_one())
    if "outbox" in values and values["outbox"] is None:
        values["outbox"] = null()
    result = conn.execute(
        update(saga_table)
        .where(saga_table.c.id == record.id, saga_table.c.lock_version == record.lock_version)
        .values(values)
    )
    if result.rowcount != 1:
        return False
    for row in changed:
        conn.execute(
            update(step_table)
            .where(step_table.c.saga_id == record.id, step_table.c.idx == row["idx"])
            .values(row)
        )
    events = event_rows(record.id, history, now)
    if events:
        conn.execute(insert(event_table), events)
    return True
