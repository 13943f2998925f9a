"""The web app of the tracing test, run in a fresh interpreter:

    python -m tests.integration.telemetry_client OUT.json DELAY_ID:MODE START_ID:MODE

It configures the OpenTelemetry SDK with the SDK's ``InMemorySpanExporter`` (plus the Celery
instrumentation when ``TEL_INSTRUMENT=1``), installs sagas on its Celery app as the README says,
and handles two "requests": ``POST /orders`` spans, one calling ``start_saga.delay`` and one
calling ``traced_order.start`` (in-process). Its finished spans go to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
if os.environ.get("TEL_INSTRUMENT") == "1":
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()

import sagas  # noqa: E402 - the SDK is configured first, as a user's web app would
from sagas import start_saga  # noqa: E402
from tests.integration.telemetry_app import span_as_dict, traced_order  # noqa: E402
from tests.worker_harness import base_app  # noqa: E402


def main() -> None:
    out, delayed, direct = sys.argv[1], sys.argv[2], sys.argv[3]
    app = base_app("telemetry-client", [], "%(message)s")
    app.set_current()  # the web app's Celery app, as a Django or Flask project's is
    sagas.install(app)
    tracer = trace.get_tracer("shop.web")
    sid, mode = delayed.split(":")
    with tracer.start_as_current_span("POST /orders", attributes={"request": "delay"}):
        start_saga.delay("traced_order", {"ref": sid, "mode": mode}, saga_id=sid)
    sid, mode = direct.split(":")
    with tracer.start_as_current_span("POST /orders", attributes={"request": "start"}):
        traced_order.start({"ref": sid, "mode": mode}, saga_id=sid)
    with open(out, "w") as f:
        json.dump([span_as_dict(s) for s in exporter.get_finished_spans()], f)


if __name__ == "__main__":
    main()
