"""What operators read, as JSON: one set of pydantic models for the HTTP API's responses (their
OpenAPI schema) and the CLI's ``--json`` output, so a script gets the same shape from either.

``page``, ``detail``, ``counts`` and ``stuck`` read the store once each and build the models;
a step's attempts (forward and compensation, with their outcomes and times) are rebuilt from
the saga's history, which records each one's start and end.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .filters import Cursor, SagaFilter, StuckClass
from .machine import ErrorInfo, SagaStatus
from .state import HistoryKind, SagaKind, SagaState, StepState
from .store import HistoryEntry, SagaRecord, Store, StuckSaga

MAX_PAGE = 500


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorView(_View):
    type: str
    message: str
    retryable: bool

    @classmethod
    def of(cls, error: ErrorInfo | None) -> ErrorView | None:
        return None if error is None else cls(**error.as_json())


class SagaSummary(_View):
    id: str
    name: str
    kind: SagaKind
    version: int
    state: SagaState
    parked: bool = Field(description="Waiting for an operator (dead-lettered or parked step).")
    correlation_id: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    deadline_at: datetime | None
    failure: ErrorView | None = Field(description="Why compensation began.")

    @classmethod
    def of(cls, r: SagaRecord) -> SagaSummary:
        return cls(
            id=r.id,
            name=r.name,
            kind=r.kind,
            version=r.version,
            state=r.state,
            parked=r.parked,
            correlation_id=r.correlation_id,
            created_at=r.created_at,
            updated_at=r.updated_at,
            finished_at=r.finished_at,
            deadline_at=r.deadline_at,
            failure=ErrorView.of(r.failure),
        )


Outcome = Literal[
    "running", "succeeded", "failed", "timed_out", "parked", "compensated", "superseded"
]


class AttemptView(_View):
    action: Literal["forward", "compensate"]
    attempt: int
    started_at: datetime | None = Field(description="Dispatched (None: not recorded).")
    ended_at: datetime | None
    outcome: Outcome = Field(description="running: no outcome recorded yet.")
    error: ErrorView | None
    waited_for_signal: bool = Field(description="A wait step: no task ran, a signal was awaited.")


class StepView(_View):
    index: int
    name: str
    state: StepState
    attempt: int = Field(description="Forward attempts dispatched.")
    compensation_attempt: int
    in_doubt: bool = Field(description="An attempt timed out: its effect may exist.")
    started_at: datetime | None
    finished_at: datetime | None
    result: Any = Field(description="What the step returned (JSON).")
    error: ErrorView | None = Field(description="The step's last error.")
    attempts: list[AttemptView]


class HistoryView(_View):
    id: int
    at: datetime
    kind: str
    step: str | None
    attempt: int | None
    detail: dict[str, Any] | None


class SagaDetail(SagaSummary):
    revision: int = Field(
        description="Changes with every transition: an action given the revision an operator "
        "saw is refused if the saga moved since."
    )
    payload: dict[str, Any]
    steps: list[StepView]
    history: list[HistoryView]


class SagaPageView(_View):
    items: list[SagaSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; None: last.")


class CountsView(_View):
    total: int
    by_state: dict[SagaState, int] = Field(description="Every state, zeros included.")
    parked: int


class StuckView(_View):
    saga: SagaSummary
    stuck_class: StuckClass
    reason: str
    since: datetime = Field(description="When it became stuck (parked, written, due, changed).")
    stuck_for_seconds: float


class StuckListView(_View):
    older_than_seconds: float
    items: list[StuckView]


def page(
    store: Store, flt: SagaFilter, *, limit: int = 50, cursor: str | None = None
) -> SagaPageView:
    after = Cursor.decode(cursor) if cursor else None
    found = store.search(flt, limit=limit, after=after)
    return SagaPageView(
        items=[SagaSummary.of(r) for r in found.records],
        next_cursor=found.next.encode() if found.next else None,
    )


def detail(store: Store, saga_id: str) -> SagaDetail:
    record, status, history = store.get(saga_id)
    return SagaDetail(
        **SagaSummary.of(record).model_dump(),
        revision=record.lock_version,
        payload=record.payload,
        steps=_steps(status, history),
        history=[
            HistoryView(
                id=h.id, at=h.at, kind=h.kind, step=h.step, attempt=h.attempt, detail=h.detail
            )
            for h in history
        ],
    )


def counts(store: Store, flt: SagaFilter | None = None) -> CountsView:
    return CountsView(**store.counts(flt))


def stuck(
    store: Store, *, older_than: float, classes: Sequence[StuckClass] = (), limit: int = 100
) -> StuckListView:
    found: list[StuckSaga] = store.stuck_sagas(older_than, classes=classes, limit=limit)
    return StuckListView(
        older_than_seconds=older_than,
        items=[
            StuckView(
                saga=SagaSummary.of(s.record),
                stuck_class=s.why,
                reason=s.reason,
                since=s.since,
                stuck_for_seconds=round(s.stuck_for, 3),
            )
            for s in found
        ],
    )


_FORWARD_START = {HistoryKind.STEP_DISPATCHED, HistoryKind.WAITING_FOR_SIGNAL}
_ENDS: dict[str, tuple[str, Outcome]] = {
    HistoryKind.STEP_SUCCEEDED: ("forward", "succeeded"),
    HistoryKind.SIGNAL_RECEIVED: ("forward", "succeeded"),
    HistoryKind.STEP_FAILED: ("forward", "failed"),
    HistoryKind.STEP_TIMED_OUT: ("forward", "timed_out"),
    HistoryKind.WAIT_TIMED_OUT: ("forward", "timed_out"),
    HistoryKind.STEP_PARKED: ("forward", "parked"),
    HistoryKind.STEP_COMPENSATED: ("compensate", "compensated"),
    HistoryKind.COMPENSATION_FAILED: ("compensate", "failed"),
    HistoryKind.COMPENSATION_PARKED: ("compensate", "parked"),
}


def _steps(status: SagaStatus, history: Sequence[HistoryEntry]) -> list[StepView]:
    attempts: dict[tuple[str, str, int], dict[str, Any]] = {}
    for h in history:
        if h.step is None or h.attempt is None:
            continue
        if h.kind in _FORWARD_START or h.kind == HistoryKind.COMPENSATION_DISPATCHED:
            action = "compensate" if h.kind == HistoryKind.COMPENSATION_DISPATCHED else "forward"
            key = (h.step, action, h.attempt)
            previous = attempts.get(key)
            if previous is not None and previous["outcome"] == "running":
                previous["outcome"] = "superseded"  # re-dispatched (an operator's retry)
            attempts[key] = {
                "action": action,
                "attempt": h.attempt,
                "started_at": h.at,
                "ended_at": None,
                "outcome": "running",
                "error": None,
                "waited_for_signal": h.kind == HistoryKind.WAITING_FOR_SIGNAL,
            }
            continue
        end = _ENDS.get(h.kind)
        if end is None:
            continue
        action, outcome = end
        found = attempts.setdefault(
            (h.step, action, h.attempt),  # an outcome without a recorded start (choreography)
            {
                "action": action,
                "attempt": h.attempt,
                "started_at": None,
                "waited_for_signal": False,
            },
        )
        error = h.detail if h.detail and {"type", "message"} <= h.detail.keys() else None
        found.update(
            ended_at=h.at,
            outcome=outcome,
            error=ErrorInfo.from_json({"retryable": False, **error}) if error else None,
        )
    by_step: dict[str, list[AttemptView]] = {}
    for (step, _, _), a in attempts.items():
        by_step.setdefault(step, []).append(
            AttemptView(**{**a, "error": ErrorView.of(a.get("error"))})
        )
    return [
        StepView(
            index=i,
            name=s.name,
            state=s.state,
            attempt=s.attempt,
            compensation_attempt=s.compensation_attempt,
            in_doubt=s.in_doubt,
            started_at=s.started_at,
            finished_at=s.finished_at,
            result=s.result,
            error=ErrorView.of(s.error),
            attempts=by_step.get(s.name, []),
        )
        for i, s in enumerate(status.steps)
    ]


class StateCount(_View):
    saga: str
    state: SagaState
    count: int


class MetricsView(_View):
    """``saga metrics``: the store-wide gauges, as JSON."""

    in_store: list[StateCount]
    parked: int
    timers_due: int
    outbox_unsent: int
    oldest_active_seconds: float

    @classmethod
    def of(cls, stats: dict[str, Any]) -> MetricsView:
        return cls(
            in_store=[
                StateCount(saga=name, state=SagaState(state), count=n)
                for (name, state), n in sorted(stats["by_state"].items())
            ],
            parked=stats["parked"],
            timers_due=stats["timers_due"],
            outbox_unsent=stats["outbox_unsent"],
            oldest_active_seconds=stats["oldest_active_seconds"],
        )


class DeadLetterView(_View):
    saga: SagaSummary
    step: str
    step_state: StepState = Field(description="compensation_failed, or parked (forward).")
    attempts: int = Field(description="Compensation attempts, or forward ones when parked.")
    error: ErrorView | None


def dead_letters(store: Store, *, limit: int = 100) -> list[DeadLetterView]:
    return [
        DeadLetterView(
            saga=SagaSummary.of(r),
            step=s.name,
            step_state=s.state,
            attempts=s.compensation_attempt
            if s.state is StepState.COMPENSATION_FAILED
            else s.attempt,
            error=ErrorView.of(s.error),
        )
        for r, s in store.dead_letters(limit=limit)
    ]


class VersionView(_View):
    name: str
    version: int
    in_flight: int
    finished: int
    defined: bool = Field(description="This deployment defines it (with --app).")
    newest: bool = Field(description="New starts take this version here.")
    problems: list[str]


class VersionsView(_View):
    versions: list[VersionView]
    ok: bool = Field(description="False: a defined version differs from its sagas in flight.")
