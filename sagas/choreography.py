"""Choreographed sagas: services react to each other's events; no coordinator decides.

A ``Choreography`` declares the event that starts it, the handlers (which service reacts to which
event, what it emits on success and on failure), which failure events each handler's
compensation reacts to, and the event that completes it. It is checked when declared.

Tracking is a pure function like the orchestrator's core: ``track(choreo, status, observation)``
derives the saga's state (started, pending, compensating, completed, failed) from what was seen,
so ``saga list``/``saga show``/the sweeper treat a choreographed saga like an orchestrated one.

Compensations run newest first without a coordinator: a compensation may run only when every
handler that completed after it is already compensated; each finished compensation publishes
``sagas.compensated``, which wakes the next one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic

from pydantic import BaseModel

from .definition import NAME_RE, QUEUE_RE, REQUIRED, P, StepContext, _register, _seconds
from .errors import DefinitionError
from .machine import ErrorInfo, Record, SagaStatus, StepStatus
from .retry import DEFAULT_RETRY, RetryPolicy
from .state import HistoryKind, SagaState, StepState

EVENT_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")
COMPENSATED_EVENT = "sagas.compensated"  # internal: a compensation finished, the next may run
HandlerFn = Callable[[StepContext[Any]], Any]


@dataclass(frozen=True)
class Handler:
    """One service's reaction to one event."""

    name: str
    service: str  # events reach it on queue ``sagas.events.<service>``
    on: str  # the event it reacts to
    emits: str  # the event it publishes when it succeeds
    fn: HandlerFn
    fails_with: str | None = None  # the event it publishes when it fails for good
    compensation: HandlerFn | None = REQUIRED
    compensate_on: tuple[str, ...] = ()  # failure events that trigger the compensation
    timeout: timedelta | float = 30.0  # time allowed between ``on`` and ``emits``
    fail_on_timeout: bool = False  # past the timeout, publish ``fails_with`` (else only flag)
    retry: RetryPolicy = DEFAULT_RETRY


@dataclass(frozen=True)
class HandlerSpec:
    """A checked handler, with its place in the chain."""

    index: int
    name: str
    service: str
    on: str
    emits: str
    fn: HandlerFn
    fails_with: str | None
    compensation: HandlerFn | None
    compensate_on: tuple[str, ...]
    timeout: float
    fail_on_timeout: bool
    retry: RetryPolicy

    @property
    def queue(self) -> str:
        return event_queue_name(self.service)


def event_queue_name(service: str) -> str:
    return f"sagas.events.{service}"


class Choreography(Generic[P]):
    kind = "choreographed"

    def __init__(
        self,
        name: str,
        *,
        payload: type[P],
        starts_on: str,
        completes_on: str,
        handlers: Sequence[Handler],
        version: int = 1,
    ) -> None:
        where = f"choreography {name!r}"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise DefinitionError(f"choreography name {name!r} must match {NAME_RE.pattern}")
        if not (isinstance(payload, type) and issubclass(payload, BaseModel)):
            raise DefinitionError(f"{where}: payload must be a pydantic model class")
        self.name = name
        self.payload_model: type[P] = payload
        self.version = version
        self.starts_on = _event(starts_on, f"{where}: starts_on")
        self.completes_on = _event(completes_on, f"{where}: completes_on")
        self.handlers: tuple[HandlerSpec, ...] = _chain(where, self.starts_on, handlers)
        _check(where, self.starts_on, self.completes_on, self.handlers)
        self.deadline = None
        _register(self)  # type: ignore[arg-type]  # one namespace for saga names

    def __repr__(self) -> str:
        return f"<Choreography {self.name} {[h.name for h in self.handlers]}>"

    @property
    def steps(self) -> tuple[HandlerSpec, ...]:
        return self.handlers

    def handler(self, name: str) -> HandlerSpec:
        for h in self.handlers:
            if h.name == name:
                return h
        raise KeyError(name)

    def events(self) -> set[str]:
        names = {self.starts_on, self.completes_on}
        for h in self.handlers:
            names.update((h.on, h.emits, *h.compensate_on))
            if h.fails_with:
                names.add(h.fails_with)
        return names

    def failure_events(self) -> dict[str, HandlerSpec]:
        return {h.fails_with: h for h in self.handlers if h.fails_with}

    def subscriptions(self) -> dict[str, set[str]]:
        """service -> event names its queue must be bound to."""
        subs: dict[str, set[str]] = {}
        for h in self.handlers:
            keys = subs.setdefault(h.service, set())
            keys.add(h.on)
            if h.compensation is not None:
                keys.update((*h.compensate_on, COMPENSATED_EVENT))
        return subs

    def start(
        self,
        payload: P | dict[str, Any],
        *,
        saga_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Record the saga and publish its start event; returns the saga id."""
        from .eventbus import start_choreography

        return start_choreography(self, payload, saga_id=saga_id, correlation_id=correlation_id)


def _event(value: object, what: str) -> str:
    if not isinstance(value, str) or not EVENT_RE.fullmatch(value) or len(value) > 100:
        raise DefinitionError(f"{what}: {value!r} is not an event name like 'order.created'")
    if value == COMPENSATED_EVENT:
        raise DefinitionError(f"{what}: {value!r} is reserved")
    return value


def _chain(where: str, start: str, handlers: Sequence[Handler]) -> tuple[HandlerSpec, ...]:
    """Order handlers by following events from the start event; reject branches and leftovers."""
    if not handlers:
        raise DefinitionError(f"{where}: has no handlers")
    names = [h.name for h in handlers]
    for h in handlers:
        if not isinstance(h, Handler):
            raise DefinitionError(f"{where}: handlers must be Handler(...) instances, got {h!r}")
        if not NAME_RE.fullmatch(h.name):
            raise DefinitionError(f"{where} handler {h.name!r}: name must match {NAME_RE.pattern}")
        if names.count(h.name) > 1:
            raise DefinitionError(f"{where} handler {h.name!r}: duplicate handler name")
    by_event: dict[str, Handler] = {}
    for h in handlers:
        hw = f"{where} handler {h.name!r}"
        _event(h.on, f"{hw}: on")
        _event(h.emits, f"{hw}: emits")
        if h.on in by_event:
            raise DefinitionError(
                f"{hw}: event {h.on!r} already handled by {by_event[h.on].name!r} "
                "(one handler per event keeps the chain ordered)"
            )
        by_event[h.on] = h
    ordered: list[HandlerSpec] = []
    event = start
    while event in by_event:
        h = by_event.pop(event)
        hw = f"{where} handler {h.name!r}"
        if not QUEUE_RE.fullmatch(h.service):
            raise DefinitionError(f"{hw}: service {h.service!r} is not a valid queue name")
        if h.compensation is not None and h.compensation is not REQUIRED:
            if not callable(h.compensation):
                raise DefinitionError(f"{hw}: compensation must be a function")
        if h.fail_on_timeout and not h.fails_with:
            raise DefinitionError(f"{hw}: fail_on_timeout needs fails_with")
        ordered.append(
            HandlerSpec(
                index=len(ordered),
                name=h.name,
                service=h.service,
                on=h.on,
                emits=h.emits,
                fn=h.fn,
                fails_with=_event(h.fails_with, f"{hw}: fails_with") if h.fails_with else None,
                compensation=h.compensation,
                compensate_on=tuple(_event(e, f"{hw}: compensate_on") for e in h.compensate_on),
                timeout=_seconds(h.timeout, f"{hw}: timeout"),
                fail_on_timeout=h.fail_on_timeout,
                retry=h.retry,
            )
        )
        event = h.emits
    if by_event:
        left = ", ".join(f"{h.name!r} (on {e!r})" for e, h in by_event.items())
        raise DefinitionError(f"{where}: no handler chain from the start event emits {left}")
    return tuple(ordered)


def _check(where: str, start: str, complete: str, chain: tuple[HandlerSpec, ...]) -> None:
    if chain[-1].emits != complete:
        raise DefinitionError(
            f"{where}: completes_on {complete!r} is never emitted (the last handler, "
            f"{chain[-1].name!r}, emits {chain[-1].emits!r})"
        )
    emitted = {start} | {h.emits for h in chain} | {h.fails_with for h in chain if h.fails_with}
    for i, h in enumerate(chain):
        hw = f"{where} handler {h.name!r}"
        downstream = [d.fails_with for d in chain[i + 1 :] if d.fails_with]
        for e in h.compensate_on:
            if e not in emitted:
                raise DefinitionError(f"{hw}: compensate_on {e!r} is an event nobody emits")
            if e not in downstream:
                raise DefinitionError(
                    f"{hw}: compensate_on {e!r} is not a failure of a later handler"
                )
        if h.compensation is REQUIRED:
            if downstream:
                raise DefinitionError(
                    f"{hw}: later handlers can fail ({', '.join(downstream)}), so it needs a "
                    "compensation, or compensation=None to mark that it needs none"
                )
            object.__setattr__(h, "compensation", None)
        elif h.compensation is not None:
            missing = [e for e in downstream if e not in h.compensate_on]
            if missing:
                raise DefinitionError(
                    f"{hw}: has a compensation but does not react to the later failure "
                    f"event(s) {', '.join(missing)} (add them to compensate_on)"
                )


# -- tracking: the pure rules that derive a choreographed saga's state --------------------------


@dataclass(frozen=True)
class Outcome:
    """What tracking decided: the new status, history rows and events to publish."""

    status: SagaStatus
    history: tuple[Record, ...] = ()
    publish: tuple[str, ...] = ()  # event names to publish (after commit)
    changed: bool = True


@dataclass
class _T:
    status: SagaStatus
    history: list[Record] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)

    def step(self, i: int, **changes: Any) -> None:
        steps = list(self.status.steps)
        steps[i] = replace(steps[i], **changes)
        self.status = replace(self.status, steps=tuple(steps))

    def saga(self, state: SagaState, failure: ErrorInfo | None = None) -> None:
        self.status = replace(self.status, state=state, failure=failure or self.status.failure)

    def out(self) -> Outcome:
        return Outcome(self.status, tuple(self.history), tuple(self.publish))


def new_choreo_status(choreo: Choreography[Any], saga_id: str) -> SagaStatus:
    return SagaStatus(
        id=saga_id,
        state=SagaState.STARTED,
        steps=tuple(StepStatus(name=h.name) for h in choreo.handlers),
    )


def event_seen(choreo: Choreography[Any], status: SagaStatus, event: str, at: datetime) -> Outcome:
    """An event of this saga was published: move the derived state along."""
    t = _T(status)
    t.history.append(Record(HistoryKind.EVENT_PUBLISHED, detail={"event": event}))
    if status.state.terminal:
        return t.out()
    if event == choreo.completes_on:
        t.saga(SagaState.COMPLETED)
        t.history.append(Record(HistoryKind.SAGA_COMPLETED))
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
        t.history.append(Record(HistoryKind.STEP_SUCCEEDED, h.name, attempt))
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
        t.history.append(Record(HistoryKind.STEP_FAILED, h.name, attempt, error.as_json()))
        if h.fails_with:
            t.publish.append(h.fails_with)
    return t.out()


def may_compensate(status: SagaStatus, h: HandlerSpec) -> bool:
    """Newest first: only when no later handler is still waiting for its compensation."""
    if status.steps[h.index].state is not StepState.COMPENSATING:
        return False
    return all(s.state is not StepState.COMPENSATING for s in status.steps[h.index + 1 :])


def compensation_done(
    choreo: Choreography[Any], status: SagaStatus, h: HandlerSpec, at: datetime
) -> Outcome:
    t = _T(status)
    t.step(h.index, state=StepState.COMPENSATED, finished_at=at, deadline_at=None)
    t.history.append(Record(HistoryKind.STEP_COMPENSATED, h.name, 1))
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
                Record(
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
    t.history.append(Record(HistoryKind.COMPENSATION_STARTED, detail={"event": event}))
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
    if not any(s.state is StepState.COMPENSATING for s in t.status.steps):
        t.saga(SagaState.FAILED)
        t.history.append(
            Record(
                HistoryKind.SAGA_FAILED,
                detail=t.status.failure.as_json() if t.status.failure else None,
            )
        )
