"""A choreography handler's events go through the saga row's outbox: if the process dies (here:
an injected fault) after the handler's outcome committed and before its events were published,
the sweeper re-publishes them and the saga finishes instead of waiting for a timeout."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

import sagas
from sagas import SagaState, faults
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, wait_for
from tests.embedded.test_embedded import ORDER
from workers.app import app


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("choreo_outbox") / "sagas.db"
    settings = Settings(database_url=f"sqlite:///{db}", sweep_interval=0.1, outbox_grace=0.5)
    with embedded(app, settings=settings) as runtime:
        yield runtime


@pytest.fixture
def crash_after_first_handler_commit() -> Iterator[None]:
    saved = dict(faults._armed), dict(faults._fired)
    faults._armed.clear()
    faults._armed.update(faults._parse("choreography.after_commit=raise:1"))
    faults._fired.clear()
    try:
        yield
    finally:
        faults._armed.clear()
        faults._armed.update(saved[0])
        faults._fired.clear()
        faults._fired.update(saved[1])


def test_events_committed_but_not_published_are_republished_by_the_sweeper(
    rt: Runtime, crash_after_first_handler_commit: None
) -> None:
    saga_id = f"co-{uuid.uuid4().hex[:12]}"
    sagas.get_saga("order_choreography").start(ORDER, saga_id=saga_id)
    record = wait_for(rt.store, saga_id, timeout=20)
    assert record.state is SagaState.COMPLETED
    # The last handler's outbox (order.fulfilled) is cleared just after the terminal state
    # commits, once its publish returned: wait for that instead of racing it.
    deadline = time.monotonic() + 10
    while record.outbox is not None and time.monotonic() < deadline:
        time.sleep(0.02)
        record = rt.store.get(saga_id)[0]
    assert record.outbox is None and record.outbox_at is None
    assert faults._fired.get("choreography.after_commit") == 1  # the fault did fire once
    history = rt.store.get(saga_id)[2]
    [republished] = [h for h in history if h.kind == "commands_republished"]
    assert republished.detail == {"count": 1}  # reserve_inventory's inventory.reserved
    published = [(h.detail or {}).get("event") for h in history if h.kind == "event_published"]
    assert published.count("inventory.reserved") == 1  # recorded once, delivered once
    handled = [h.step for h in history if h.kind == "step_succeeded"]
    assert handled == [
        "reserve_inventory",
        "charge_payment",
        "create_shipment",
        "confirm_order",
    ]
