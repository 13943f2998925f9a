"""OpenTelemetry spans for sagas: the one module that imports ``opentelemetry`` (the API only).

Off unless the process configured an SDK tracer provider (``trace.set_tracer_provider``): every
entry point first asks ``active()``, one global read and an ``isinstance``, and returns at once.

The shape of a saga's trace. A span cannot stay open across processes, and the API cannot give a
span an id chosen in advance, so one long span cannot be the parent of steps that run before it
is emitted. Instead:

- ``saga.start <name>``: a short span where the saga is started (child of the caller's span: the
  web request that called ``saga.start`` or ``start_saga.delay``, through the message headers).
  Its context is stored with the saga (``saga.trace_context``) and is the anchor of the rest.
- ``saga.step <saga>.<step>`` / ``saga.compensate <saga>.<step>``: one span per attempt, live in
  the worker while the user's function runs (so the function's own spans nest under it), child of
  the anchor, with a link to the span current when it began: the Celery task's span when
  ``opentelemetry-instrumentation-celery`` made one (that span is the task, ours the attempt: an
  inline step has no task of its own, so the two never duplicate each other).
- ``saga <name>``: emitted when the saga finishes, with the start time recorded in the store and
  the outcome, child of the anchor.

Commands are published with the anchor as the current context, so the Celery instrumentation's
publish spans land in the saga's trace too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, StatusCode

TRACER_NAME = "sagas"
TRACE_HEADER = "saga_trace"  # Celery message header carrying a W3C trace context (a dict)
Carrier = dict[str, str]


def active() -> bool:
    """Is an SDK tracer provider configured? (The API's defaults are no-op providers.)"""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def _tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def current_carrier() -> Carrier | None:
    """The caller's trace context as a carrier for a message header (None: nothing to carry)."""
    if not active() or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: Carrier = {}
    propagate.inject(carrier)
    return carrier or None


def _context_of(carrier: Mapping[str, Any] | None) -> otel_context.Context | None:
    if not isinstance(carrier, Mapping):
        return None
    clean = {k: v for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str)}
    return propagate.extract(clean) if clean else None


@contextmanager
def starting(name: str, saga_id: str, caller: Mapping[str, Any] | None = None) -> Iterator[Carrier]:
    """The ``saga.start`` span around a start; yields the carrier to store with the saga (empty
    when tracing is off). ``caller``: the context from the start message's header, used when
    no span is current here (no Celery instrumentation in this worker)."""
    if not active():
        yield {}
        return
    parent = None
    if not trace.get_current_span().get_span_context().is_valid:
        parent = _context_of(caller)
    attributes = {"saga.id": saga_id, "saga.name": name}
    with _tracer().start_as_current_span(
        f"saga.start {name}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes=attributes,
        record_exception=False,  # a rejected start's message may quote the payload
    ):
        carrier: Carrier = {}
        propagate.inject(carrier)
        yield carrier


class Attempt:
    """The span of one step attempt: ``finish`` records its outcome."""

    def __init__(self, span: trace.Span | None) -> None:
        self._span = span

    def finish(self, outcome: str, error_type: str | None = None) -> None:
        if self._span is None:
            return
        self._span.set_attribute("outcome", outcome)
        if error_type is not None:
            self._span.set_attribute("error.type", error_type)
            self._span.set_status(StatusCode.ERROR, error_type)


_OFF = Attempt(None)


@contextmanager
def attempt(
    anchor: Mapping[str, Any] | None,
    *,
    saga: str,
    saga_id: str,
    step: str,
    attempt: int,
    compensation: bool,
) -> Iterator[Attempt]:
    """The span of one attempt of a step (or of its compensation), current while it runs."""
    parent = _context_of(anchor) if anchor and active() else None
    if parent is None:
        yield _OFF
        return
    # Always the anchor's child, so a saga's attempts sit side by side under its start whichever
    # process ran them; the span current here (the Celery instrumentation's task span, or a
    # caller's when a test runs the engine in-process) is linked instead of being the parent.
    here = trace.get_current_span().get_span_context()
    links = [trace.Link(here)] if here.is_valid else []
    kind = "compensate" if compensation else "step"
    attributes: dict[str, str | int] = {
        "saga.id": saga_id,
        "saga.name": saga,
        "step": step,
        "attempt": attempt,
    }
    with _tracer().start_as_current_span(
        f"saga.{kind} {saga}.{step}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=False,  # a step's exception text may carry payload data
        set_status_on_exception=False,
    ) as span:
        yield Attempt(span)


def finished(
    anchor: Mapping[str, Any] | None,
    *,
    name: str,
    saga_id: str,
    started: datetime,
    ended: datetime,
    outcome: str,
) -> None:
    """Emit the ``saga <name>`` span from its recorded start to its end (both database times)."""
    parent = _context_of(anchor) if anchor and active() else None
    if parent is None:
        return
    span = _tracer().start_span(
        f"saga {name}",
        context=parent,
        start_time=_nanos(started),
        attributes={"saga.id": saga_id, "saga.name": name, "outcome": outcome},
    )
    if outcome != "completed":
        span.set_status(StatusCode.ERROR, outcome)
    span.end(end_time=max(_nanos(ended), _nanos(started)))


@contextmanager
def publishing(anchor: Mapping[str, Any] | None) -> Iterator[None]:
    """Publish with the saga's anchor as the current context (the Celery instrumentation's
    publish spans then join the saga's trace). A no-op when tracing is off."""
    parent = _context_of(anchor) if anchor and active() else None
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


def _nanos(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)
