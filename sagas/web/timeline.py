"""The saga page's pictures, computed from what the store recorded (pure, no I/O):

- the **timeline**: one row per step, a bar per attempt (forward, compensation, a wait for a
  signal) placed by its recorded start and end on the saga's span, and the gaps between a
  failed attempt and the next (retry backoff) drawn as waits;
- the **diagram**: the definition's steps in order (kind, queue, pivot, group, failure route)
  with the saga's position on it, and its Mermaid text (``sagas.graph``) to copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..definition import Saga
from ..graph import mermaid
from ..routes import AwaitOperator, Park, RetryAfter
from ..state import StepState
from ..views import AttemptView, SagaDetail, StepView


@dataclass(frozen=True, slots=True)
class Bar:
    kind: str  # forward, compensate, signal, backoff
    outcome: str  # the attempt's outcome; "wait" for a backoff
    label: str
    left: float  # percent of the saga's span
    width: float
    start: datetime | None
    end: datetime | None
    seconds: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Row:
    step: StepView
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Timeline:
    start: datetime
    end: datetime
    rows: tuple[Row, ...]

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def _end_of(detail: SagaDetail) -> datetime:
    times = [detail.updated_at, detail.created_at]
    for step in detail.steps:
        for a in step.attempts:
            times.extend(t for t in (a.started_at, a.ended_at) if t is not None)
    if detail.finished_at is not None:
        times.append(detail.finished_at)
    return max(times)


def timeline(detail: SagaDetail) -> Timeline:
    start, end = detail.created_at, _end_of(detail)
    span = max((end - start).total_seconds(), 1e-6)

    def place(a: datetime, b: datetime) -> tuple[float, float]:
        left = max(0.0, min(100.0, (a - start).total_seconds() / span * 100))
        width = max(0.6, min(100.0 - left, (b - a).total_seconds() / span * 100))
        return round(left, 3), round(width, 3)

    rows = []
    for step in detail.steps:
        bars: list[Bar] = []
        previous: AttemptView | None = None
        for a in step.attempts:
            a_start = a.started_at or a.ended_at or start
            a_end = a.ended_at or end
            if (
                previous is not None
                and previous.ended_at is not None
                and a.started_at is not None
                and previous.action == a.action
                and a.started_at > previous.ended_at
            ):
                left, width = place(previous.ended_at, a.started_at)
                gap = (a.started_at - previous.ended_at).total_seconds()
                bars.append(
                    Bar(
                        "backoff",
                        "wait",
                        "retry wait",
                        left,
                        width,
                        previous.ended_at,
                        a.started_at,
                        gap,
                        None,
                    )  # fmt: skip
                )
            left, width = place(a_start, a_end)
            kind = "signal" if a.waited_for_signal else a.action
            what = {"forward": "attempt", "compensate": "compensation", "signal": "wait"}[kind]
            seconds = (a_end - a_start).total_seconds() if a.started_at else None
            error = f"{a.error.type}: {a.error.message}" if a.error else None
            bars.append(
                Bar(
                    kind,
                    a.outcome,
                    f"{what} {a.attempt}: {a.outcome}",
                    left,
                    width,
                    a.started_at,
                    a.ended_at,
                    seconds,
                    error,
                )  # fmt: skip
            )
            previous = a
        rows.append(Row(step, tuple(bars)))
    return Timeline(start, end, tuple(rows))


# -- the definition diagram --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    kind: str  # step, remote, wait, pivot
    where: str  # queue or task
    notes: tuple[str, ...]
    state: str
    here: bool  # the saga is at (or stopped at) this step
    group: str | None


@dataclass(frozen=True, slots=True)
class Diagram:
    nodes: tuple[Node, ...]
    compensations: tuple[str, ...]  # newest first: what a failure undoes
    mermaid: str | None  # None: the definition is not loaded in this process


_AT = {
    StepState.RUNNING,
    StepState.PARKED,
    StepState.FAILED,
    StepState.TIMED_OUT,
    StepState.COMPENSATING,
    StepState.COMPENSATION_FAILED,
}


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _route(step: Any) -> tuple[str, ...]:
    route = step.on_exhausted
    if isinstance(route, RetryAfter):
        return (f"out of retries: wait {_span(route.seconds)}, {route.times}x",)
    if isinstance(route, AwaitOperator):
        return ("out of retries: wait for an operator's go-ahead",)
    if isinstance(route, Park):
        return ("out of retries: park for an operator",)
    return ()


def diagram(detail: SagaDetail, saga: Saga[Any] | None) -> Diagram:
    """The definition's steps with the saga's states on them (``saga`` None: the steps the
    store recorded, without the definition's details)."""
    states = {s.name: s for s in detail.steps}
    here = {
        s.name
        for s in detail.steps
        if s.state in _AT or (s.state is StepState.PENDING and s.attempt > 0)
    }
    if saga is None:
        nodes = tuple(
            Node(s.name, "step", "", (), s.state.value, s.name in here, None) for s in detail.steps
        )
        return Diagram(nodes, (), None)
    out = []
    for step in saga.steps:
        kind = (
            "wait" if step.is_wait else "pivot" if step.pivot else "remote" if step.task else "step"
        )
        where = "" if step.is_wait else f"task {step.task}" if step.task else f"queue {step.queue}"
        notes = [*_route(step)]
        if step.is_wait:
            notes.insert(0, f"waits up to {_span(step.timeout)} for the signal {step.name}")
        if step.compensable:
            notes.append("compensated on failure")
        found = states.get(step.name)
        out.append(
            Node(
                step.name,
                kind,
                where,
                tuple(notes),
                found.state.value if found else "pending",
                step.name in here,
                step.group,
            )  # fmt: skip
        )
    undo = tuple(s.name for s in reversed(saga.steps) if s.compensable)
    return Diagram(tuple(out), undo, mermaid(saga))
