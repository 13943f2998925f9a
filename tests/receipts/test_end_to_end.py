"""The example services under the embedded harness: a step whose worker crashed after its
effect committed is delivered again while its attempt is still open, and applies nothing twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import task_failure, task_prerun
from sqlalchemy import func, select

import sagas
from sagas import SagaState, faults
from sagas.examples import inventory, payment
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, wait_for
from workers.app import app

ORDER: dict[str, Any] = {
    "order_id": "R-1",
    "email": "ada@example.com",
    "card_number": "4242424242424242",
    "items": [{"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250}],
    "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
}
CHARGE_TASK = "saga.order_fulfillment.charge_payment"
RESERVE_TASK = "saga.order_fulfillment.reserve_inventory"


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    # Every step travels as its own message (no inline steps), as between separate services;
    # an in-memory URL: embedded() gives the module a private SQLite file of its own.
    settings = Settings(database_url="sqlite://", sweep_interval=0.1, inline_steps=False)
    with embedded(app, settings=settings) as runtime:
        yield runtime


def _charges(saga_id: str) -> list[Any]:
    with payment.db.engine().connect() as conn:
        return list(
            conn.execute(select(payment.charges).where(payment.charges.c.saga_id == saga_id))
        )


def test_the_service_databases_live_next_to_the_saga_store(rt: Runtime, tmp_path: Any) -> None:
    store_dir = rt.settings.database_url.removeprefix("sqlite:///").rsplit("/", 1)[0]
    assert payment.db.url() == f"sqlite:///{store_dir}/payment.db"
    assert inventory.db.url() == f"sqlite:///{store_dir}/inventory.db"


@pytest.fixture
def redeliver_after_crash() -> Iterator[list[str]]:
    """Crash the first run of the reserve and charge steps right after its effect committed
    (sagas.faults), and hand the crashed command back to its queue - what acks_late +
    reject_on_worker_lost do when a worker dies mid-task. Yields the redelivered task names."""
    crashed: set[str] = set()
    redelivered: list[str] = []

    def before_run(sender: Any, **_: Any) -> None:
        if sender.name in (RESERVE_TASK, CHARGE_TASK) and sender.name not in crashed:
            crashed.add(sender.name)
            faults.arm("participant.after_effect=raise:1")  # this run, once

    def on_failure(sender: Any, exception: BaseException, args: Any, kwargs: Any, **_: Any) -> None:
        if isinstance(exception, faults.InjectedFault):
            redelivered.append(sender.name)
            step = sagas.get_saga("order_fulfillment").step_def(sender.name.split(".")[2])
            app.send_task(sender.name, args=args, kwargs=kwargs, queue=step.queue)

    task_prerun.connect(before_run, weak=False)
    task_failure.connect(on_failure, weak=False)
    try:
        yield redelivered
    finally:
        faults.arm("")
        task_prerun.disconnect(before_run)
        task_failure.disconnect(on_failure)


def test_steps_redelivered_after_a_crash_apply_their_effects_once(
    rt: Runtime, redeliver_after_crash: list[str]
) -> None:
    saga_id = f"e2e-{uuid.uuid4().hex[:12]}"
    sagas.get_saga("order_fulfillment").start(ORDER, saga_id=saga_id)
    record = wait_for(rt.store, saga_id, timeout=20)
    assert record.state is SagaState.COMPLETED
    # Both crashed while their attempt was still open, so the engine ran them again: only the
    # receipts stand between the redelivery and a second reservation and a second charge.
    assert redeliver_after_crash == [RESERVE_TASK, CHARGE_TASK]
    rows = _charges(saga_id)
    assert len(rows) == 1 and rows[0].status == "charged"
    with inventory.db.engine().connect() as conn:
        reserved = conn.execute(
            select(func.count()).where(inventory.reservations.c.saga_id == saga_id)
        ).scalar_one()
    assert reserved == len(ORDER["items"])
    steps = rt.store.get(saga_id)[1].steps
    assert steps[1].result == {"charge_id": f"ch-{rows[0].id}", "amount_cents": 2500}
    receipt = payment.receipts.get(saga_id, "charge_payment")
    assert receipt is not None and receipt.result == steps[1].result
    assert steps[1].attempt == 1  # the same attempt, run twice


def test_a_declined_card_writes_no_charge_and_the_release_is_recorded_once(rt: Runtime) -> None:
    saga_id = f"e2e-{uuid.uuid4().hex[:12]}"
    payload = {**ORDER, "card_number": "4000000000000002"}
    sagas.get_saga("order_fulfillment").start(payload, saga_id=saga_id)
    record = wait_for(rt.store, saga_id, timeout=20)
    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "CardDeclined"
    assert _charges(saga_id) == []
    assert payment.receipts.get(saga_id, "charge_payment") is None  # rolled back with the effect
    released = inventory.receipts.get(saga_id, "reserve_inventory", "compensate")
    assert released is not None and released.result == {"released": 1}
    with inventory.db.engine().connect() as conn:
        held = conn.execute(
            select(func.count()).where(
                inventory.reservations.c.saga_id == saga_id,
                inventory.reservations.c.released.is_(False),
            )
        ).scalar_one()
    assert held == 0
