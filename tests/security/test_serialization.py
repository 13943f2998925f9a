"""JSON only: the example app accepts nothing else, and the engine publishes nothing else.

Every message is observed where kombu serializes it (``Producer._prepare`` returns the body and
the content type that go on the wire), so a task sent with ``serializer="pickle"`` anywhere in
the engine - a step, a reply, a wake, a link callback, a choreography event, a worker event -
would be caught.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.messaging import Producer

from sagas import SagaState, get_saga
from sagas.runtime import Runtime
from sagas.testing import wait_for
from tests.security.conftest import sid
from tests.security.probe import LOST_QUEUE
from workers.app import app

ORDER: dict[str, Any] = {
    "order_id": "S-1",
    "email": "ada@example.com",
    "card_number": "4242424242424242",
    "items": [{"sku": "BOOK-1", "quantity": 1, "unit_cents": 100}],
    "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
}


def test_the_example_app_is_json_only() -> None:
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.event_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.result_accept_content in (None, ["json"])  # None: falls back to accept_content


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str | None, str]]]:
    """(task name or None, content type) of every message serialized while the test runs."""
    seen: list[tuple[str | None, str]] = []
    lock = threading.Lock()
    prepare = Producer._prepare

    def spy(self: Producer, body: Any, *args: Any, **kwargs: Any) -> Any:
        out = prepare(self, body, *args, **kwargs)
        headers = kwargs.get("headers", args[4] if len(args) > 4 else None) or {}
        with lock:
            seen.append((headers.get("task"), out[1]))
        return out

    monkeypatch.setattr(Producer, "_prepare", spy)
    yield seen


def test_every_message_the_engine_publishes_is_json(
    rt: Runtime, wire: list[tuple[str | None, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Route every hop through the broker (replies by message, no inline steps) to see them all.
    monkeypatch.setattr(rt, "settings", rt.settings.model_copy(update={"local_transitions": False}))
    orders = get_saga("order_fulfillment")
    ids = [
        orders.start(ORDER, saga_id=sid()),  # every service, a remote step with link callbacks
        orders.start({**ORDER, "card_number": "4000000000000002"}, saga_id=sid()),  # compensates
        orders.start({**ORDER, "simulate": {"carrier_outages": 1}}, saga_id=sid()),  # a wake
        get_saga("order_choreography").start(
            {**ORDER, "simulate": {"undeliverable": True}}, saga_id=sid()
        ),  # domain events and compensation events
    ]
    states = [wait_for(rt.store, i, timeout=20).state for i in ids]
    assert states == [SagaState.COMPLETED, SagaState.FAILED, SagaState.COMPLETED, SagaState.FAILED]
    tasks = {name for name, _ in wire}
    for expected in (
        "saga.order_fulfillment.charge_payment",
        "saga.order_fulfillment.reserve_inventory.compensate",
        "sagas.step_reply",
        "sagas.wake",
        "notification.send_confirmation",
        "sagas.remote_reply",
        "choreography.event",
    ):
        assert expected in tasks, f"{expected} was never published: {sorted(map(str, tasks))}"
    assert len(wire) >= 20
    assert {content_type for _, content_type in wire} == {"application/json"}


def test_the_wire_spy_would_see_a_pickle_message(
    rt: Runtime, wire: list[tuple[str | None, str]]
) -> None:
    # Control for the test above: a pickle publish is visible to the spy. (Sent to the queue
    # nobody consumes; the harness purges it.)
    app.send_task("sagas.wake", args=["nobody"], queue=LOST_QUEUE, serializer="pickle")
    assert ("sagas.wake", "application/x-python-serialize") in wire
