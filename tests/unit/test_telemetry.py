"""Telemetry pieces on their own: tracing is off without an SDK, the Prometheus sink's names
and bounded labels, the JSON log formatter, and the settings that switch them on."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry

from sagas import tracing
from sagas.errors import ConfigurationError
from sagas.observability import JSONFormatter, Metrics, SagaContextFilter, saga_context
from sagas.prometheus import UNKNOWN, PrometheusSink, asgi_app, enable, wsgi_app
from sagas.settings import Settings


def test_tracing_is_off_without_an_sdk_tracer_provider() -> None:
    # This process never configures an SDK (the tests that do run in subprocesses).
    assert not tracing.active()
    assert tracing.current_carrier() is None
    with tracing.starting(
        "s", "id-1", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    ) as c:
        assert c == {}
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    with tracing.attempt(
        carrier, saga="s", saga_id="i", step="a", attempt=1, compensation=False
    ) as a:
        assert a is tracing._OFF
        a.finish("error", "Boom")  # a no-op, not an error


def _sink(registry: CollectorRegistry) -> PrometheusSink:
    sink = enable(lambda name: name == "order", registry=registry)
    assert isinstance(sink, PrometheusSink)
    return sink


def test_the_sink_exports_known_names_with_bounded_labels() -> None:
    registry = CollectorRegistry()
    metrics = Metrics()
    metrics.add_sink(_sink(registry))
    metrics.add_sink(metrics._sinks[0])  # idempotent
    assert len(metrics._sinks) == 1 and metrics.exporting
    metrics.inc("sagas_started_total", saga="order")
    metrics.inc("sagas_start_rejected_total", saga="order\nDROP", reason="UnknownSaga")
    metrics.inc("sagas_transition_conflicts_total")  # not exported: ignored, still counted here
    metrics.observe(
        "sagas_step_duration_seconds", 0.02, saga="order", step="a", action="forward", outcome="ok"
    )
    get = registry.get_sample_value
    assert get("sagas_started_total", {"saga": "order"}) == 1
    assert get("sagas_start_rejected_total", {"saga": UNKNOWN, "reason": "UnknownSaga"}) == 1
    assert (
        get("sagas_start_rejected_total", {"saga": "order\nDROP", "reason": "UnknownSaga"}) is None
    )
    assert metrics.get("sagas_transition_conflicts_total") == 1
    labels = {"saga": "order", "step": "a", "action": "forward", "outcome": "ok"}
    assert get("sagas_step_duration_seconds_count", labels) == 1
    assert get("sagas_step_duration_seconds_bucket", {**labels, "le": "0.025"}) == 1
    assert get("sagas_step_duration_seconds_bucket", {**labels, "le": "0.01"}) == 0


def test_without_a_sink_a_timing_goes_nowhere() -> None:
    metrics = Metrics()
    assert not metrics.exporting
    metrics.observe("sagas_saga_duration_seconds", 1.0, saga="order", outcome="completed")
    assert metrics.snapshot() == {}


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\x1b[31m value")
        except ValueError:
            info = sys.exc_info()
    record = logging.LogRecord(
        "sagas.participant", logging.WARNING, __file__, 1, message, args, info
    )
    SagaContextFilter().filter(record)
    return record


def test_json_lines_carry_the_saga_fields() -> None:
    with saga_context(
        saga="order", saga_id="o-1", correlation_id="c-1", step="charge", attempt="2"
    ):
        record = _record("charged %s\nforged line", "x", exc=True)
    text = JSONFormatter().format(record)
    assert "\n" not in text  # one line whatever the message holds
    line = json.loads(text)
    assert line["saga"] == "order" and line["saga_id"] == "o-1" and line["correlation_id"] == "c-1"
    assert line["step"] == "charge" and line["attempt"] == 2
    assert line["level"] == "WARNING" and line["logger"] == "sagas.participant"
    assert line["message"] == "charged x\nforged line"
    assert line["ts"].endswith("Z") and "ValueError" in line["exc_info"]
    assert "\x1b" not in line["exc_info"]  # the filter escaped the traceback


def test_outside_a_saga_the_fields_are_left_out() -> None:
    line = json.loads(JSONFormatter().format(_record("plain")))
    assert set(line) == {"ts", "level", "logger", "message"}


def test_settings_switch_telemetry_on_and_name_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAS_LOG_FORMAT", "json")
    monkeypatch.setenv("SAGAS_METRICS_PORT", "9464")
    settings = Settings.from_config()
    assert settings.log_format == "json" and settings.exports_metrics
    assert not Settings.from_config(
        {"sagas_log_format": "text", "sagas_metrics_port": None}
    ).metrics
    monkeypatch.setenv("SAGAS_LOG_FORMAT", "xml")
    with pytest.raises(ConfigurationError) as err:
        Settings.from_config()
    assert err.value.setting == "log_format"
    monkeypatch.setenv("SAGAS_LOG_FORMAT", "json")
    monkeypatch.setenv("SAGAS_METRICS_PORT", "0")
    with pytest.raises(ConfigurationError) as err:
        Settings.from_config()
    assert err.value.setting == "metrics_port"


def _stats() -> dict[str, object]:
    return {
        "by_state": {("order", "completed"): 3},
        "parked": 0,
        "timers_due": 1,
        "outbox_unsent": 0,
        "oldest_active_seconds": 2.5,
    }


def test_the_wsgi_and_asgi_apps_serve_the_page_with_the_gauges() -> None:
    # This process's registry (no PROMETHEUS_MULTIPROC_DIR here): the global sink's metrics.
    sink = enable(lambda name: name == "order")
    sink.count("sagas_started_total", 1, {"saga": "order"})
    environ: dict[str, object] = {}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(wsgi_app(_stats)(environ, lambda s, _headers: status.append(s)))
    assert status == ["200 OK"]
    page = body.decode()
    assert 'sagas_started_total{saga="order"}' in page
    assert 'sagas_in_store{saga="order",state="completed"} 3.0' in page
    assert "sagas_timers_due 1.0" in page

    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [],
    }
    asyncio.run(asgi_app(_stats)(scope, receive, send))
    assert sent[0]["status"] == 200
    text = b"".join(m.get("body", b"") for m in sent[1:]).decode()  # type: ignore[misc]
    assert 'sagas_in_store{saga="order",state="completed"} 3.0' in text


def test_a_store_outage_leaves_the_process_metrics_on_the_page() -> None:
    def down() -> dict[str, object]:
        raise ConnectionError("store down")

    environ: dict[str, object] = {}
    setup_testing_defaults(environ)
    page = b"".join(wsgi_app(down)(environ, lambda *_: None)).decode()
    assert "sagas_started_total" in page and "sagas_in_store" not in page
