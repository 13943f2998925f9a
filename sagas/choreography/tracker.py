"""Tracking a choreographed saga: pure rules that derive its state from what was seen.

No I/O, like ``sagas.machine``: ``event_seen``, ``handler_done``, ``compensation_done`` and
``timed_out`` take the saga's status and return an ``Outcome`` (new status, history rows,
events to publish), so ``saga list``/``saga show``/the sweeper treat a choreographed saga like
an orchestrated one. The runner persists the outcome and publishes after commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ..machine import ErrorInfo, HistoryRecord, SagaStatus, StepStatus
from ..state import HistoryKind, SagaState, StepState, check_saga_transition, check_step_transition
from .definition import COMPENSATED_EVENT, Choreography, HandlerSpec


@dataclass(frozen=True)
class Outcome:
    """What tracking decided: the new status, history rows and events to publish."""

    status: SagaStatus
    history: tuple[HistoryRecord, ...] = ()
    publish: tuple[str, ...] = ()  # event names to publish (after commit)
    changed: bool = True
    retry_in: float | None = None  # run the handler (or compensation) again after this wait
    parked: bool | None = None  # True: a compensation is exhausted, park for an operator


@dataclass
class _T:
    status: SagaStatus
    history: list[HistoryRecord] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)

    def step(self, i: int, **changes: Any) -> None:
        # Every change is checked against the same transition table as the orchestrator's core.
        steps = list(self.status.steps)
        check_step_transition(steps[i].state, changes.get("state", steps[i].state))
        steps[i] = replace(steps[i], **changes)
        self.status = replace(self.status, steps=tuple(steps))

    def saga(self, state: SagaState, failure: ErrorInfo | None = None) -> None:
        check_saga_transition(self.status.state, state)
        self.status = replace(self.status, state=state, failure=failure or self.status.failure)

    def out(self) -> Outcome:
        return Outcome(self.status, tuple(self.history), tuple(self.publish))


NO_FAILURE_EVENT = "failed for good and declares no failure event (fails_with)"


def new_choreo_status(choreo: Choreography[Any], saga_id: str) -> SagaStatus:
    return SagaStatus(
        id=saga_id,
        state=SagaState.STARTED,
        steps=tuple(StepStatus(name=h.name) for h in choreo.handlers),
    )


def event_seen(choreo: Choreography[Any], status: SagaStatus, event: str, at: datetime) -> Outcome:
    """An event of this saga was published: move the derived state along."""
    t = _T(status)
    t.history.append(HistoryRecord(HistoryKind.EVENT_PUBLISHED, detail={"event": event}))
    if status.state.terminal:
        return t.out()
    if event == choreo.completes_on:
        t.saga(SagaState.COMPLETED)
        t.history.append(HistoryRecord(HistoryKind.SAGA_COMPLETED))
        return t.out()
    failing = choreo.failure_events().get(event)
    if failing is not None:
        _begin_compensation(choreo, t, event, failing, at)
        return t.out()
    for h in choreo.handlers:
        if h.on == event and t.status.steps[h.index].state is StepState.PENDING:
            if t.status.state is SagaState.STARTED and event != choreo.starts_on:
                break
            t.step(
                h.index,
                state=StepState.RUNNING,
                started_at=at,
                deadline_at=at + timedelta(seconds=h.timeout),
            )
            if t.status.state is SagaState.STARTED:
                t.saga(SagaState.PENDING)
    return t.out()


def handler_done(
    choreo: Choreography[Any],
    status: SagaStatus,
    h: HandlerSpec,
    at: datetime,
    *,
    result: Any = None,
    error: ErrorInfo | None = None,
    attempt: int = 1,
) -> Outcome:
    t = _T(status)
    if error is None:
        t.step(
            h.index,
            state=StepState.SUCCEEDED,
            attempt=attempt,
            result=result,
            finished_at=at,
            deadline_at=None,
            error=None,
        )
        t.history.append(HistoryRecord(HistoryKind.STEP_SUCCEEDED, h.name, attempt))
        t.publish.append(h.emits)
    else:
        t.step(
            h.index,
            state=StepState.FAILED,
            attempt=attempt,
            error=error,
            finished_at=at,
            deadline_at=None,
        )
        t.history.append(HistoryRecord(HistoryKind.STEP_FAILED, h.name, attempt, error.as_json()))
        if h.fails_with:
            t.publish.append(h.fails_with)
        else:
            # No failure event, so nothing compensates the handlers before it: an operator
            # decides, flagged now rather than once the stuck threshold has passed.
            reason = {"reason": NO_FAILURE_EVENT}
            t.history.append(HistoryRecord(HistoryKind.STEP_PARKED, h.name, attempt, reason))
            return replace(t.out(), parked=True)
    return t.out()


def handler_failed(
    choreo: Choreography[Any],
    status: SagaStatus,
    h: HandlerSpec,
    at: datetime,
    error: ErrorInfo,
    *,
    attempt: int,
) -> Outcome:
    """A handler attempt failed: retry it after its policy's interval while attempts and the
    error allow, else it failed for good (its failure event, if declared, is published)."""
    if error.retryable and attempt < h.retry.max_attempts:
        wait = h.retry.interval(attempt, f"{status.id}:{h.name}")
        history = (
            HistoryRecord(HistoryKind.STEP_FAILED, h.name, attempt, error.as_json()),
            HistoryRecord(
                HistoryKind.RETRY_SCHEDULED, h.name, attempt + 1, {"interval": round(wait, 6)}
            ),
        )
        return Outcome(status, history, retry_in=wait)
    return handler_done(choreo, status, h, at, error=error, attempt=attempt)


def compensation_failed(
    choreo: Choreography[Any],
    status: SagaStatus,
    h: HandlerSpec,
    at: datetime,
    error: ErrorInfo,
    *,
    attempt: int,
) -> Outcome:
    """A compensation attempt failed: retry it per ``compensation_retry``; past it (or on a
    permanent error) the step is dead-lettered and the saga parked for an operator."""
    failed = HistoryRecord(HistoryKind.COMPENSATION_FAILED, h.name, attempt, error.as_json())
    if error.retryable and attempt < h.compensation_retry.max_attempts:
        wait = h.compensation_retry.interval(attempt, f"{status.id}:{h.name}:undo")
        return Outcome(status, (failed,), retry_in=wait)
    t = _T(status)
    t.step(h.index, state=StepState.COMPENSATION_FAILED, error=error)
    parked = HistoryRecord(HistoryKind.COMPENSATION_PARKED, h.name, attempt, error.as_json())
    t.history.extend((failed, parked))
    return replace(t.out(), parked=True)


_UNDONE = (StepState.COMPENSATING, StepState.COMPENSATION_FAILED)


def may_compensate(status: SagaStatus, h: HandlerSpec) -> bool:
    """Newest first: only when no later handler still waits for its compensation, or holds a
    parked one (dead-lettered, for an operator), as in the orchestrator's core."""
    if status.steps[h.index].state is not StepState.COMPENSATING:
        return False
    return all(s.state not in _UNDONE for s in status.steps[h.index + 1 :])


def compensation_done(
    choreo: Choreography[Any], status: SagaStatus, h: HandlerSpec, at: datetime
) -> Outcome:
    t = _T(status)
    t.step(h.index, state=StepState.COMPENSATED, finished_at=at, deadline_at=None)
    t.history.append(HistoryRecord(HistoryKind.STEP_COMPENSATED, h.name, 1))
    _finish_if_compensated(t)
    if t.status.state is SagaState.COMPENSATING:
        t.publish.append(COMPENSATED_EVENT)
    return t.out()


def timed_out(choreo: Choreography[Any], status: SagaStatus, at: datetime) -> Outcome:
    """Deadlines of handlers awaited past their timeout: flag, and fail where declared."""
    t = _T(status)
    for h in choreo.handlers:
        s = t.status.steps[h.index]
        if s.state is StepState.RUNNING and s.deadline_at is not None and s.deadline_at <= at:
            t.history.append(
                HistoryRecord(
                    HistoryKind.SAGA_STUCK,
                    h.name,
                    None,
                    {
                        "waiting_for": h.emits,
                        "since": s.started_at.isoformat() if s.started_at else None,
                    },
                )
            )
            if h.fail_on_timeout and h.fails_with:
                t.step(
                    h.index,
                    state=StepState.TIMED_OUT,
                    deadline_at=None,
                    finished_at=at,
                    error=ErrorInfo("StepTimeout", f"no {h.emits!r} within {h.timeout}s", False),
                )
                t.publish.append(h.fails_with)
            else:
                t.step(h.index, deadline_at=None)
    return Outcome(t.status, tuple(t.history), tuple(t.publish), changed=bool(t.history))


def _begin_compensation(
    choreo: Choreography[Any], t: _T, event: str, failing: HandlerSpec, at: datetime
) -> None:
    if t.status.state is SagaState.COMPENSATING:
        return
    error = t.status.steps[failing.index].error or ErrorInfo(event, f"{event} published", False)
    t.saga(SagaState.COMPENSATING, ErrorInfo(error.type, error.message, False))
    t.history.append(HistoryRecord(HistoryKind.COMPENSATION_STARTED, detail={"event": event}))
    for h in choreo.handlers:
        s = t.status.steps[h.index]
        if (
            s.state is StepState.SUCCEEDED
            and h.compensation is not None
            and event in h.compensate_on
        ):
            t.step(h.index, state=StepState.COMPENSATING)
        elif s.state is StepState.RUNNING:
            t.step(
                h.index,
                state=StepState.FAILED,
                deadline_at=None,
                finished_at=at,
                error=s.error or ErrorInfo(event, "saga failed while waiting", False),
            )
        elif s.state is StepState.PENDING:
            t.step(h.index, state=StepState.SKIPPED)
    _finish_if_compensated(t)


def _finish_if_compensated(t: _T) -> None:
    if not any(s.state in _UNDONE for s in t.status.steps):  # a parked one holds the saga
        t.saga(SagaState.FAILED)
        t.history.append(
            HistoryRecord(
                HistoryKind.SAGA_FAILED,
                detail=t.status.failure.as_json() if t.status.failure else None,
            )
        )
