"""Declaring choreographed sagas: services react to each other's events; no coordinator decides.

A ``Choreography`` declares the event that starts it, the handlers (which service reacts to which
event, what it emits on success and on failure), which failure events each handler's
compensation reacts to, and the event that completes it. It is checked when declared, and is
inert data: nothing here touches Celery or the store (``runner`` does, ``tracker`` decides).

Compensations run newest first without a coordinator: a compensation may run only when every
handler that completed after it is already compensated; each finished compensation publishes
``sagas.compensated``, which wakes the next one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel

from ..definition import QUEUE_RE, REQUIRED, P, Startable, StepContext, seconds_of
from ..errors import DefinitionError
from ..payload import NAME_RE
from ..registry import lookup_as, register
from ..retry import DEFAULT_COMPENSATION_RETRY, DEFAULT_RETRY, RetryPolicy
from ..state import SagaKind

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
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY


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
    compensation_retry: RetryPolicy

    @property
    def queue(self) -> str:
        return event_queue_name(self.service)


def event_queue_name(service: str) -> str:
    return f"sagas.events.{service}"


class Choreography(Startable[P]):
    kind: ClassVar[SagaKind] = SagaKind.CHOREOGRAPHED
    side_by_side: ClassVar[bool] = False  # one version per process (see sagas.registry)

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
        register(self)  # one namespace for saga names, shared with orchestrated sagas

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


def get_choreography(name: object) -> Choreography[Any]:
    """The registered choreography called ``name`` (``UnknownSaga`` if there is none)."""
    found: Choreography[Any] = lookup_as(name, Choreography, "a registered choreography")
    return found


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
        ordered.append(_spec(f"{where} handler {h.name!r}", len(ordered), h))
        event = h.emits
    if by_event:
        left = ", ".join(f"{h.name!r} (on {e!r})" for e, h in by_event.items())
        raise DefinitionError(f"{where}: no handler chain from the start event emits {left}")
    return tuple(ordered)


def _spec(hw: str, index: int, h: Handler) -> HandlerSpec:
    """Check one handler of the chain and give it its place."""
    if not QUEUE_RE.fullmatch(h.service):
        raise DefinitionError(f"{hw}: service {h.service!r} is not a valid queue name")
    if h.compensation is not None and h.compensation is not REQUIRED:
        if not callable(h.compensation):
            raise DefinitionError(f"{hw}: compensation must be a function")
    if not isinstance(h.retry, RetryPolicy) or not isinstance(h.compensation_retry, RetryPolicy):
        raise DefinitionError(f"{hw}: retry policies must be RetryPolicy instances")
    if h.fail_on_timeout and not h.fails_with:
        raise DefinitionError(f"{hw}: fail_on_timeout needs fails_with")
    return HandlerSpec(
        index=index,
        name=h.name,
        service=h.service,
        on=h.on,
        emits=h.emits,
        fn=h.fn,
        fails_with=_event(h.fails_with, f"{hw}: fails_with") if h.fails_with else None,
        compensation=h.compensation,
        compensate_on=tuple(_event(e, f"{hw}: compensate_on") for e in h.compensate_on),
        timeout=seconds_of(h.timeout, f"{hw}: timeout"),
        fail_on_timeout=h.fail_on_timeout,
        retry=h.retry,
        compensation_retry=h.compensation_retry,
    )


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
