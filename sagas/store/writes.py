"""Writing sagas: a new saga, and a transition applied only if the row is still at the version
it was read at. One statement on PostgreSQL (``statements``); plain statements on SQLite,
inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, null, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable

from . import statements
from .records import (
    NewSaga,
    Transition,
    changed_columns,
    history_json,
    history_rows,
    inserted_record,
    saga_values,
    step_values,
    written_record,
)
from .schema import history_table, saga_table, step_table


def insert_saga(conn: Connection, is_postgres: bool, new: NewSaga, *, now: datetime) -> None:
    for statement, params in insert_statements(is_postgres, new, now=now):
        conn.execute(statement, params)


def insert_statements(
    is_postgres: bool, new: NewSaga, *, now: datetime
) -> list[tuple[Executable, dict[str, Any] | list[dict[str, Any]]]]:
    """The statements that create a saga, with their parameters (a list: one execution per
    row). One statement on PostgreSQL (atomic on its own): the saga, its steps and its first
    history rows."""
    saga_id, status = new.saga_id, new.status
    values = saga_values(inserted_record(new, now))
    steps = [step_values(saga_id, i, st) for i, st in enumerate(status.steps)]
    if is_postgres:
        params = statements.insert_params(values, steps, history_json(new.history))
        return [(statements.INSERT_SAGA, params)]
    out: list[tuple[Executable, dict[str, Any] | list[dict[str, Any]]]] = [
        (insert(saga_table).values({**values, "outbox": values["outbox"] or null()}), {}),
        (insert(step_table), steps),
    ]
    events = history_rows(saga_id, new.history, now)
    if events:
        out.append((insert(history_table), events))
    return out


def _changes(t: Transition, now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The saga columns a transition changes and its changed step rows."""
    row = saga_values(written_record(t, now))
    values: dict[str, Any] = {column: row[column] for column in changed_columns(t)}
    changed = [
        step_values(t.record.id, i, after)
        for i, (before, after) in enumerate(zip(t.old.steps, t.new.steps, strict=True))
        if before != after
    ]
    return values, changed


def transition_statement(t: Transition, *, now: datetime) -> tuple[Executable, dict[str, Any]]:
    """PostgreSQL's one statement for a transition and its parameters: the saga row (if still
    at ``t.record.lock_version``), every changed step and the history; it returns one row, how
    many saga rows it updated (0 = someone else moved it)."""
    values, changed = _changes(t, now)
    params = statements.save_params(
        t.record.id, t.record.lock_version, now, values, changed, history_json(t.history)
    )
    return statements.save(tuple(values)), params


def write_transition(conn: Connection, is_postgres: bool, t: Transition, *, now: datetime) -> bool:
    """Write a transition if the saga row is still at ``t.record.lock_version``; False if not."""
    if is_postgres:
        statement, params = transition_statement(t, now=now)
        return bool(conn.execute(statement, params).scalar_one())
    record, history = t.record, t.history
    values, changed = _changes(t, now)
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
    events = history_rows(record.id, history, now)
    if events:
        conn.execute(insert(history_table), events)
    return True
