"""SAGAS_START_IN_CALLER: start_saga.delay records the start in the calling process (row, first
dispatch, publish of step 1 to its queue) and returns a finished result with the saga id; no
start message, no coordinator hop. Anything it cannot do there goes as the message."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.result import EagerResult

from sagas import SagaConflict, SagaState, StepState, start_saga
from sagas.errors import StoreUnavailable
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, wait_for
from tests.embedded.conftest import Published
from tests.embedded.test_embedded import ORDER
from workers.app import app


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    # An in-memory URL: embedded() gives the module a private SQLite file of its own.
    settings = Settings(database_url="sqlite://", sweep_interval=0.1, start_in_caller=True)
    with embedded(app, settings=settings) as runtime:
        yield runtime


def test_the_caller_records_the_start_and_publishes_step_one(
    rt: Runtime, published: Published
) -> None:
    saga_id = f"sc-{uuid.uuid4().hex[:12]}"
    result = start_saga.delay("order_fulfillment", ORDER, saga_id=saga_id)
    # Recorded before delay returned: the row is there, its first step dispatched.
    assert isinstance(result, EagerResult) and result.get(timeout=1) == saga_id
    record, status, history = rt.store.get(saga_id)
    assert status.steps[0].state in (StepState.RUNNING, StepState.SUCCEEDED)
    assert [h.kind for h in history][:2] == ["saga_started", "step_dispatched"]
    assert not [m for m in published if m["task"] == "sagas.start_saga"]  # no start message
    mine = published.tasks_of(saga_id)
    assert mine[0] == "saga.order_fulfillment.reserve_inventory"
    assert [m["routing_key"] for m in published if m["headers"].get("saga_id") == saga_id][
        0
    ] == "inventory"
    record = wait_for(rt.store, saga_id, timeout=20)
    assert record.state is SagaState.COMPLETED


def test_a_repeated_start_returns_the_same_saga_and_a_conflicting_one_fails_its_result(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    saga_id = f"sc-{uuid.uuid4().hex[:12]}"
    assert start_saga.delay("order_fulfillment", ORDER, saga_id=saga_id).get() == saga_id
    assert start_saga.delay("order_fulfillment", ORDER, saga_id=saga_id).get() == saga_id
    # As with the message: delay returns, the result holds the conflict, .get() raises it.
    conflicting = start_saga.delay(
        "order_fulfillment", {**ORDER, "order_id": "A-2"}, saga_id=saga_id
    )
    assert conflicting.state == "FAILURE" and isinstance(conflicting.result, SagaConflict)
    with pytest.raises(SagaConflict) as exc:
        conflicting.get()
    assert exc.value.field == "saga_id"
    [line] = [r.getMessage() for r in caplog.records if "start rejected" in r.getMessage()]
    assert "already exists" in line and "(field saga_id)" in line
    history = rt.store.get(saga_id)[2]
    assert [h.kind for h in history].count("saga_started") == 1


def test_a_delivery_option_sends_the_start_as_a_message(rt: Runtime, published: Published) -> None:
    saga_id = f"sc-{uuid.uuid4().hex[:12]}"
    result = start_saga.apply_async(
        ("order_fulfillment", ORDER), {"saga_id": saga_id}, countdown=0.1
    )
    assert not isinstance(result, EagerResult)
    starts = [m for m in published if m["task"] == "sagas.start_saga"]
    assert [m["headers"].get("id") for m in starts] == [result.id]
    assert wait_for(rt.store, saga_id, timeout=20).state is SagaState.COMPLETED


def test_an_unreachable_store_sends_the_start_as_a_message(
    rt: Runtime, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sagas import starter

    real = starter.start

    def down(*args: Any, **kwargs: Any) -> str:
        raise StoreUnavailable("saga store unavailable: connection refused")

    monkeypatch.setattr(starter, "start", down)
    saga_id = f"sc-{uuid.uuid4().hex[:12]}"
    result = start_saga.delay("order_fulfillment", ORDER, saga_id=saga_id)
    monkeypatch.setattr(starter, "start", real)  # the coordinator's own start must work
    assert not isinstance(result, EagerResult)
    assert [m for m in published if m["task"] == "sagas.start_saga"]
    assert wait_for(rt.store, saga_id, timeout=20).state is SagaState.COMPLETED
