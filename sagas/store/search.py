"""The operator's reads: sagas by filter a page at a time, counts per state, the stuck list.

One statement per read, every value a bound parameter. The list is newest first on
``(created_at, id)`` and pages by keyset: the next page starts strictly after the last row's
key, so a page costs the same however deep it is and a saga started meanwhile never shifts
one. An age in a filter ("since 2h") is taken from the store's clock (the database's on
PostgreSQL), so it means the same to every process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    literal,
    null,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from ..filters import Cursor, SagaFilter, StuckClass
from ..state import ACTIVE_SAGA_STATES, HistoryKind, SagaKind, SagaState, StepState
from .records import SagaRecord, record_from_row, utc
from .schema import history_table, saga_table, step_table

ACTIVE = tuple(s.value for s in ACTIVE_SAGA_STATES)
# Where a saga "is" at a step, or stopped: what ``SagaFilter.step`` matches by default.
AT_STEP = tuple(
    s.value
    for s in (
        StepState.RUNNING,
        StepState.PARKED,
        StepState.FAILED,
        StepState.TIMED_OUT,
        StepState.COMPENSATING,
        StepState.COMPENSATION_FAILED,
    )
)
_TIME = saga_table.c.created_at.type
# SET LOCAL jit = off, as a function call (PostgreSQL only; see Store._operator_read).
JIT_OFF = select(func.set_config("jit", "off", true()))


@dataclass(frozen=True, slots=True)
class SagaPage:
    records: list[SagaRecord]
    next: Cursor | None  # None: this was the last page


@dataclass(frozen=True, slots=True)
class StuckSaga:
    record: SagaRecord
    why: StuckClass
    reason: str
    since: datetime  # when it became stuck: parked, commands written, timer due, last change
    stuck_for: float  # seconds, on the store's clock


def search(
    conn: Connection, now: datetime | None, flt: SagaFilter, *, limit: int, after: Cursor | None
) -> SagaPage:
    rows = conn.execute(list_query(flt, now, limit=limit, after=after))
    records = [record_from_row(r) for r in rows]
    more = len(records) > limit
    records = records[:limit]
    last = records[-1] if more else None
    return SagaPage(records, Cursor(last.created_at, last.id) if last else None)


def list_query(
    flt: SagaFilter, now: datetime | None, *, limit: int, after: Cursor | None
) -> Select[Any]:
    """A page of ``flt``: one more row than ``limit`` (there is a next page if it comes back)."""
    query = select(saga_table).where(*conditions(flt, now))
    if after is not None:
        key = tuple_(saga_table.c.created_at, saga_table.c.id)
        position = tuple_(
            bindparam("after_c", after.created_at, type_=_TIME),
            bindparam("after_i", after.saga_id),
        )
        query = query.where(key < position)
    return query.order_by(saga_table.c.created_at.desc(), saga_table.c.id.desc()).limit(limit + 1)


def ids_query(flt: SagaFilter, now: datetime | None, *, limit: int) -> Select[Any]:
    """Ids of the sagas matching ``flt``, oldest change first (a bulk action's selection: the
    longest-stuck sagas are acted on first when ``limit`` cuts it short)."""
    return (
        select(saga_table.c.id)
        .where(*conditions(flt, now))
        .order_by(saga_table.c.updated_at, saga_table.c.id)
        .limit(limit)
    )


def counts(conn: Connection, now: datetime | None, flt: SagaFilter) -> dict[str, Any]:
    """Sagas matching ``flt`` per state (every state present, zeros included), and how many
    of them are parked."""
    by_state = {s.value: 0 for s in SagaState}
    parked = 0
    for state, n, p in conn.execute(counts_query(flt, now)).all():
        by_state[state] = int(n)
        parked += int(p)
    return {"total": sum(by_state.values()), "by_state": by_state, "parked": parked}


def counts_query(flt: SagaFilter, now: datetime | None) -> Select[Any]:
    return (
        select(
            saga_table.c.state,
            func.count(),
            func.count().filter(saga_table.c.parked.is_(True)),
        )
        .where(*conditions(flt, now))
        .group_by(saga_table.c.state)
    )


def conditions(flt: SagaFilter, now: datetime | None) -> list[ColumnElement[bool]]:
    """``flt`` as WHERE conditions on the saga table (every value bound)."""
    s = saga_table.c
    where: list[ColumnElement[bool]] = []
    if flt.state:
        where.append(s.state.in_([v.value for v in flt.state]))
    for column, value in (
        (s.name, flt.name),
        (s.version, flt.version),
        (s.correlation_id, flt.correlation_id),
    ):
        if value is not None:
            where.append(column == value)
    if flt.parked is not None:
        where.append(s.parked.is_(flt.parked))
    for column, low, high in (
        (s.created_at, flt.since, flt.until),
        (s.updated_at, flt.updated_since, flt.updated_until),
    ):
        if low is not None:
            where.append(column >= _point(low, now))
        if high is not None:
            where.append(column < _point(high, now))
    if flt.error_type is not None:
        where.append(_error_type(flt.error_type))
    if flt.step is not None or flt.step_state:
        where.append(_at_step(flt.step, flt.step_state))
    if flt.waiting is not None or flt.signal is not None:
        waits = _waiting(flt.signal)
        where.append(waits if flt.waiting is not False else ~waits)
    return where


def _point(value: datetime | timedelta, now: datetime | None) -> Any:
    if isinstance(value, timedelta):
        return _ago(now, value)
    return bindparam(None, value, type_=_TIME)


def _ago(now: datetime | None, delta: timedelta) -> Any:
    """``delta`` before now: on the store's clock if given, else in SQL on the database's (one
    statement, no round trip to read the clock first)."""
    if now is None:
        return func.now() - bindparam(None, delta, type_=Interval())
    return bindparam(None, now - delta, type_=_TIME)


def _now(now: datetime | None) -> Any:
    return func.now() if now is None else bindparam(None, now, type_=_TIME)


def _error_type(name: str) -> ColumnElement[bool]:
    """The saga failed with ``name``, or one of its steps' last error is a ``name``."""
    failure = saga_table.c.failure["type"].as_string()
    step_error = exists().where(
        step_table.c.saga_id == saga_table.c.id,
        step_table.c.error.is_not(None),
        step_table.c.error["type"].as_string() == name,
    )
    return or_(failure == name, step_error)


def _at_step(name: str | None, states: Sequence[StepState]) -> ColumnElement[bool]:
    st = step_table.c
    if states:
        state: ColumnElement[bool] = st.state.in_([v.value for v in states])
    else:  # where it is, or where it stopped; a step waiting for its next attempt too
        state = or_(
            st.state.in_(AT_STEP), and_(st.state == StepState.PENDING.value, st.attempt > 0)
        )
    named = st.name == name if name is not None else true()
    return exists().where(st.saga_id == saga_table.c.id, named, state)


def _waiting(signal: str | None) -> ColumnElement[bool]:
    """An active saga waits for a signal: a wait step running (its current attempt began with
    ``waiting_for_signal``), or a step parked with a go-ahead deadline (``AwaitOperator``).
    Either way the signal is named like the step."""
    st, h = step_table.c, history_table.c
    wait_began = exists().where(
        h.saga_id == st.saga_id,
        h.step == st.name,
        h.attempt == st.attempt,
        h.kind == HistoryKind.WAITING_FOR_SIGNAL.value,
    )
    step_waits = or_(
        and_(st.state == StepState.RUNNING.value, wait_began),
        and_(st.state == StepState.PARKED.value, st.deadline_at.is_not(None)),
    )
    named = st.name == signal if signal is not None else true()
    return and_(
        saga_table.c.state.in_(ACTIVE),
        exists().where(st.saga_id == saga_table.c.id, named, step_waits),
    )


def stuck(
    conn: Connection,
    now: datetime | None,
    older_than: float,
    *,
    classes: Sequence[StuckClass] = (),
    limit: int = 100,
) -> list[StuckSaga]:
    """Active sagas stuck for at least ``older_than`` seconds, longest stuck first, each in the
    first class that applies: parked (dead-lettered), commands unsent, a timer due and not
    fired (waiting past due), or nothing scheduled and no change (no progress). A saga whose
    next timer is still ahead (a step within its timeout, a backoff, a wait before its
    deadline) is not stuck."""
    rows = conn.execute(stuck_query(now, older_than, classes=classes, limit=limit)).all()
    out = []
    for row in rows:
        record, cls = record_from_row(row), StuckClass(row.stuck_class)
        at, when = utc(row.db_now) or row.db_now, utc(row.stuck_since) or row.stuck_since
        out.append(StuckSaga(record, cls, _reason(record, cls), when, (at - when).total_seconds()))
    return out


def stuck_query(
    now: datetime | None, older_than: float, *, classes: Sequence[StuckClass], limit: int
) -> Select[Any]:
    s = saga_table.c
    cutoff = _ago(now, timedelta(seconds=older_than))
    unsent = s.outbox_at <= cutoff
    not_unsent = or_(s.outbox_at.is_(None), s.outbox_at > cutoff)
    # Mutually exclusive, in priority order: each saga lands in one class.
    tests: list[tuple[StuckClass, ColumnElement[bool], Any]] = [
        (StuckClass.DEAD_LETTERED, s.parked.is_(True), s.updated_at),
        (StuckClass.UNSENT_COMMANDS, and_(s.parked.is_(False), unsent), s.outbox_at),
        (
            StuckClass.WAITING_PAST_DUE,
            and_(s.parked.is_(False), not_unsent, s.wake_at <= cutoff),
            s.wake_at,
        ),
        (
            StuckClass.NO_PROGRESS,
            and_(s.parked.is_(False), not_unsent, s.wake_at.is_(None), s.updated_at <= cutoff),
            s.updated_at,
        ),
    ]
    chosen = [t for t in tests if not classes or t[0] in classes]
    why = case(*((test, literal(c.value)) for c, test, _ in chosen), else_=null())
    since = case(*((test, when) for _, test, when in chosen), else_=null())
    return (
        select(
            saga_table,
            why.label("stuck_class"),
            since.label("stuck_since"),
            _now(now).label("db_now"),
        )
        .where(s.state.in_(ACTIVE), or_(false(), *(test for _, test, _ in chosen)))
        .order_by(since, s.id)
        .limit(limit)
    )


def _reason(r: SagaRecord, why: StuckClass) -> str:
    if why is StuckClass.DEAD_LETTERED:
        if r.state is SagaState.COMPENSATING:
            return "compensation exhausted (dead-lettered)"
        if r.kind is SagaKind.CHOREOGRAPHED:
            return "expected event not seen in time"
        return "step parked for an operator"
    if why is StuckClass.UNSENT_COMMANDS:
        return "commands committed but not published (is the sweeper running?)"
    if why is StuckClass.WAITING_PAST_DUE:
        return "a timer is due and was not fired (is the sweeper running?)"
    return "nothing scheduled and no change" + (
        " while compensating" if r.state is SagaState.COMPENSATING else ""
    )
