"""What the store hands out and takes in: saga records, snapshots, history entries, and the
mapping between them and table rows (no I/O here)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ..clock import SYSTEM, Clock
from ..machine import ErrorInfo, HistoryRecord, SagaStatus, StepStatus, next_wakeup
from ..payload import encode
from ..state import SagaKind, SagaState, StepState


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """A saga row without its steps: identity, payload and bookkeeping."""

    id: str
    name: str
    version: int
    state: SagaState
    payload: dict[str, Any]
    payload_hash: str
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    deadline_at: datetime | None
    wake_at: datetime | None
    outbox: list[dict[str, Any]] | None
    outbox_at: datetime | None
    parked: bool
    lock_version: int
    failure: ErrorInfo | None
    kind: SagaKind = SagaKind.ORCHESTRATED
    definition_hash: str | None = None
    trace_context: dict[str, str] | None = None  # W3C carrier of the saga's trace (tracing)
    paused_at: datetime | None = None
    forked_from: str | None = None


@dataclass(frozen=True, slots=True)
class NewSaga:
    """A saga about to be inserted: its identity, payload, first status, history and outbox."""

    saga_id: str
    name: str
    version: int
    payload: dict[str, Any]
    correlation_id: str
    status: SagaStatus
    history: Sequence[HistoryRecord]
    outbox: Sequence[dict[str, Any]]
    kind: SagaKind = SagaKind.ORCHESTRATED
    definition_hash: str | None = None  # Saga.fingerprint
    trace_context: dict[str, str] | None = None  # the saga.start span's context (tracing)
    forked_from: str | None = None  # the original of a fork


@dataclass(frozen=True, slots=True)
class Transition:
    """A decided change to a saga read at ``record.lock_version``: what to write."""

    record: SagaRecord
    old: SagaStatus
    new: SagaStatus
    history: Sequence[HistoryRecord]
    outbox: Sequence[dict[str, Any]] = ()
    parked: bool | None = None  # None: leave the flag as it is
    clear_outbox: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A saga as read (or as last written by this process) at database time ``read_at``.

    A transition computed from a snapshot is written with compare-and-set on the record's
    ``lock_version``, so a snapshot that went stale costs a re-read, never a lost update."""

    record: SagaRecord
    status: SagaStatus
    read_at: datetime
    taken: float  # clock.monotonic() when read_at was current
    clock: Clock = SYSTEM  # the store's clock (a test's fake one on SQLite)

    def now(self) -> datetime:
        """The database clock now, estimated from the read and this process's monotonic clock
        (immune to a skewed wall clock)."""
        return self.read_at + timedelta(seconds=max(self.clock.monotonic() - self.taken, 0.0))

    def after_write(self, t: Transition, at: datetime) -> Snapshot:
        """This snapshot as ``Store.write`` left the row (what the next write compares with).

        The clock keeps its anchor, the last read of the database clock: ``at`` was estimated
        before the write went out, so anchoring at it once the write has returned would drop
        the write's round trip from every later estimate (each inline step's times would run
        a little further behind the database's)."""
        return Snapshot(written_record(t, at), t.new, self.read_at, self.taken, self.clock)


# -- the shape of a written row: derived here only, used by the writes and by the snapshots ------


def inserted_record(new: NewSaga, now: datetime) -> SagaRecord:
    """The saga row ``insert_saga`` writes, as ``record_from_row`` would read it back."""
    return SagaRecord(
        id=new.saga_id,
        name=new.name,
        version=new.version,
        state=new.status.state,
        payload=new.payload,
        payload_hash=payload_hash(new.payload),
        correlation_id=new.correlation_id,
        created_at=now,
        updated_at=now,
        finished_at=None,
        deadline_at=new.status.deadline_at,
        wake_at=next_wakeup(new.status),
        outbox=list(new.outbox) or None,
        outbox_at=now if new.outbox else None,
        parked=False,
        lock_version=1,
        failure=None,
        kind=new.kind,
        definition_hash=new.definition_hash,
        trace_context=new.trace_context,
        forked_from=new.forked_from,
    )


def written_record(t: Transition, now: datetime) -> SagaRecord:
    """The saga row after ``write_transition`` applied ``t`` at ``now``."""
    r = t.record
    if t.clear_outbox:
        outbox, outbox_at = None, None
    elif t.outbox:
        outbox, outbox_at = [*(r.outbox or []), *t.outbox], now
    else:
        outbox, outbox_at = r.outbox, r.outbox_at
    finished_at = r.finished_at
    if t.new.state.terminal and not t.old.state.terminal:
        finished_at = now
    elif t.old.state.terminal and not t.new.state.terminal:
        finished_at = None  # an operator's rerun: running again
    return replace(
        r,
        state=t.new.state,
        failure=t.new.failure,
        updated_at=now,
        finished_at=finished_at,
        deadline_at=t.new.deadline_at,
        paused_at=t.new.paused_at,
        wake_at=next_wakeup(t.new),
        outbox=outbox,
        outbox_at=outbox_at,
        parked=r.parked if t.parked is None else t.parked,
        lock_version=r.lock_version + 1,
    )


def saga_values(r: SagaRecord) -> dict[str, Any]:
    """A record as the saga table's column values."""
    return {
        "id": r.id,
        "name": r.name,
        "kind": r.kind.value,
        "version": r.version,
        "state": r.state.value,
        "payload": r.payload,
        "payload_hash": r.payload_hash,
        "correlation_id": r.correlation_id,
        "failure": r.failure.as_json() if r.failure else None,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "finished_at": r.finished_at,
        "deadline_at": r.deadline_at,
        "wake_at": r.wake_at,
        "outbox": r.outbox,
        "outbox_at": r.outbox_at,
        "parked": r.parked,
        "lock_version": r.lock_version,
        "definition_hash": r.definition_hash,
        "trace_context": r.trace_context,
        "paused_at": r.paused_at,
        "forked_from": r.forked_from,
    }


def changed_columns(t: Transition) -> tuple[str, ...]:
    """The saga columns a transition writes (the rest stay as they are)."""
    columns = ["state", "failure", "updated_at", "wake_at", "lock_version"]
    if t.clear_outbox or t.outbox:
        columns += ["outbox", "outbox_at"]
    if t.new.state.terminal != t.old.state.terminal:
        columns.append("finished_at")
    # Written only when they change, so the hot path's statement shapes stay as they were.
    if t.new.paused_at != t.old.paused_at:
        columns.append("paused_at")
    if t.new.deadline_at != t.old.deadline_at:
        columns.append("deadline_at")
    if t.parked is not None and t.parked != t.record.parked:
        columns.append("parked")
    return tuple(columns)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    at: datetime
    kind: str
    step: str | None
    attempt: int | None
    detail: dict[str, Any] | None


def payload_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(encode(payload).encode()).hexdigest()


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything in sagas is aware UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- row mapping --------------------------------------------------------------------------------


def _iso(value: str | None) -> datetime | None:
    """A timestamp as PostgreSQL's json_agg renders it (ISO 8601 with offset), in UTC."""
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def steps_from_json(rows: Sequence[dict[str, Any]] | None) -> list[StepStatus]:
    """saga_step rows as PostgreSQL's json_agg returns them (the hot path's load: a direct
    mapping, no per-attribute lookups; it runs for every step of every transition)."""
    return [
        StepStatus(
            name=s["name"],
            state=StepState(s["state"]),
            attempt=s["attempt"],
            compensation_attempt=s["compensation_attempt"],
            result=s["result"],
            error=ErrorInfo.from_json(s["error"]),
            started_at=_iso(s["started_at"]),
            finished_at=_iso(s["finished_at"]),
            deadline_at=_iso(s["deadline_at"]),
            next_attempt_at=_iso(s["next_attempt_at"]),
            in_doubt=bool(s["in_doubt"]),
            timeout_at=_iso(s["timeout_at"]),
            heartbeat_at=_iso(s["heartbeat_at"]),
            progress=s["progress"],
        )
        for s in rows or ()
    ]


def record_from_row(row: Any) -> SagaRecord:
    return SagaRecord(
        id=row.id,
        name=row.name,
        version=row.version,
        state=SagaState(row.state),
        payload=row.payload,
        payload_hash=row.payload_hash,
        correlation_id=row.correlation_id,
        created_at=utc(row.created_at) or row.created_at,
        updated_at=utc(row.updated_at) or row.updated_at,
        finished_at=utc(row.finished_at),
        deadline_at=utc(row.deadline_at),
        wake_at=utc(row.wake_at),
        outbox=row.outbox,
        outbox_at=utc(row.outbox_at),
        parked=bool(row.parked),
        lock_version=row.lock_version,
        failure=ErrorInfo.from_json(row.failure),
        kind=SagaKind(row.kind),
        definition_hash=getattr(row, "definition_hash", None),
        trace_context=getattr(row, "trace_context", None),
        paused_at=utc(getattr(row, "paused_at", None)),
        forked_from=getattr(row, "forked_from", None),
    )


def status_from_json(record: SagaRecord, rows: Sequence[dict[str, Any]] | None) -> SagaStatus:
    return status_of(record, tuple(steps_from_json(rows)))


def status_of(record: SagaRecord, steps: tuple[StepStatus, ...]) -> SagaStatus:
    return SagaStatus(
        id=record.id,
        state=record.state,
        deadline_at=record.deadline_at,
        failure=record.failure,
        paused_at=record.paused_at,
        steps=steps,
    )


def status_from_rows(record: SagaRecord, steps: Sequence[Any]) -> SagaStatus:
    return status_of(
        record,
        tuple(
            StepStatus(
                name=s.name,
                state=StepState(s.state),
                attempt=s.attempt,
                compensation_attempt=s.compensation_attempt,
                result=s.result,
                error=ErrorInfo.from_json(s.error),
                started_at=utc(s.started_at),
                finished_at=utc(s.finished_at),
                deadline_at=utc(s.deadline_at),
                next_attempt_at=utc(s.next_attempt_at),
                in_doubt=bool(s.in_doubt),
                timeout_at=utc(s.timeout_at),
                heartbeat_at=utc(s.heartbeat_at),
                progress=s.progress,
            )
            for s in steps
        ),
    )


def step_values(saga_id: str, index: int, s: StepStatus) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "idx": index,
        "name": s.name,
        "state": s.state.value,
        "attempt": s.attempt,
        "compensation_attempt": s.compensation_attempt,
        "result": s.result,
        "error": s.error.as_json() if s.error else None,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "deadline_at": s.deadline_at,
        "next_attempt_at": s.next_attempt_at,
        "in_doubt": s.in_doubt,
        "timeout_at": s.timeout_at,
        "heartbeat_at": s.heartbeat_at,
        "progress": s.progress,
    }


def history_json(history: Sequence[HistoryRecord]) -> list[dict[str, Any]]:
    return [
        {"kind": h.kind.value, "step": h.step, "attempt": h.attempt, "detail": h.detail}
        for h in history
    ]


def history_rows(
    saga_id: str, history: Sequence[HistoryRecord], now: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "saga_id": saga_id,
            "at": now,
            "kind": h.kind.value,
            "step": h.step,
            "attempt": h.attempt,
            "detail": h.detail,
            "message": None,
        }
        for h in history
    ]
