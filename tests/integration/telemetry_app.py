"""A small deployment for the telemetry tests: ``celery -A tests.integration.telemetry_app worker``.

``traced_order``: ``reserve`` (queue ``tel_a``, compensated by ``release``), ``charge`` (queue
``tel_b``: fails permanently when the payload says ``fail``; fails once, transiently, when it
says ``flaky``), ``ship`` (``tel_a``). A worker on ``tel_a`` and one on ``tel_b`` hand the saga
to each other by message at every step.

This module is the user's setup, as the README describes it: ``sagas.install(app)``, and when
``TEL_SPANS_DIR`` is set, the OpenTelemetry SDK with an exporter that writes each finished span
as a JSON line to a file per process there (the test reads them back); ``TEL_INSTRUMENT=1``
adds ``opentelemetry-instrumentation-celery``, instrumented in each prefork child.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init
from pydantic import BaseModel

import sagas
from sagas import PermanentError, RetryPolicy, Saga, StepContext, TransientError
from tests.worker_harness import base_app, start_worker_process

SPANS_DIR = os.environ.get("TEL_SPANS_DIR", "")
INSTRUMENT = os.environ.get("TEL_INSTRUMENT") == "1"


class Order(BaseModel):
    ref: str
    mode: str = "ok"  # ok | fail | flaky


traced_order = Saga("traced_order", payload=Order)


def release(ctx: StepContext[Order]) -> None:
    return None


@traced_order.step(queue="tel_a", timeout=30, compensation=release)
def reserve(ctx: StepContext[Order]) -> dict[str, str]:
    return {"reserved": ctx.payload.ref}


@traced_order.step(
    queue="tel_b",
    timeout=30,
    compensation=None,
    retry=RetryPolicy.build(max_attempts=3, initial=0.05, backoff=1.0, max_interval=0.05),
)
def charge(ctx: StepContext[Order]) -> dict[str, str]:
    if ctx.payload.mode == "fail":
        raise PermanentError("card declined")
    if ctx.payload.mode == "flaky" and ctx.attempt == 1:
        raise TransientError("gateway busy")
    return {"charged": ctx.payload.ref}


@traced_order.step(queue="tel_a", timeout=30, compensation=None)
def ship(ctx: StepContext[Order]) -> dict[str, str]:
    return {"shipped": ctx.payload.ref}


class FileExporter:
    """A span exporter of the test's own: one JSON object per finished span, appended to a file
    per process (no collector needed, and the test reads every worker's spans)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        with (self.folder / f"spans-{os.getpid()}.jsonl").open("a") as out:
            for span in spans:
                out.write(json.dumps(span_as_dict(span)) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_as_dict(span: Any) -> dict[str, Any]:
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "links": [format(link.context.span_id, "016x") for link in span.links],
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


def _tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(SPANS_DIR)))  # type: ignore[arg-type]
    trace.set_tracer_provider(provider)


if SPANS_DIR:
    _tracing()  # before the fork: SimpleSpanProcessor has no thread, children inherit it


@worker_process_init.connect(weak=False)
def _instrument_child(**_: Any) -> None:
    if INSTRUMENT:  # the instrumentation's own advice for prefork: in each child
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()


LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
app = base_app("sagas_telemetry", [], LOG_FORMAT)
if os.environ.get("SAGAS_DATABASE_URL"):
    sagas.install(app, beat=False)
start_worker_process(app)
