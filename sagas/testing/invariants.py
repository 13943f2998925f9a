"""What must hold once an orchestrated saga has settled, whatever went wrong on the way.

``check_saga(store, saga_id, effects=..., calls=...)`` returns the violations (empty: all hold):

1. **Settled.** The saga is ``completed`` or ``failed`` (not running, not parked).
2. **Terminal states are consistent.** ``completed``: every step succeeded. ``failed``: no step
   left running or compensating, and every step that may have taken effect (succeeded, timed
   out, or in doubt) and has a compensation is ``compensated``. No timer left, a finish time set.
3. **Attempts within their caps** (``retry.max_attempts``, ``compensation_retry.max_attempts``,
   plus operator retries).
4. **Compensations newest first**, each dispatched only after every newer one completed, and
   nothing dispatched forward once compensation began.
5. **No unsent commands**: the outbox is empty.
6. **Effects exactly once** (when the test says what took effect: ``effects`` maps ``"<step>"``
   and ``"<step>.compensate"`` to how many times the effect is applied in the world): a
   completed saga has each forward effect once and no compensation; a failed one has each
   forward effect at most once and, for a compensable step, as many compensations (once).
7. **Nothing run forward after compensation began** (when the test recorded the calls:
   ``calls`` lists ``(step, action)`` in the order the step functions were entered).

The fault-injection suite (``tests/faults/invariants.py``) checks the same over PostgreSQL
with its probe's effect tables; this one reads only the store's API, so it runs anywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..catalog import get_saga
from ..definition import Saga
from ..errors import SagaNotFound
from ..machine import SagaStatus
from ..state import Action, HistoryKind, SagaState, StepState
from ..store import HistoryEntry, SagaRecord, Store

UNSETTLED = {
    StepState.RUNNING,
    StepState.PENDING,
    StepState.COMPENSATING,
    StepState.COMPENSATION_FAILED,
}
MAY_HAVE_TAKEN_EFFECT = {StepState.SUCCEEDED, StepState.TIMED_OUT}


def check_saga(
    store: Store,
    saga_id: str,
    *,
    effects: Mapping[str, int] | None = None,
    calls: Sequence[tuple[str, Action]] | None = None,
) -> list[str]:
    """The violations of the invariants above for one saga (empty: all hold)."""
    try:
        record, status, history = store.get(saga_id)
    except SagaNotFound:
        return [f"saga {saga_id!r} does not exist (lost start?)"]
    saga = get_saga(record.name)
    assert isinstance(saga, Saga), "only orchestrated sagas are checked here"
    problems: list[str] = []
    if not record.state.terminal:
        problems.append(
            f"not settled: {record.state.value}" + (" and parked" if record.parked else "")
        )
    _terminal(saga, record, status, problems)
    _caps(saga, status, history, problems)
    _order(status, history, problems)
    if record.outbox or record.outbox_at is not None:
        problems.append(f"commands left unsent in the outbox: {record.outbox}")
    if effects is not None:
        _effects(saga, record, status, effects, problems)
    if calls is not None:
        _forward_after_compensation(calls, problems)
    return problems


def _terminal(saga: Saga[Any], record: SagaRecord, status: SagaStatus, problems: list[str]) -> None:
    if record.state is SagaState.COMPLETED:
        bad = [s.name for s in status.steps if s.state is not StepState.SUCCEEDED]
        if bad:
            problems.append(f"completed with steps not succeeded: {bad}")
    elif record.state is SagaState.FAILED:
        for step, s in zip(saga.steps, status.steps, strict=True):
            if s.state in UNSETTLED:
                problems.append(f"failed with step {s.name} left {s.state.value}")
            took_effect = s.state in MAY_HAVE_TAKEN_EFFECT or (
                s.in_doubt and s.state is not StepState.COMPENSATED
            )
            if took_effect and step.compensable:
                problems.append(f"failed but {s.name} ({s.state.value}) was not compensated")
    if record.state.terminal:
        if record.wake_at is not None:
            problems.append(f"finished with a timer left (wake_at {record.wake_at})")
        if record.finished_at is None:
            problems.append("finished without finished_at")


def _caps(
    saga: Saga[Any], status: SagaStatus, history: list[HistoryEntry], problems: list[str]
) -> None:
    operator = Counter(h.step for h in history if h.kind == HistoryKind.OPERATOR_RETRY.value)
    for step, s in zip(saga.steps, status.steps, strict=True):
        if s.attempt > step.retry.max_attempts + operator[s.name]:
            problems.append(f"{s.name}: {s.attempt} attempts > cap {step.retry.max_attempts}")
        cap = step.compensation_retry.max_attempts + operator[s.name]
        if s.compensation_attempt > cap:
            problems.append(f"{s.name}: {s.compensation_attempt} compensation attempts > {cap}")


def _order(status: SagaStatus, history: list[HistoryEntry], problems: list[str]) -> None:
    index = {s.name: i for i, s in enumerate(status.steps)}
    compensating = False
    dispatched: list[int] = []
    done: set[int] = set()
    for h in history:
        if h.kind == HistoryKind.COMPENSATION_STARTED.value:
            compensating = True
        elif h.kind == HistoryKind.STEP_DISPATCHED.value and compensating:
            problems.append(f"{h.step} dispatched forward after compensation began")
        elif h.kind == HistoryKind.COMPENSATION_DISPATCHED.value and h.step in index:
            i = index[h.step]
            if dispatched and dispatched[-1] != i and i > dispatched[-1]:
                problems.append(f"compensation of {h.step} dispatched after an older step's")
            dispatched.append(i)
            newer = {j for j in dispatched if j > i}
            if not newer <= done:
                missing = sorted(status.steps[j].name for j in newer - done)
                problems.append(f"{h.step} compensation dispatched before {missing} were done")
        elif h.kind == HistoryKind.STEP_COMPENSATED.value and h.step in index:
            if index[h.step] in done:
                problems.append(f"{h.step} recorded compensated twice")
            done.add(index[h.step])
    order = [h.step for h in history if h.kind == HistoryKind.STEP_COMPENSATED.value]
    indexes = [index[s] for s in order if s in index]
    if indexes != sorted(indexes, reverse=True):
        problems.append(f"compensations not newest first: {order}")


def _effects(
    saga: Saga[Any],
    record: SagaRecord,
    status: SagaStatus,
    effects: Mapping[str, int],
    problems: list[str],
) -> None:
    for step, s in zip(saga.steps, status.steps, strict=True):
        forward = effects.get(step.name)
        undo = effects.get(f"{step.name}.compensate")
        if forward is not None and forward > 1:
            problems.append(f"{step.name}: effect applied {forward} times")
        if undo is not None and undo > 1:
            problems.append(f"{step.name}: compensation applied {undo} times")
        if record.state is SagaState.COMPLETED:
            if forward is not None and forward != 1:
                problems.append(f"completed but {step.name}'s effect applied {forward} times")
            if undo:
                problems.append(f"completed but {step.name} was compensated in effect")
        elif record.state is SagaState.FAILED and step.compensable:
            if forward and undo is not None and undo != 1:
                problems.append(
                    f"failed: {step.name} took effect {forward}x, compensated {undo}x (not once)"
                )
            if not forward and undo and s.state is not StepState.COMPENSATED:
                problems.append(f"{step.name} compensated in effect but {s.state.value} in store")


def _forward_after_compensation(calls: Sequence[tuple[str, Action]], problems: list[str]) -> None:
    began = next((n for n, (_, a) in enumerate(calls) if a is Action.COMPENSATE), None)
    if began is None:
        return
    late = [step for step, action in calls[began:] if action is Action.FORWARD]
    if late:
        problems.append(f"step(s) {late} ran forward after compensation began")
