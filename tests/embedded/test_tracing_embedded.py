"""Spans of steps run inline (one task runs the next step, no message between them), in a fresh
interpreter with the OpenTelemetry SDK's ``InMemorySpanExporter`` and the test kit's runtime
(``local_runtime`` consuming both of the shop's queues). The saga's trace context is stored with
it, every attempt's span is a child of ``saga.start`` even with no message to carry it, and a
span the step function opens nests under its step's span."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from sagas.testing import StepDoubles, local_runtime
from tests.testing import shop

def traced_charge(ctx):
    with trace.get_tracer("shop").start_as_current_span("gateway.charge"):
        return {"charged": ctx.payload.guest}
StepDoubles().replace(shop.charge_card, traced_charge)

with local_runtime(shop.app, consume=["tables", "payments"]) as rt:
    with trace.get_tracer("shop.web").start_as_current_span("POST /dinner"):
        sid = rt.start(shop.dinner, {"guest": "jo"})
    record = rt.store.get(sid)[0]
    out = {
        "state": record.state.value,
        "trace_context": record.trace_context,
        "messages": len(rt.broker.log),
        "spans": [
            {"name": s.name, "id": s.context.span_id, "parent": s.parent.span_id if s.parent else None,
             "trace": s.context.trace_id, "attributes": dict(s.attributes)}
            for s in exporter.get_finished_spans()
        ],
    }
print(json.dumps(out))
"""


def test_inline_steps_nest_under_the_saga_start_span() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["state"] == "completed"
    assert out["trace_context"]["traceparent"].startswith("00-")
    spans = {s["name"]: s for s in out["spans"]}
    assert {"POST /dinner", "saga.start kit_dinner", "saga kit_dinner"} <= spans.keys()
    start, request = spans["saga.start kit_dinner"], spans["POST /dinner"]
    assert start["parent"] == request["id"]
    assert len({s["trace"] for s in out["spans"]}) == 1
    steps = [s for s in out["spans"] if s["name"].startswith("saga.step")]
    assert sorted(s["name"] for s in steps) == [
        "saga.step kit_dinner.book_table",
        "saga.step kit_dinner.charge_card",
    ]
    assert all(s["parent"] == start["id"] for s in steps)
    assert spans["saga kit_dinner"]["parent"] == start["id"]
    assert spans["saga kit_dinner"]["attributes"]["outcome"] == "completed"
    charge = spans["saga.step kit_dinner.charge_card"]
    assert spans["gateway.charge"]["parent"] == charge["id"]
    assert charge["attributes"] == {
        "saga.id": start["attributes"]["saga.id"],
        "saga.name": "kit_dinner",
        "step": "charge_card",
        "attempt": 1,
        "outcome": "ok",
    }
