"""The fast path: a participant that reaches the store applies its own transition, and the next
step on a queue it consumes runs in the same task (no reply message, no broker round trip)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import sagas
from sagas import SagaState, StepState
from sagas.runtime import Runtime
from sagas.testing import embedded, wait_for
from tests.embedded.conftest import Published
from tests.embedded.test_embedded import ORDER
from workers.app import app


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("inline") / "sagas.db"
    with embedded(app, database_url=f"sqlite:///{db}", sweep_interval=0.1) as runtime:
        assert runtime.settings.local_transitions and runtime.settings.inline_steps
        yield runtime


def test_local_steps_run_inline_and_only_remote_hops_use_the_broker(
    rt: Runtime, published: Published
) -> None:
    saga_id = f"in-{uuid.uuid4().hex[:12]}"
    sagas.get_saga("order_fulfillment").start(ORDER, saga_id=saga_id)
    record = wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert record.state is SagaState.COMPLETED
    assert [s.state for s in status.steps] == [StepState.SUCCEEDED] * 4
    mine = published.tasks_of(saga_id)
    assert mine == [
        "saga.order_fulfillment.reserve_inventory",  # sent by start
        "notification.send_confirmation",  # the remote step is always a message
        "sagas.remote_reply",  # its link callback
    ]
    # every step is still durably recorded: dispatched and succeeded, in order
    kinds = [(h.kind, h.step) for h in history if h.step]
    assert kinds[:6] == [
        ("step_dispatched", "reserve_inventory"),
        ("step_succeeded", "reserve_inventory"),
        ("step_dispatched", "charge_payment"),
        ("step_succeeded", "charge_payment"),
        ("step_dispatched", "create_shipment"),
        ("step_succeeded", "create_shipment"),
    ]
    assert record.outbox is None


def test_compensations_run_inline_too(rt: Runtime, published: Published) -> None:
    saga_id = f"in-{uuid.uuid4().hex[:12]}"
    payload = {**ORDER, "simulate": {"undeliverable": True}}
    sagas.get_saga("order_fulfillment").start(payload, saga_id=saga_id)
    record = wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert record.state is SagaState.FAILED
    assert [s.state for s in status.steps][:3] == [
        StepState.COMPENSATED,
        StepState.COMPENSATED,
        StepState.FAILED,
    ]
    order = [h.step for h in history if h.kind == "step_compensated"]
    assert order == ["charge_payment", "reserve_inventory"]
    assert published.tasks_of(saga_id) == ["saga.order_fulfillment.reserve_inventory"]
