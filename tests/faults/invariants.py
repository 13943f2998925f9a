"""Invariants every fault scenario must leave true; checked after every test of the suite.

``check(engine, store, saga_ids, ...)`` returns a list of violations (empty: all hold). What is
checked, and which property each check actually guarantees:

1. **Settled within a bound.** Within ``settle`` seconds every saga is ``completed``, ``failed``
   or clearly flagged: parked (``saga.parked``, still ``compensating``) *and* listed by
   ``store.dead_letters()``. Anything else (``started``/``pending``/``compensating`` and not
   parked) is reported as lost, with its timeline.
2. **Terminal states are consistent.** ``completed``: every step ``succeeded``. ``failed``: no
   step left ``running``/``pending``/``compensating``/``compensation_failed``, and every step
   that succeeded or timed out and has a compensation is ``compensated``. ``wake_at`` is NULL.
3. **Attempts within their caps.** ``attempt <= retry.max_attempts`` and
   ``compensation_attempt <= compensation_retry.max_attempts`` (+ operator retries).
4. **Effects at most once, and undone when the saga failed.** ``fault_effect`` (the probe's
   idempotency-keyed effects, see ``fprobe.py``) holds at most one row per (saga, step, action)
   — the UNIQUE key makes that structural; what the engine must guarantee on top is checked
   here: a ``completed`` saga has exactly one forward effect per step and no compensation
   effect; a ``failed`` saga has, for every forward effect, a compensation effect written after
   it (nothing that took effect is left undone), and no compensation effect for a step the
   engine does not report ``compensated``.
   Raw runs (``fault_run``: every entry into a step function) are at-least-once: a redelivery
   after a killed worker or a re-published command runs the function again with the same
   attempt. Runs of one (saga, step, action, attempt) beyond the first are violations unless
   the test allows duplicate runs (``duplicate_runs=True``); the count is always reported.
5. **Compensations strictly newest first.** In the history, the steps whose compensation is
   dispatched form a strictly decreasing sequence of step indexes (retries of one compensation
   repeat its index, never go back up); each compensation is dispatched only after the newer
   one completed (``step_compensated``); compensation effects happen in strictly decreasing
   step order (database clock).
6. **No unsent commands.** Within ``grace + 2 sweeper periods`` of settling, no saga has an
   outbox left (``outbox_at`` NULL): a finished saga must never keep commands to re-publish.
7. **No held locks.** No backend of the saga store that is *idle in transaction* holds a lock on
   the saga tables, sampled three times over ~0.6 s (a transition between two statements is
   idle in transaction for microseconds; one that stays so is a leaked transaction).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from sagas import report
from sagas.catalog import get_saga
from sagas.errors import SagaError, SagaNotFound
from sagas.machine import SagaStatus
from sagas.state import HistoryKind, SagaState, StepState
from sagas.store import HistoryEntry, SagaRecord, Store

SAGA_TABLES = (
    "saga",
    "saga_step",
    "saga_event",
    "saga_handled",
    "saga_orphan_event",
    "saga_signal",
)
UNSETTLED_STEP_STATES = {
    StepState.RUNNING,
    StepState.PENDING,
    StepState.COMPENSATING,
    StepState.COMPENSATION_FAILED,
}


@dataclass
class Findings:
    """What ``check`` found: violations fail the test; notes are informational."""

    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duplicate_runs: int = 0

    def __bool__(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Row:
    saga_id: str
    step: str
    action: str
    attempt: int
    at: Any


def _rows(engine: Engine, table: str, saga_ids: list[str]) -> list[Row]:
    with engine.connect() as conn:
        result = conn.execute(
            text(
                f"SELECT saga_id, step, action, attempt, at FROM {table} "  # noqa: S608
                "WHERE saga_id = ANY(:ids) ORDER BY at, id"
            ),
            {"ids": saga_ids},
        )
        return [Row(*r) for r in result]


def _poll(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except (SQLAlchemyError, SagaError):
            pass  # the store may be coming back from a restart
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _settled(record: SagaRecord) -> bool:
    return record.state.terminal or record.parked


def check(
    engine: Engine,
    store: Store,
    saga_ids: Iterable[str],
    *,
    settle: float = 30.0,
    outbox_bound: float = 4.0,
    duplicate_runs: bool = False,
) -> Findings:
    ids = sorted(set(saga_ids))
    found = Findings()
    if ids:
        snapshots = _settle(store, ids, settle, found)
        _check_flags(store, snapshots, settle, found)
        effects = _rows(engine, "fault_effect", ids)
        for saga_id, (record, status, history) in snapshots.items():
            problems: list[str] = []
            _check_terminal(record, status, problems)
            _check_caps(record, status, history, problems)
            _check_effects(record, status, [e for e in effects if e.saga_id == saga_id], problems)
            _check_order(record, status, history, effects, problems)
            if problems:
                found.violations.append(
                    f"saga {saga_id} ({record.name}, {record.state.value}): "
                    + "; ".join(problems)
                    + "\n"
                    + report.timeline(record, status, history)
                )
        _check_runs(_rows(engine, "fault_run", ids), duplicate_runs, found)
        _check_outbox(engine, ids, outbox_bound, found)
    _check_locks(engine, found)
    return found


Snapshots = dict[str, tuple[SagaRecord, SagaStatus, list[HistoryEntry]]]


def _settle(store: Store, ids: list[str], settle: float, found: Findings) -> Snapshots:
    """1. Wait (up to ``settle``) for every saga to be finished or parked; return snapshots."""
    snapshots: Snapshots = {}

    missing: set[str] = set()

    def all_settled() -> bool:
        for saga_id in ids:
            if saga_id in snapshots and _settled(snapshots[saga_id][0]):
                continue
            try:
                snapshots[saga_id] = store.get(saga_id)
            except SagaNotFound:
                missing.add(saga_id)  # never created: reported below, nothing to wait for
                continue
            missing.discard(saga_id)
            if not _settled(snapshots[saga_id][0]):
                return False
        return True

    _poll(all_settled, settle)
    for saga_id in ids:
        if saga_id not in snapshots:
            try:
                snapshots[saga_id] = store.get(saga_id)
            except SagaError:
                found.violations.append(f"saga {saga_id} does not exist (lost start?)")
    return snapshots


def _check_flags(store: Store, snapshots: Snapshots, settle: float, found: Findings) -> None:
    """1. An unfinished saga must be parked and dead-lettered; anything else is lost/stuck."""
    dead = {(r.id, s.name) for r, s in store.dead_letters(limit=10_000)}
    for saga_id, (record, status, history) in snapshots.items():
        if not _settled(record):
            found.violations.append(
                f"saga {saga_id} not settled after {settle}s (lost or stuck, not flagged):\n"
                + report.timeline(record, status, history)
            )
        elif record.parked:
            parked = [s.name for s in status.steps if s.state is StepState.COMPENSATION_FAILED]
            if record.state is not SagaState.COMPENSATING or not parked:
                found.violations.append(
                    f"saga {saga_id} parked in state {record.state} without a "
                    "compensation_failed step"
                )
            for name in parked:
                if (saga_id, name) not in dead:
                    found.violations.append(f"saga {saga_id}: parked {name} not in dead_letters()")
            found.notes.append(f"saga {saga_id} parked (flagged) at {parked}")


def _check_runs(runs: list[Row], allowed: bool, found: Findings) -> None:
    """4. Raw runs are at-least-once; duplicates of one attempt fail unless allowed."""
    counts = Counter((r.saga_id, r.step, r.action, r.attempt) for r in runs)
    dups = {k: n for k, n in counts.items() if n > 1}
    found.duplicate_runs = sum(n - 1 for n in dups.values())
    if dups:
        listed = ", ".join(f"{s[:16]}/{st}/{a}#{att}x{n}" for (s, st, a, att), n in dups.items())
        (found.notes if allowed else found.violations).append(
            f"duplicate runs of one attempt (redeliveries): {listed}"
        )


def _check_outbox(engine: Engine, ids: list[str], bound: float, found: Findings) -> None:
    """6. No saga keeps commands it committed but never published."""
    query = text(
        "SELECT id, state, outbox_at, outbox FROM saga "
        "WHERE id = ANY(:ids) AND outbox_at IS NOT NULL"
    )
    left: list[Any] = []

    def empty() -> bool:
        nonlocal left
        with engine.connect() as conn:
            left = list(conn.execute(query, {"ids": ids}))
        return not left

    if not _poll(empty, bound):
        found.violations.append(f"commands left unsent after {bound}s: {left}")


def _check_terminal(record: SagaRecord, status: SagaStatus, problems: list[str]) -> None:
    saga = get_saga(record.name, record.version)
    if record.state is SagaState.COMPLETED:
        bad = [s.name for s in status.steps if s.state is not StepState.SUCCEEDED]
        if bad:
            problems.append(f"completed with steps not succeeded: {bad}")
    elif record.state is SagaState.FAILED:
        for step, s in zip(saga.steps, status.steps, strict=True):
            if s.state in UNSETTLED_STEP_STATES:
                problems.append(f"failed with step {s.name} {s.state.value}")
            if s.state in (StepState.SUCCEEDED, StepState.TIMED_OUT) and step.compensable:
                problems.append(f"failed but step {s.name} ({s.state.value}) not compensated")
    if record.state.terminal:
        if record.wake_at is not None:
            problems.append(f"finished with a timer left (wake_at {record.wake_at})")
        if record.finished_at is None:
            problems.append("finished without finished_at")


def _check_caps(
    record: SagaRecord, status: SagaStatus, history: list[HistoryEntry], problems: list[str]
) -> None:
    saga = get_saga(record.name, record.version)
    operator = Counter(h.step for h in history if h.kind == HistoryKind.OPERATOR_RETRY.value)
    for step, s in zip(saga.steps, status.steps, strict=True):
        if s.attempt > step.retry.max_attempts + operator[s.name]:
            problems.append(f"{s.name}: {s.attempt} attempts > cap {step.retry.max_attempts}")
        cap = step.compensation_retry.max_attempts + operator[s.name]
        if s.compensation_attempt > cap:
            problems.append(f"{s.name}: {s.compensation_attempt} compensation attempts > {cap}")


def _check_effects(
    record: SagaRecord, status: SagaStatus, effects: list[Row], problems: list[str]
) -> None:
    keyed = Counter((e.step, e.action) for e in effects)
    if any(n > 1 for n in keyed.values()):
        problems.append(f"effect applied more than once: {dict(keyed)}")
    forward = {e.step: e for e in effects if e.action == "forward"}
    undo = {e.step: e for e in effects if e.action == "compensate"}
    saga = get_saga(record.name, record.version)
    waits = {s.name for s in getattr(saga, "steps", ()) if s.is_wait}  # a wait has no effect
    names = [s.name for s in status.steps if s.name not in waits]
    if record.state is SagaState.COMPLETED:
        if sorted(forward) != sorted(names) or undo:
            problems.append(
                f"completed but effects are forward={sorted(forward)} compensate={sorted(undo)}"
            )
    elif record.state is SagaState.FAILED:
        for step, done in forward.items():
            if step not in undo:
                problems.append(f"failed but {step}'s effect (attempt {done.attempt}) not undone")
            elif undo[step].at <= done.at:
                problems.append(f"{step}: compensation effect before its forward effect")
    state = {s.name: s.state for s in status.steps}
    for step in undo if not record.parked else ():
        if state.get(step) is not StepState.COMPENSATED:
            problems.append(f"{step} compensated in effect but {state.get(step)} in the store")


def _check_order(
    record: SagaRecord,
    status: SagaStatus,
    history: list[HistoryEntry],
    effects: list[Row],
    problems: list[str],
) -> None:
    index = {s.name: i for i, s in enumerate(status.steps)}
    dispatched = [
        index[h.step]
        for h in history
        if h.kind == HistoryKind.COMPENSATION_DISPATCHED.value and h.step in index
    ]
    distinct = [i for n, i in enumerate(dispatched) if n == 0 or dispatched[n - 1] != i]
    if any(b >= a for a, b in zip(distinct, distinct[1:], strict=False)):
        problems.append(f"compensations dispatched out of order: {dispatched}")
    done: set[int] = set()
    for h in history:
        if h.step not in index:
            continue
        i = index[h.step]
        if h.kind == HistoryKind.STEP_COMPENSATED.value:
            done.add(i)
        elif h.kind == HistoryKind.COMPENSATION_DISPATCHED.value:
            newer = {j for j in dispatched if j > i}
            if not newer <= done:
                problems.append(f"{h.step} compensation dispatched before {newer - done} done")
    compensated = [
        index[e.step]
        for e in sorted(
            (e for e in effects if e.saga_id == record.id and e.action == "compensate"),
            key=lambda e: e.at,
        )
    ]
    if any(b >= a for a, b in zip(compensated, compensated[1:], strict=False)):
        problems.append(f"compensation effects out of order: {compensated}")


LOCKS_SQL = """
SELECT a.pid, c.relname, l.mode, a.state, a.xact_start, left(a.query, 120) AS query
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
JOIN pg_class c ON c.oid = l.relation
WHERE a.datname = current_database()
  AND a.pid <> pg_backend_pid()
  AND a.state LIKE 'idle in transaction%'
  AND c.relname = ANY(:tables)
"""


def _check_locks(engine: Engine, found: Findings) -> None:
    samples: list[dict[tuple[Any, ...], Any]] = []
    for n in range(3):
        if n:
            time.sleep(0.3)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text(LOCKS_SQL), {"tables": list(SAGA_TABLES)}).all()
        except SQLAlchemyError as exc:
            found.notes.append(f"lock check skipped: {type(exc).__name__}")
            return
        samples.append({(r.pid, r.xact_start, r.relname, r.mode): r for r in rows})
    held = set(samples[0]).intersection(*samples[1:])
    by_pid: dict[int, list[str]] = defaultdict(list)
    for key in held:
        row = samples[-1][key]
        by_pid[row.pid].append(f"{row.relname}:{row.mode}")
    for pid, locks in by_pid.items():
        found.violations.append(
            f"backend {pid} idle in transaction holds locks on saga tables: {sorted(locks)}"
        )
