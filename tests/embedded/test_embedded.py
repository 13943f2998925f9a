"""The embedded default: SQLite, an in-memory broker and an in-process worker (sagas.testing).

Real Celery (worker, routing, messages) and a real SQLite store; only the broker is in memory.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import sagas
from sagas import SagaState, StepState
from sagas.observability import metrics
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, wait_for
from tests.embedded.conftest import Published
from workers.app import app

ORDER: dict[str, Any] = {
    "order_id": "A-1",
    "email": "ada@example.com",
    "card_number": "4242424242424242",
    "items": [{"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250}],
    "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
}


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("embedded") / "sagas.db"
    # This module checks the message path: every step and reply travels through the broker.
    settings = Settings(
        database_url=f"sqlite:///{db}",
        sweep_interval=0.1,
        local_transitions=False,
        inline_steps=False,
    )
    with embedded(app, settings=settings, sweep_interval=0.1) as runtime:
        yield runtime


def _sid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_order_completes_through_every_service_queue(rt: Runtime) -> None:
    saga_id = sagas.get_saga("order_fulfillment").start(ORDER, saga_id=_sid())
    record = wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert record.state is SagaState.COMPLETED
    assert [s.state for s in status.steps] == [StepState.SUCCEEDED] * 4
    assert status.steps[3].result == {"sent_to": "ada@example.com"}  # the remote step's result
    assert [h.kind for h in history][-1] == "saga_completed"


def test_declined_card_releases_inventory_and_fails(rt: Runtime) -> None:
    payload = {**ORDER, "card_number": "4000000000000002"}
    saga_id = sagas.get_saga("order_fulfillment").start(payload, saga_id=_sid())
    record = wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "CardDeclined"
    states = [s.state for s in status.steps]
    assert states == [
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.SKIPPED,
        StepState.SKIPPED,
    ]
    kinds = [(h.kind, h.step) for h in history]
    assert ("step_compensated", "reserve_inventory") in kinds


def test_every_step_message_names_saga_step_attempt_and_carries_correlation_id(
    rt: Runtime, published: Published
) -> None:
    saga_id, corr = _sid(), f"corr-{uuid.uuid4().hex}"
    payload = {**ORDER, "card_number": "4000000000000002"}  # forward steps and a compensation
    sagas.get_saga("order_fulfillment").start(payload, saga_id=saga_id, correlation_id=corr)
    wait_for(rt.store, saga_id, timeout=20)
    steps = [
        m
        for m in published
        if m["task"].startswith("saga.") and m["headers"].get("saga_id") == saga_id
    ]
    names = [m["task"] for m in steps]
    assert names == [
        "saga.order_fulfillment.reserve_inventory",
        "saga.order_fulfillment.charge_payment",
        "saga.order_fulfillment.reserve_inventory.compensate",
    ]
    for m in steps:
        assert m["headers"]["saga_correlation_id"] == corr
        argsrepr = m["headers"]["argsrepr"]
        step = m["task"].split(".")[2]
        assert f"id={saga_id}" in argsrepr and f"step={step}" in argsrepr
        assert "attempt=1" in argsrepr and "saga=order_fulfillment" in argsrepr
        # Flower shows argsrepr/kwargsrepr: never the payload (card number, email).
        assert "4000000000000002" not in argsrepr + m["headers"]["kwargsrepr"]
        assert "ada@example.com" not in argsrepr + m["headers"]["kwargsrepr"]
    replies = [m for m in published if m["task"] == "sagas.step_reply"]
    assert replies and all(
        m["headers"]["saga_correlation_id"] == corr
        for m in replies
        if m["headers"].get("saga_id") == saga_id
    )


def test_every_engine_log_record_for_a_saga_carries_its_correlation_id(rt: Runtime) -> None:
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Capture(level=logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("sagas.coordinator", "sagas.participant")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        saga_id, corr = _sid(), f"corr-{uuid.uuid4().hex}"
        payload = {**ORDER, "simulate": {"carrier_outages": 1}}
        sagas.get_saga("order_fulfillment").start(payload, saga_id=saga_id, correlation_id=corr)
        wait_for(rt.store, saga_id, timeout=20)
    finally:
        for lg, level in zip(loggers, old, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    mine = [r for r in records if getattr(r, "saga_id", "") == saga_id]
    # started, dispatches, the carrier failure, participants' "running" lines, finished
    assert len(mine) >= 8
    assert {r.name for r in mine} == {"sagas.coordinator", "sagas.participant"}
    for r in mine:
        assert r.correlation_id == corr, r.getMessage()  # type: ignore[attr-defined]
        assert f"correlation_id={corr}" in r.getMessage()


def test_delay_validates_in_the_caller_and_writes_nothing(rt: Runtime) -> None:
    saga_id = _sid()
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (
            {"name": "order_fulfillment", "payload": {**ORDER, "items": True}},
            sagas.PayloadInvalid,
            "payload.items",
        ),
        (
            {"name": "order_fulfillment", "payload": {**ORDER, "order_id": "a\x00b"}},
            sagas.PayloadNotJSON,
            "payload.order_id",
        ),
        (
            {"name": "order_fulfillment", "payload": ORDER, "saga_id": "bad id"},
            sagas.InvalidSagaId,
            "saga_id",
        ),
    ]
    for kwargs, error, field in cases:
        kwargs.setdefault("saga_id", saga_id)
        with pytest.raises(error) as info:
            sagas.start_saga.delay(**kwargs)
        assert info.value.field == field
    with pytest.raises(sagas.SagaNotFound):
        rt.store.get(saga_id)


def test_bad_start_sent_by_name_is_rejected_by_the_coordinator_logged_and_counted(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    before = metrics.get("sagas_start_rejected_total", saga="order_fulfillment")
    saga_id = _sid()
    bad = {**ORDER, "items": [{"sku": "X", "quantity": True, "unit_cents": 1}]}
    # A client without the saga's definition cannot validate: the coordinator must.
    with caplog.at_level(logging.ERROR, logger="sagas.tasks"):
        result = app.send_task(
            "sagas.start_saga",
            args=["order_fulfillment", bad],
            kwargs={"saga_id": saga_id},
            queue="sagas",
        )
        _wait_metric("sagas_start_rejected_total", before + 1, saga="order_fulfillment")
        # A saga this client does not know is not checked here at all; the coordinator is.
        before_unknown = metrics.get("sagas_start_rejected_total", reason="UnknownSaga")
        app.send_task("sagas.start_saga", args=["no_such_saga", ORDER], queue="sagas")
        _wait_metric("sagas_start_rejected_total", before_unknown + 1, reason="UnknownSaga")
    assert result.id
    messages = [r.getMessage() for r in caplog.records if r.name == "sagas.tasks"]
    assert any("payload.items.0.quantity" in m and "order_fulfillment" in m for m in messages)
    assert any("unknown saga 'no_such_saga'" in m for m in messages)
    with pytest.raises(sagas.SagaNotFound):
        rt.store.get(saga_id)


def test_start_is_idempotent_on_saga_id(rt: Runtime) -> None:
    saga = sagas.get_saga("order_fulfillment")
    saga_id = _sid()
    assert saga.start(ORDER, saga_id=saga_id) == saga_id
    assert saga.start(ORDER, saga_id=saga_id) == saga_id
    wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert [h.kind for h in history].count("saga_started") == 1
    assert all(s.attempt == 1 for s in status.steps)
    with pytest.raises(sagas.SagaConflict) as info:
        saga.start({**ORDER, "order_id": "other"}, saga_id=saga_id)
    assert info.value.field == "saga_id"
    assert rt.store.get(saga_id)[2] == history  # nothing written by the conflicting start


def _wait_metric(name: str, target: int, **labels: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metrics.get(name, **labels) >= target:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name}{labels} never reached {target}: {metrics.snapshot()}")
