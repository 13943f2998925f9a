"""SAGAS_START_ON_STEP_QUEUE: start_saga.delay goes to the first step's queue, and the worker there
records the start and runs the local steps in the same task (no coordinator hop)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from sagas import SagaState, StepState, start_saga
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, wait_for
from tests.embedded.conftest import Published
from tests.embedded.test_embedded import ORDER
from workers.app import app


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    # An in-memory URL: embedded() gives the module a private SQLite file of its own.
    settings = Settings(database_url="sqlite://", sweep_interval=0.1, start_on_step_queue=True)
    with embedded(app, settings=settings) as runtime:
        yield runtime


def test_start_goes_to_the_first_steps_queue_and_runs_it_in_the_same_task(
    rt: Runtime, published: Published
) -> None:
    saga_id = f"sq-{uuid.uuid4().hex[:12]}"
    start_saga.delay("order_fulfillment", ORDER, saga_id=saga_id)
    record = wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert record.state is SagaState.COMPLETED and record.outbox is None
    assert [s.state for s in status.steps] == [StepState.SUCCEEDED] * 4
    # the start message was routed to reserve_inventory's queue ...
    starts = [m for m in published if m["task"] == "sagas.start_saga"]
    assert starts[-1]["routing_key"] == "inventory"
    # ... and no step command was published for the local steps: only the remote step's hop
    mine = published.tasks_of(saga_id)
    assert mine == ["notification.send_confirmation", "sagas.remote_reply"]
    kinds = [(h.kind, h.step) for h in history]
    assert kinds[:4] == [
        ("saga_started", None),
        ("step_dispatched", "reserve_inventory"),
        ("step_succeeded", "reserve_inventory"),
        ("step_dispatched", "charge_payment"),
    ]


def test_a_duplicate_start_on_the_step_queue_runs_nothing_twice(rt: Runtime) -> None:
    saga_id = f"sq-{uuid.uuid4().hex[:12]}"
    start_saga.delay("order_fulfillment", ORDER, saga_id=saga_id)
    wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    start_saga.delay("order_fulfillment", ORDER, saga_id=saga_id)  # a retried request
    time.sleep(0.5)
    _, status_after, history_after = rt.store.get(saga_id)
    assert status_after == status and len(history_after) == len(history)
    assert [h.kind for h in history_after].count("saga_started") == 1
