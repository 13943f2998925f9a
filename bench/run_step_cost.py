"""The participant's own cost per attempt, outside the database and the broker:

    .venv/bin/python -m bench.run_step_cost LABEL [--tracing] [--metrics]   (from the checkout)

Times ``sagas.participant.run_step`` for a no-op local step. Without options telemetry is off
(no tracer provider, no metrics sink): what the off path of tracing and metrics adds to every
attempt. ``--tracing``: an SDK tracer provider whose exporter drops the spans, and the saga's
trace context passed in (one span per attempt); ``--metrics``: the Prometheus sink in
multiprocess mode. Prints seven rounds of 20,000 attempts (CPU microseconds per attempt) and
the package it measured.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from typing import Any

if "--metrics" in sys.argv:  # prometheus_client picks its mode when first imported
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="run-step-prom-")

from pydantic import BaseModel  # noqa: E402

import sagas  # noqa: E402
from sagas import Saga  # noqa: E402
from sagas.install import configure  # noqa: E402
from sagas.messages import StepCommand  # noqa: E402
from sagas.participant import run_step  # noqa: E402
from sagas.settings import Settings  # noqa: E402
from sagas.state import Action  # noqa: E402


class P(BaseModel):
    n: int


def _tracing_on() -> dict[str, str]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from sagas import tracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    with tracing.starting("rs_bench", "x") as carrier:
        return carrier


def main() -> None:
    logging.disable(logging.CRITICAL)
    url = f"sqlite:///{tempfile.mkdtemp()}/x.db"
    configure(settings=Settings(database_url=url, metrics="--metrics" in sys.argv))
    trace = None
    if "--tracing" in sys.argv:
        trace = _tracing_on()
    saga = Saga("rs_bench", payload=P)

    @saga.step(queue="q", compensation=None)
    def a(ctx: Any) -> dict[str, int]:
        return {"ok": 1}

    step = saga.step_def("a")
    assert step.fn is not None
    cmd = StepCommand(
        saga_id="x", saga="rs_bench", version=1, step="a", action=Action.FORWARD,
        attempt=1, correlation_id="c", payload={"n": 1},
    )  # fmt: skip
    for _ in range(2000):
        run_step(saga, step, step.fn, cmd, trace)
    rounds = []
    for _ in range(7):
        began = time.process_time()
        for _ in range(20000):
            run_step(saga, step, step.fn, cmd, trace)
        rounds.append((time.process_time() - began) / 20000 * 1e6)
    label = " ".join(sys.argv[1:])
    shown = " ".join(f"{r:.1f}" for r in rounds)
    print(f"{label} us/attempt {shown} min {min(rounds):.1f} ({sagas.__file__})")


if __name__ == "__main__":
    main()
