"""Prebuilt statements for the store's hot path (most of them PostgreSQL's).

Each transition is one ``SELECT ... FOR UPDATE`` (row lock, database clock and the steps as
JSON) and one write statement (the saga row, every changed step and the new history rows, as
data-modifying CTEs). The statements are built once per shape (how many steps changed, how many
history rows, which saga columns) with bound parameters only, so SQLAlchemy's compiled cache and
psycopg's prepared statements both hit; values never become part of the SQL text.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Table, bindparam, column, func, insert, literal, null, select, true, update
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.sql import Executable

from .schema import history_table, saga_table, step_table

STEP_COLUMNS = tuple(c.name for c in step_table.c if c.name not in ("saga_id", "idx"))
EVENT_COLUMNS = ("saga_id", "at", "kind", "step", "attempt", "detail", "message")
SAGA_INSERT_COLUMNS = tuple(c.name for c in saga_table.c)
# Python None is SQL NULL in every JSON column we write (not the JSON value null).
_JSON = JSONB(none_as_null=True)

SELECT_SAGA = select(saga_table).where(saga_table.c.id == bindparam("saga_id"))
OPEN_ATTEMPT = select(
    step_table.c.name,
    step_table.c.state,
    step_table.c.attempt,
    step_table.c.compensation_attempt,
    step_table.c.deadline_at,
).where(step_table.c.saga_id == bindparam("saga_id"), step_table.c.idx == bindparam("idx"))
CLEAR_OUTBOX = (
    update(saga_table)
    .where(
        saga_table.c.id == bindparam("saga_id"),
        saga_table.c.outbox_at == bindparam("written_at", type_=saga_table.c.outbox_at.type),
    )
    .values(outbox=null(), outbox_at=None)
)
# Many clears in one statement (DeferredClears): the same match on (id, outbox_at) per row.
_CLEARS = (
    func.jsonb_to_recordset(bindparam("clears", type_=_JSON))
    .table_valued(column("id", saga_table.c.id.type), column("at", saga_table.c.outbox_at.type))
    .render_derived(name="c", with_types=True)
)
CLEAR_OUTBOXES = (
    update(saga_table)
    .where(saga_table.c.id == _CLEARS.c.id, saga_table.c.outbox_at == _CLEARS.c.at)
    .values(outbox=null(), outbox_at=None)
)
_STEPS_JSON = (
    select(func.json_agg(aggregate_order_by(step_table.table_valued(), step_table.c.idx)))
    .where(step_table.c.saga_id == saga_table.c.id)
    .scalar_subquery()
)
LOCK = (
    select(saga_table, func.now().label("db_now"), _STEPS_JSON.label("steps"))
    .where(saga_table.c.id == bindparam("saga_id"))
    .with_for_update(of=saga_table)
)
LOCK_SKIP_LOCKED = LOCK.with_for_update(of=saga_table, skip_locked=True)
# The same without the lock: optimistic transitions read, decide, then compare-and-set.
LOAD = select(saga_table, func.now().label("db_now"), _STEPS_JSON.label("steps")).where(
    saga_table.c.id == bindparam("saga_id")
)
# now() and the saga row if it exists: a LEFT JOIN from a one-row select always returns a row.
_ONE = select(literal(1).label("one")).subquery("one")
PEEK = select(func.now().label("db_now"), saga_table).select_from(
    _ONE.outerjoin(saga_table, saga_table.c.id == bindparam("saga_id"))
)


def _bind(table: Table, column: str, prefix: str) -> Any:
    type_ = table.c[column].type
    variant = getattr(type_, "_variant_mapping", {}).get("postgresql")
    if isinstance(variant, JSONB) or isinstance(type_, JSONB):
        type_ = _JSON
    return bindparam(f"{prefix}{column}", type_=type_)


def _rows(name: str, columns: tuple[str, ...], table: Table) -> Any:
    """``jsonb_to_recordset(:name) AS name(col type, ...)``: any number of rows in one
    parameter, so a statement's shape (and its cache entries) does not depend on how many."""
    return (
        func.jsonb_to_recordset(bindparam(name, type_=_JSON))
        .table_valued(*(column(c, table.c[c].type) for c in columns))
        .render_derived(name=name, with_types=True)
    )


_STEP_ROWS = _rows("steps", ("idx", *STEP_COLUMNS), step_table)
_EVENT_ROWS = _rows("events", EVENT_COLUMNS[2:6], history_table)
# History rows take the saga id and the transition's time from two parameters of their own.
_INSERT_EVENTS = insert(history_table).from_select(
    list(EVENT_COLUMNS[:6]),
    select(
        bindparam("e_saga", type_=history_table.c.saga_id.type),
        bindparam("e_at", type_=history_table.c.at.type),
        *(_EVENT_ROWS.c[c] for c in EVENT_COLUMNS[2:6]),
    ),
)
_INSERT_STEPS = insert(step_table).from_select(
    ["saga_id", "idx", *STEP_COLUMNS],
    select(
        bindparam("t_saga", type_=step_table.c.saga_id.type),
        _STEP_ROWS.c.idx,
        *(_STEP_ROWS.c[c] for c in STEP_COLUMNS),
    ),
)


@lru_cache(maxsize=64)
def save(saga_columns: tuple[str, ...]) -> Executable:
    """One statement for a whole transition, applied only if the saga row is still at the
    version it was read at (``s_expected``): UPDATE saga; UPDATE the changed steps; INSERT the
    history rows. Returns one row: how many saga rows it updated (0 = someone else moved it)."""
    saga = (
        update(saga_table)
        .where(
            saga_table.c.id == bindparam("s_key"),
            saga_table.c.lock_version == bindparam("s_expected"),
        )
        .values({c: _bind(saga_table, c, "s_") for c in saga_columns})
        .returning(saga_table.c.id)
        .cte("s")
    )
    steps = (
        update(step_table)
        .where(step_table.c.saga_id == saga.c.id, step_table.c.idx == _STEP_ROWS.c.idx)
        .values({c: _STEP_ROWS.c[c] for c in STEP_COLUMNS})
        .cte("u")
    )
    events = (
        insert(history_table)
        .from_select(
            list(EVENT_COLUMNS[:6]),
            select(
                saga.c.id,
                bindparam("e_at", type_=history_table.c.at.type),
                *(_EVENT_ROWS.c[c] for c in EVENT_COLUMNS[2:6]),
            ).select_from(saga.join(_EVENT_ROWS, true())),  # s has one row or none
        )
        .cte("e")
    )
    return select(func.count().label("saved")).select_from(saga).add_cte(steps).add_cte(events)


def save_params(
    saga_id: str,
    expected_version: int,
    now: datetime,
    saga_values: dict[str, Any],
    steps: list[dict[str, Any]],
    events: list[dict[str, Any]],
) -> dict[str, Any]:
    params: dict[str, Any] = {f"s_{c}": v for c, v in saga_values.items()}
    params.update(s_key=saga_id, s_expected=expected_version, e_at=now)
    params["steps"] = [_jsonable(row) for row in steps]
    params["events"] = events
    return params


INSERT_SAGA = _INSERT_EVENTS.add_cte(
    insert(saga_table).values({c: _bind(saga_table, c, "s_") for c in SAGA_INSERT_COLUMNS}).cte("s")
).add_cte(_INSERT_STEPS.cte("t"))


def insert_params(
    saga_values: dict[str, Any], steps: list[dict[str, Any]], events: list[dict[str, Any]]
) -> dict[str, Any]:
    """Parameters of INSERT_SAGA: the saga row, its steps and its first history rows."""
    params = {f"s_{c}": saga_values[c] for c in SAGA_INSERT_COLUMNS}
    params.update(
        t_saga=saga_values["id"], e_saga=saga_values["id"], e_at=saga_values["created_at"]
    )
    params["steps"] = [_jsonable(row) for row in steps]
    params["events"] = events
    return params


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    # ``date`` covers datetimes too, also where a test patches ``datetime.datetime``.
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in row.items()}
