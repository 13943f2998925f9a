"""Choreographed sagas through real ``celery worker`` processes, on Redis and on RabbitMQ.

The same ``cluster`` as ``test_workers.py``: each service worker consumes its own queue and its
event queue ``sagas.events.<service>`` (as in the Procfile), events travel on the topic exchange
``sagas.events``, the beat sweeper fires handler timeouts. Tests assert on the saga store (kind,
state, steps, history), on ``probe_effect`` (what the probe choreographies' handlers actually ran,
``tests/integration/choreo_probe.py``), on the example services' own tables (reservations,
charges, receipts) and on the worker logs. Events are injected onto the real exchange exactly as
the engine publishes them. Nothing sleeps to synchronise: every wait polls with a deadline.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from sqlalchemy import text

from sagas import SagaState, StepState, report
from sagas.catalog import choreographies
from sagas.choreography import Choreography
from sagas.choreography.definition import COMPENSATED_EVENT
from sagas.choreography.runner import event_id_for
from sagas.examples.order_choreography import order_choreography
from sagas.messages import EventMessage
from sagas.state import HistoryKind
from sagas.store import HistoryEntry
from sagas.transport import EVENT_TASK, EXCHANGE, event_queues
from tests.integration.choreo_probe import STALL_TIMEOUT, choreo_probe
from tests.integration.conftest import QUEUES, SERVICE_QUEUES, Cluster, Effect, Snapshot, poll
from tests.integration.worker_app import served_choreographies

pytestmark = [pytest.mark.integration, pytest.mark.workers]

TERMINAL = (SagaState.COMPLETED, SagaState.FAILED)
ORDER_EVENTS = [
    "order.created",
    "inventory.reserved",
    "payment.processed",
    "shipment.created",
    "order.fulfilled",
]
ORDER_STEPS = ["reserve_inventory", "charge_payment", "create_shipment", "confirm_order"]
PROBE_STEPS = ["c1", "c2", "c3", "c4"]
PROBE_EVENTS = ["cprobe.started", "cprobe.c1_done", "cprobe.c2_done", "cprobe.c3_done"]
DROPPED = "malformed event dropped: "


def order_payload(order_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "email": "ada@example.com",
        "card_number": "4242424242424242",
        "items": [
            {"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250},
            {"sku": "PEN-7", "quantity": 1, "unit_cents": 300},
        ],
        "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
        **changes,
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# -- reading the history ----------------------------------------------------------------------


def kinds(history: list[HistoryEntry], kind: HistoryKind) -> list[HistoryEntry]:
    return [h for h in history if h.kind == kind.value]


def published(history: list[HistoryEntry]) -> list[str]:
    return [(h.detail or {})["event"] for h in kinds(history, HistoryKind.EVENT_PUBLISHED)]


def states(snapshot: Snapshot) -> list[StepState]:
    return [s.state for s in snapshot[1].steps]


def assert_history_ordered(history: list[HistoryEntry], *, clock: bool = True) -> None:
    """Rows are appended in commit order (ids increase) and, with ``clock``, the database clock
    never goes back.

    ``clock=False`` where two services react to the same event at once: a history row is stamped
    with its transaction's start (PostgreSQL ``now()``), and a transaction that began just before
    another but waited for the saga's row lock behind it is stamped earlier although it acted
    later (seen: c1's step_compensated 0.45 ms before c2's, one id after it). Reported as an
    engine bug; the order of what actually ran is checked on ``probe_effect`` and receipts."""
    for before, after in zip(history, history[1:], strict=False):
        assert before.id < after.id
        if clock:
            assert before.at <= after.at, f"history goes back in time:\n{before}\n{after}"


def runs(effects: list[Effect]) -> list[tuple[str, str, int]]:
    return [(e.step, e.action, e.attempt) for e in effects]


def assert_in_order(effects: list[Effect]) -> None:
    for before, after in zip(effects, effects[1:], strict=False):
        assert before.id < after.id
        assert before.at < after.at, (before, after)


# -- injecting events onto the real exchange ----------------------------------------------------


def event(
    saga_id: str,
    name: str,
    *,
    choreography: Choreography[Any],
    event_id: str,
    correlation_id: str,
    data: Any = None,
) -> dict[str, Any]:
    """An event message exactly as ``sagas.choreography.runner.publish`` builds it."""
    return EventMessage(
        name=name,
        saga_id=saga_id,
        event_id=event_id,
        choreography=choreography.name,
        correlation_id=correlation_id,
        data=data,
    ).model_dump(mode="json")


def inject(cluster: Cluster, message: Any, routing_key: str | None = None) -> str:
    """Publish ``message`` on the topic exchange as the engine does; returns the Celery task id,
    which the receiving workers log when they have handled it."""
    task_id = uuid.uuid4().hex
    if routing_key is None:
        routing_key = message["name"]
    cluster.app.send_task(
        EVENT_TASK,
        args=[message],
        task_id=task_id,
        exchange=EXCHANGE,
        routing_key=routing_key,
        declare=event_queues(only=served_choreographies()),
    )
    return task_id


def wait_handled(cluster: Cluster, task_id: str, *services: str) -> None:
    """Each service's worker logged the injected message as handled (the task succeeded)."""
    for service in services:
        cluster.wait_for_log(service, f"Task {EVENT_TASK}[{task_id}] succeeded", timeout=20)


def chain_ids(saga_id: str, choreo: Choreography[Any]) -> dict[str, str]:
    """Event ids of the forward chain, as the engine derives them (start, then each emit)."""
    ids = {choreo.starts_on: event_id_for(saga_id, choreo.starts_on, "start")}
    previous = ids[choreo.starts_on]
    for h in choreo.handlers:
        previous = ids[h.emits] = event_id_for(saga_id, h.emits, f"{h.name}:{previous}")
    return ids


def copy_of(cluster: Cluster, saga_id: str, name: str, choreo: Choreography[Any]) -> dict[str, Any]:
    """A copy of an event this saga already published (same event id, same data)."""
    record, status, _ = cluster.store.get(saga_id)
    if name == choreo.starts_on:
        data: Any = record.payload
    else:
        [h] = [h for h in choreo.handlers if h.emits == name]
        data = status.steps[h.index].result
    return event(
        saga_id,
        name,
        choreography=choreo,
        event_id=chain_ids(saga_id, choreo)[name],
        correlation_id=record.correlation_id,
        data=data,
    )


# -- the example services' own tables -------------------------------------------------------------


def service_rows(cluster: Cluster, saga_id: str) -> dict[str, Any]:
    with cluster.engine.connect() as conn:
        reservations = conn.execute(
            text("SELECT sku, quantity, released FROM reservations WHERE saga_id = :s ORDER BY id"),
            {"s": saga_id},
        ).all()
        charges = conn.execute(
            text("SELECT amount_cents, status FROM charges WHERE saga_id = :s ORDER BY id"),
            {"s": saga_id},
        ).all()
        receipts = conn.execute(
            text("SELECT step, action, state FROM saga_receipt WHERE saga_id = :s"),
            {"s": saga_id},
        ).all()
    return {
        "reservations": [tuple(r) for r in reservations],
        "charges": [tuple(r) for r in charges],
        "receipts": sorted(tuple(r) for r in receipts),
    }


def receipt_times(cluster: Cluster, saga_id: str, action: str) -> list[tuple[str, Any]]:
    """(step, when its receipt was written: the service transaction's start) in time order."""
    with cluster.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT step, created_at FROM saga_receipt "
                "WHERE saga_id = :s AND action = :a ORDER BY created_at"
            ),
            {"s": saga_id, "a": action},
        )
        return [(r.step, r.created_at) for r in rows]


def orphans(cluster: Cluster, saga_id: str) -> list[tuple[str, str, str]]:
    with cluster.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT service, name, event_id FROM saga_orphan_event "
                "WHERE saga_id = :s ORDER BY service"
            ),
            {"s": saga_id},
        )
        return [tuple(r) for r in rows]


def lines_with(cluster: Cluster, log: str, *needles: str) -> list[str]:
    return [ln for ln in cluster.log(log).splitlines() if all(n in ln for n in needles)]


# -- 0. the event bus on the broker -----------------------------------------------------------------


def expected_bindings() -> dict[str, set[str]]:
    """Service event queue -> the event names it must be bound to, from the definitions."""
    expected: dict[str, set[str]] = {}
    served = served_choreographies()
    for choreo in choreographies():
        if choreo.name not in served:
            continue
        for service, keys in choreo.subscriptions().items():
            expected.setdefault(f"sagas.events.{service}", set()).update(keys)
    return expected


def broker_bindings(cluster: Cluster) -> dict[tuple[str, str], set[str]]:
    """(exchange, queue) -> routing keys, as the broker itself holds them (default exchange and
    RabbitMQ's implicit per-queue bindings left out)."""
    found: dict[tuple[str, str], set[str]] = {}
    if cluster.broker == "redis":
        import redis

        client = redis.Redis.from_url(cluster.broker_url)
        try:
            tables = list(client.scan_iter(match=f"{cluster.keyprefix}_kombu.binding.*"))
            for key in tables:
                exchange = key.decode()[len(f"{cluster.keyprefix}_kombu.binding.") :]
                if exchange.startswith(("_", "celery.pidbox", "celeryev")):
                    continue  # not a binding table: deadlines, permanent marks, Celery's own
                for member in client.smembers(key):
                    routing_key, _pattern, queue = member.decode().split("\x06\x16")
                    found.setdefault((exchange, queue), set()).add(routing_key)
        finally:
            client.close()
        return found
    out = rabbitmqctl(
        cluster,
        "list_bindings",
        "source_name",
        "source_kind",
        "destination_name",
        "destination_kind",
        "routing_key",
    )
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 5 or parts[1] != "exchange" or parts[3] != "queue" or not parts[0]:
            continue
        found.setdefault((parts[0], parts[2]), set()).add(parts[4])
    return found


def rabbitmqctl(cluster: Cluster, *args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl is needed to read the broker's bindings")
    vhost = unquote(urlsplit(cluster.broker_url).path[1:]) or "/"
    done = subprocess.run(
        [ctl, "-q", "--no-table-headers", *args[:1], "-p", vhost, *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_event_queues_are_bound_to_the_topic_exchange_per_subscribed_event(
    cluster: Cluster,
) -> None:
    expected = expected_bindings()
    # The example's own subscriptions, spelled out: handlers' events, the failure events their
    # compensations react to, and sagas.compensated for every service with a compensation.
    order = {f"sagas.events.{s}": keys for s, keys in order_choreography.subscriptions().items()}
    assert order == {
        "sagas.events.inventory": {
            "order.created",
            "payment.failed",
            "shipment.failed",
            COMPENSATED_EVENT,
        },
        "sagas.events.payment": {"inventory.reserved", "shipment.failed", COMPENSATED_EVENT},
        "sagas.events.shipping": {"payment.processed"},
        "sagas.events.notification": {"shipment.created"},
    }
    assert set(expected) == {f"sagas.events.{s}" for s in SERVICE_QUEUES}
    for queue, keys in order.items():
        assert keys <= expected[queue]

    # Each service worker consumes its queue and its event queue, with exactly those bindings.
    # Wait for all the workers' replies, not for the whole timeout.
    active = cluster.app.control.inspect(timeout=10, limit=len(QUEUES)).active_queues() or {}
    for service in SERVICE_QUEUES:
        [queues] = [qs for worker, qs in active.items() if worker.startswith(f"{service}-")]
        assert {q["name"] for q in queues} == {service, f"sagas.events.{service}"}
        [events] = [q for q in queues if q["name"] == f"sagas.events.{service}"]
        assert {(b["exchange"]["name"], b["routing_key"]) for b in events["bindings"]} == {
            ("sagas.events", key) for key in expected[f"sagas.events.{service}"]
        }
        assert events["durable"]

    # And the broker holds exactly those bindings on the topic exchange.
    on_broker = {
        queue: keys
        for (exchange, queue), keys in broker_bindings(cluster).items()
        if exchange == "sagas.events" and queue.startswith("sagas.events.")
    }
    assert on_broker == expected
    if cluster.broker == "rabbitmq":
        exchanges = rabbitmqctl(cluster, "list_exchanges", "name", "type", "durable")
        assert "sagas.events\ttopic\ttrue" in exchanges.splitlines()
        queues = rabbitmqctl(cluster, "list_queues", "name", "durable").splitlines()
        for queue in expected:
            assert f"{queue}\ttrue" in queues


# -- 1. the example: happy path ---------------------------------------------------------------------


def test_order_choreography_happy_path(cluster: Cluster) -> None:
    order_id = new_id("CH")
    saga_id = cluster.start("order_choreography", order_payload(order_id))
    snapshot = cluster.wait_for(saga_id, TERMINAL)
    record, status, history = snapshot

    assert record.kind == "choreographed" and record.name == "order_choreography"
    assert record.state is SagaState.COMPLETED
    assert record.finished_at is not None and record.failure is None and not record.parked
    assert [(s.name, s.state, s.attempt) for s in status.steps] == [
        (name, StepState.SUCCEEDED, 1) for name in ORDER_STEPS
    ]
    assert status.steps[0].result == {"reservation_id": f"res-{saga_id}", "items": 2}
    assert status.steps[1].result is not None and status.steps[1].result["amount_cents"] == 2800
    assert status.steps[3].result == {"sent_to": "ada@example.com"}

    assert published(history) == ORDER_EVENTS
    assert [h.step for h in kinds(history, HistoryKind.STEP_SUCCEEDED)] == ORDER_STEPS
    assert history[0].kind == HistoryKind.SAGA_STARTED.value
    assert history[-1].kind == HistoryKind.SAGA_COMPLETED.value
    assert len(kinds(history, HistoryKind.SAGA_COMPLETED)) == 1
    assert not [h for h in history if "compensat" in h.kind or h.kind == "step_failed"]
    assert_history_ordered(history)
    # Each handler's success and the event it emitted were recorded in one transaction, after
    # the event that triggered it.
    for step, emitted in zip(ORDER_STEPS, ORDER_EVENTS[1:], strict=True):
        [done] = [h for h in kinds(history, HistoryKind.STEP_SUCCEEDED) if h.step == step]
        [event_row] = [h for h in history if (h.detail or {}).get("event") == emitted]
        assert event_row.id > done.id and event_row.at == done.at

    # The services' effects happened once, in their own tables.
    rows = service_rows(cluster, saga_id)
    assert rows["reservations"] == [("BOOK-1", 2, False), ("PEN-7", 1, False)]
    assert rows["charges"] == [(2800, "charged")]
    assert rows["receipts"] == [
        ("charge_payment", "forward", "done"),
        ("reserve_inventory", "forward", "done"),
    ]
    # Each handler ran in its own service's worker, with the saga's context on its lines.
    for service in SERVICE_QUEUES:
        cluster.wait_for_log(service, f"Task {EVENT_TASK}[", "succeeded")
    [line] = cluster.wait_for_log("notification", f"order {order_id} confirmed to")
    assert f"{{corr={record.correlation_id}}}" in line


# -- 2. the example: a failure at each stage -------------------------------------------------------

FAILURES = {
    "out_of_stock": (
        {"items": [{"sku": "BOOK-1", "quantity": 5000, "unit_cents": 1}]},
        "reserve_inventory",
        "inventory.failed",
        "OutOfStock",
        [],
    ),
    "declined": (
        {"card_number": "4000000000000002"},
        "charge_payment",
        "payment.failed",
        "CardDeclined",
        ["reserve_inventory"],
    ),
    "undeliverable": (
        {"simulate": {"undeliverable": True}},
        "create_shipment",
        "shipment.failed",
        "Undeliverable",
        ["charge_payment", "reserve_inventory"],
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_order_choreography_failure_compensates_completed_handlers_newest_first(
    cluster: Cluster, case: str
) -> None:
    change, failing, failure_event, error_type, undone = FAILURES[case]
    order_id = new_id("CF")
    saga_id = cluster.start("order_choreography", order_payload(order_id, **change))
    record, status, history = snapshot = cluster.wait_for(saga_id, TERMINAL)

    k = ORDER_STEPS.index(failing)
    assert record.kind == "choreographed" and record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == error_type
    assert states(snapshot) == (
        [StepState.COMPENSATED] * k + [StepState.FAILED] + [StepState.SKIPPED] * (3 - k)
    )
    assert status.steps[k].attempt == 1  # a permanent error is not retried
    assert published(history) == [*ORDER_EVENTS[: k + 1], failure_event]
    assert [h.step for h in kinds(history, HistoryKind.STEP_FAILED)] == [failing]
    assert len(kinds(history, HistoryKind.COMPENSATION_STARTED)) == 1
    assert len(kinds(history, HistoryKind.SAGA_FAILED)) == 1
    assert history[-1].kind == HistoryKind.SAGA_FAILED.value
    assert_history_ordered(history, clock=False)

    # Newest first, each exactly once, each in its own later transaction.
    compensated = kinds(history, HistoryKind.STEP_COMPENSATED)
    assert [h.step for h in compensated] == undone
    [started] = kinds(history, HistoryKind.COMPENSATION_STARTED)
    marks = [started, *compensated]
    for before, after in zip(marks, marks[1:], strict=False):
        assert before.id < after.id, (before, after)
    # The compensations' own clock (each receipt is written while its compensation runs, under
    # the saga's row lock): the refund committed before the release began.
    undo_times = receipt_times(cluster, saga_id, "compensate")
    assert [step for step, _ in undo_times] == undone
    for (_, before_at), (_, after_at) in zip(undo_times, undo_times[1:], strict=False):
        assert before_at < after_at

    rows = service_rows(cluster, saga_id)
    if case == "out_of_stock":
        assert rows == {"reservations": [], "charges": [], "receipts": []}
    elif case == "declined":
        assert rows["reservations"] == [("BOOK-1", 2, True), ("PEN-7", 1, True)]
        assert rows["charges"] == []
        assert rows["receipts"] == [
            ("reserve_inventory", "compensate", "done"),
            ("reserve_inventory", "forward", "compensated"),
        ]
    else:
        assert rows["reservations"] == [("BOOK-1", 2, True), ("PEN-7", 1, True)]
        assert rows["charges"] == [(2800, "refunded")]
        assert rows["receipts"] == [
            ("charge_payment", "compensate", "done"),
            ("charge_payment", "forward", "compensated"),
            ("reserve_inventory", "compensate", "done"),
            ("reserve_inventory", "forward", "compensated"),
        ]
        [refund] = cluster.wait_for_log("payment", "refunded ch-", f"for order {order_id}")
        assert f"{{corr={record.correlation_id}}}" in refund
    if undone:
        [release] = cluster.wait_for_log("inventory", "released reservation", saga_id)
        assert "(2 line(s))" in release


def test_order_choreography_transient_failures_retry_on_the_handlers_queue(
    cluster: Cluster,
) -> None:
    """A retry goes straight to the handler's event queue with a countdown; it runs there."""
    saga_id = cluster.start(
        "order_choreography", order_payload(new_id("CR"), simulate={"carrier_outages": 2})
    )
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert status.steps[2].name == "create_shipment" and status.steps[2].attempt == 3
    retries = kinds(history, HistoryKind.RETRY_SCHEDULED)
    assert [(h.step, h.attempt) for h in retries] == [
        ("create_shipment", 2),
        ("create_shipment", 3),
    ]
    assert [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_FAILED)] == [
        ("create_shipment", 1),
        ("create_shipment", 2),
    ]
    assert published(history) == ORDER_EVENTS
    assert service_rows(cluster, saga_id)["charges"] == [(2800, "charged")]
    # Both retries ran in the shipping worker, which consumes sagas.events.shipping.
    for attempt in (1, 2):
        needle = f"handler create_shipment attempt {attempt} failed: CarrierUnavailable"
        assert len(lines_with(cluster, "shipping", needle, saga_id)) == 1
    cluster.wait_for_log("shipping", f"shipment booked for order {record.payload['order_id']}")


# -- 2b. the probe choreography: effects of every handler, failing at each stage -----------------


@pytest.mark.parametrize("failing", ["c1", "c2", "c3"])
def test_probe_failure_compensates_each_completed_handler_once_newest_first(
    cluster: Cluster, failing: str
) -> None:
    k = PROBE_STEPS.index(failing)
    saga_id = cluster.start("choreo_probe", {"fail": failing})
    record, status, history = snapshot = cluster.wait_for(saga_id, TERMINAL)

    assert record.kind == "choreographed" and record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "PermanentError"
    assert states(snapshot) == (
        [StepState.COMPENSATED] * k + [StepState.FAILED] + [StepState.SKIPPED] * (3 - k)
    )
    assert published(history) == [*PROBE_EVENTS[: k + 1], f"cprobe.{failing}_failed"]
    undone = list(reversed(PROBE_STEPS[:k]))
    assert [h.step for h in kinds(history, HistoryKind.STEP_COMPENSATED)] == undone
    assert_history_ordered(history, clock=False)

    effects = cluster.effects(saga_id)
    assert runs(effects) == [(name, "forward", 1) for name in PROBE_STEPS[: k + 1]] + [
        (name, "compensate", 1) for name in undone
    ]
    assert_in_order(effects)


# -- 3. duplicated events -------------------------------------------------------------------------


def wait_until_gated(cluster: Cluster, saga_id: str) -> Snapshot:
    """c1 and c2 done; c3 is retrying behind its closed gate: the saga is mid-way."""
    cluster.wait_for(saga_id, list(SagaState))  # the start is asynchronous: the row exists
    return cluster.wait_for_history(
        saga_id,
        lambda h: any(e.step == "c3" for e in kinds(h, HistoryKind.RETRY_SCHEDULED)),
        what="c3 waiting behind its gate",
    )


def open_gate(cluster: Cluster, saga_id: str) -> None:
    with cluster.engine.begin() as conn:
        conn.execute(text("INSERT INTO probe_gate (saga_id) VALUES (:s)"), {"s": saga_id})


def notes(history: list[HistoryEntry], kind: HistoryKind) -> list[tuple[str | None, str, str]]:
    return [
        (h.step, (h.detail or {}).get("event", ""), (h.detail or {}).get("event_id", ""))
        for h in kinds(history, kind)
    ]


def test_duplicated_events_mid_saga_and_after_completion_have_no_second_effect(
    cluster: Cluster,
) -> None:
    saga_id = cluster.start("choreo_probe", {"tag": "duplicates", "gate": True})
    record, status, history = wait_until_gated(cluster, saga_id)
    assert record.state is SagaState.PENDING
    assert states((record, status, history))[:3] == [
        StepState.SUCCEEDED,
        StepState.SUCCEEDED,
        StepState.RUNNING,
    ]
    ids = chain_ids(saga_id, choreo_probe)
    effects = cluster.effects(saga_id)
    assert runs(effects) == [("c1", "forward", 1), ("c2", "forward", 1)]

    # Mid-saga: copies of the events that triggered c1 and c2, on the real exchange.
    for name in ("cprobe.started", "cprobe.c1_done"):
        inject(cluster, copy_of(cluster, saga_id, name, choreo_probe))
    mid, mid_status, mid_history = cluster.wait_for_history(
        saga_id,
        lambda h: len(kinds(h, HistoryKind.EVENT_DUPLICATE)) == 2,
        what="two duplicates recorded",
    )
    assert sorted(notes(mid_history, HistoryKind.EVENT_DUPLICATE)) == [
        ("c1", "cprobe.started", ids["cprobe.started"]),
        ("c2", "cprobe.c1_done", ids["cprobe.c1_done"]),
    ]
    assert mid.state is SagaState.PENDING
    assert mid_status.steps[:2] == status.steps[:2]
    assert published(mid_history) == published(history)
    assert cluster.effects(saga_id) == effects

    open_gate(cluster, saga_id)
    done, done_status, done_history = cluster.wait_for(saga_id, TERMINAL)
    assert done.state is SagaState.COMPLETED
    assert published(done_history) == [*PROBE_EVENTS, "cprobe.done"]
    effects = cluster.effects(saga_id)
    assert [(e.step, e.action) for e in effects] == [(s, "forward") for s in PROBE_STEPS]

    # After completion: the same copies, and one of the event that triggered c4.
    for name in ("cprobe.started", "cprobe.c1_done", "cprobe.c3_done"):
        inject(cluster, copy_of(cluster, saga_id, name, choreo_probe))
    after, after_status, after_history = cluster.wait_for_history(
        saga_id,
        lambda h: len(kinds(h, HistoryKind.EVENT_IGNORED)) == 3,
        what="three late copies ignored",
    )
    assert sorted(notes(after_history, HistoryKind.EVENT_IGNORED)) == [
        ("c1", "cprobe.started", ids["cprobe.started"]),
        ("c2", "cprobe.c1_done", ids["cprobe.c1_done"]),
        ("c4", "cprobe.c3_done", ids["cprobe.c3_done"]),
    ]
    assert all(
        "saga completed" in (h.detail or {})["why"]
        for h in kinds(after_history, HistoryKind.EVENT_IGNORED)
    )
    assert after.state is SagaState.COMPLETED and after_status == done_status
    assert after_history[: len(done_history)] == done_history
    assert len(after_history) == len(done_history) + 3
    assert cluster.effects(saga_id) == effects


def test_a_copy_of_the_event_a_handler_is_retrying_does_not_run_it_again(
    cluster: Cluster,
) -> None:
    """c3 failed transiently (its gate is closed) and waits for its retry; a copy of the event
    that triggered it (same event id) arrives meanwhile. Attempt 1 is settled (step_failed and
    retry_scheduled are committed), so the copy is a duplicate: it must not start another
    attempt 1, nor a second chain of retries."""
    saga_id = cluster.start("choreo_probe", {"tag": "retrying", "gate": True})
    wait_until_gated(cluster, saga_id)
    ids = chain_ids(saga_id, choreo_probe)
    inject(cluster, copy_of(cluster, saga_id, "cprobe.c2_done", choreo_probe))

    def first_attempts(h: list[HistoryEntry]) -> int:
        return len(
            [e for e in kinds(h, HistoryKind.STEP_FAILED) if (e.step, e.attempt) == ("c3", 1)]
        )

    # Either outcome is visible in the history: the copy noted, or c3's attempt 1 run again.
    _, _, history = cluster.wait_for_history(
        saga_id,
        lambda h: bool(kinds(h, HistoryKind.EVENT_DUPLICATE)) or first_attempts(h) > 1,
        what="the copy handled",
    )
    open_gate(cluster, saga_id)
    record, status, final = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert first_attempts(history) == 1, (
        "a copy of c3's triggering event ran c3 again while its retry was pending:\n"
        + report.timeline(record, status, final)
    )
    assert notes(history, HistoryKind.EVENT_DUPLICATE) == [
        ("c3", "cprobe.c2_done", ids["cprobe.c2_done"])
    ]
    scheduled = [h.attempt for h in kinds(final, HistoryKind.RETRY_SCHEDULED) if h.step == "c3"]
    assert len(scheduled) == len(set(scheduled)), f"two retry chains for c3: {scheduled}"


# -- 4. an event after the saga ended -------------------------------------------------------------


def test_an_event_arriving_after_the_saga_ended_is_ignored(cluster: Cluster) -> None:
    saga_id = cluster.start("choreo_probe", {"fail": "c2"})
    snapshot = cluster.wait_for(saga_id, TERMINAL)
    record, status, history = snapshot
    assert record.state is SagaState.FAILED
    effects = cluster.effects(saga_id)

    # New events (never published for this saga) that would run c2 again and start c3.
    for name in ("cprobe.c1_done", "cprobe.c2_done"):
        inject(
            cluster,
            event(
                saga_id,
                name,
                choreography=choreo_probe,
                event_id=uuid.uuid4().hex,
                correlation_id=record.correlation_id,
                data={"late": True},
            ),
        )
    after, after_status, after_history = cluster.wait_for_history(
        saga_id,
        lambda h: len(kinds(h, HistoryKind.EVENT_IGNORED)) == 2,
        what="two late events ignored",
    )
    assert sorted(
        (step, name) for step, name, _ in notes(after_history, HistoryKind.EVENT_IGNORED)
    ) == [
        ("c2", "cprobe.c1_done"),
        ("c3", "cprobe.c2_done"),
    ]
    assert after.state is SagaState.FAILED and after_status == status
    assert after_history[: len(history)] == history and len(after_history) == len(history) + 2
    assert cluster.effects(saga_id) == effects

    # The example: a late "inventory.reserved" for an order that was out of stock charges nothing.
    order = cluster.start(
        "order_choreography",
        order_payload(new_id("CL"), items=[{"sku": "X", "quantity": 5000, "unit_cents": 1}]),
    )
    o_record, o_status, o_history = cluster.wait_for(order, TERMINAL)
    assert o_record.state is SagaState.FAILED
    inject(
        cluster,
        event(
            order,
            "inventory.reserved",
            choreography=order_choreography,
            event_id=uuid.uuid4().hex,
            correlation_id=o_record.correlation_id,
            data={"reservation_id": "forged"},
        ),
    )
    _, o_after, o_after_history = cluster.wait_for_history(
        order,
        lambda h: len(kinds(h, HistoryKind.EVENT_IGNORED)) == 1,
        what="late inventory.reserved ignored",
    )
    assert notes(o_after_history, HistoryKind.EVENT_IGNORED)[0][:2] == (
        "charge_payment",
        "inventory.reserved",
    )
    assert o_after == o_status
    assert service_rows(cluster, order) == {"reservations": [], "charges": [], "receipts": []}


# -- 5. a missing event: handler timeouts fired by the beat sweeper ---------------------------------


def test_missing_events_time_out_failing_or_flagging_the_saga(cluster: Cluster) -> None:
    failing = cluster.start("choreo_stall", {"tag": "stall"})
    flagged = cluster.start("choreo_flag", {"tag": "flag"})

    # fail_on_timeout: the sweeper flags it and publishes t2's failure event; t1 is compensated.
    record, status, history = snapshot = cluster.wait_for(failing, TERMINAL, timeout=30)
    assert record.kind == "choreographed" and record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "StepTimeout"
    assert states(snapshot) == [StepState.COMPENSATED, StepState.TIMED_OUT]
    [stuck] = kinds(history, HistoryKind.SAGA_STUCK)
    assert stuck.step == "t2" and (stuck.detail or {})["waiting_for"] == "cstall.done"
    assert published(history) == ["cstall.started", "cstall.t1_done", "cstall.t2_failed"]
    [t1_done] = [h for h in kinds(history, HistoryKind.STEP_SUCCEEDED) if h.step == "t1"]
    # Not before t2's timeout had passed (database clock).
    assert (stuck.at - t1_done.at).total_seconds() >= STALL_TIMEOUT
    [failed_event] = [
        h
        for h in kinds(history, HistoryKind.EVENT_PUBLISHED)
        if (h.detail or {})["event"] == "cstall.t2_failed"
    ]
    [undone] = kinds(history, HistoryKind.STEP_COMPENSATED)
    assert undone.step == "t1"
    assert stuck.id < failed_event.id < undone.id and stuck.at < undone.at
    assert_history_ordered(history)
    effects = cluster.effects(failing)
    assert runs(effects) == [("t1", "forward", 1), ("t2", "forward", 1), ("t1", "compensate", 1)]
    assert_in_order(effects)
    cluster.wait_for_log("sagas", "choreographed saga stuck", failing)

    # Without fail_on_timeout: flagged (parked) and left pending for an operator.
    record, status, history = cluster.wait_for_history(
        flagged,
        lambda h: bool(kinds(h, HistoryKind.SAGA_STUCK)),
        what="the saga flagged stuck",
    )
    assert record.parked and record.state is SagaState.PENDING
    assert [
        (h.step, (h.detail or {}).get("waiting_for"))
        for h in kinds(history, HistoryKind.SAGA_STUCK)
    ] == [("w1", "cflag.done")]
    assert published(history) == ["cflag.started"]
    assert status.steps[0].state is StepState.RUNNING and status.steps[0].deadline_at is None
    assert record.wake_at is None  # nothing left for the sweeper to do: flagged once
    assert runs(cluster.effects(flagged)) == [("w1", "forward", 1)]
    cluster.wait_for_log("sagas", "choreographed saga stuck", flagged)


# -- 6. malformed events, unknown sagas -------------------------------------------------------------


def test_malformed_events_are_logged_and_dropped(cluster: Cluster) -> None:
    saga_id = cluster.start("choreo_probe", {"tag": "malformed"})
    cluster.wait_for(saga_id, TERMINAL)
    # The last handler clears its outbox just after the terminal state commits (once its
    # publish returned): wait for that too, or it would show up as a change made below.
    assert poll(lambda: cluster.store.get(saga_id)[0].outbox is None, 10)
    before = cluster.store.get(saga_id)
    effects = cluster.effects(saga_id)
    good = copy_of(cluster, saga_id, "cprobe.started", choreo_probe)
    bad: dict[str, Any] = {
        "missing saga_id": {k: v for k, v in good.items() if k != "saga_id"},
        "unknown event": {**good, "name": "cprobe.unheard_of"},
        "not JSON data": {**good, "data": {"x": float("nan")}},
        "unknown choreography": {**good, "choreography": "no_such_choreography"},
        "not an object": "cprobe.started for " + saga_id,
    }
    # Every variant is routed with a key the inventory queue is bound to.
    tasks = {what: inject(cluster, message, "cprobe.started") for what, message in bad.items()}
    for task_id in tasks.values():
        wait_handled(cluster, task_id, "inventory")

    dropped = lines_with(cluster, "inventory", DROPPED)
    for needle in (
        "field saga_id: Field required",
        "unknown event 'cprobe.unheard_of'",
        "data.x:",
        "unknown choreography 'no_such_choreography'",
    ):
        assert [ln for ln in dropped if needle in ln], (needle, dropped)
    assert cluster.store.get(saga_id) == before
    assert cluster.effects(saga_id) == effects
    assert orphans(cluster, saga_id) == []


def test_events_for_an_unknown_saga_are_kept_as_orphans(cluster: Cluster) -> None:
    ghost = new_id("ghost")
    start = event(
        ghost,
        "cprobe.started",
        choreography=choreo_probe,
        event_id=uuid.uuid4().hex,
        correlation_id="corr-" + ghost,
        data={"tag": "ghost"},
    )
    wait_handled(cluster, inject(cluster, start), "inventory")
    wait_handled(cluster, inject(cluster, start), "inventory")  # the same event, twice
    assert orphans(cluster, ghost) == [("inventory", "cprobe.started", start["event_id"])]
    cluster.wait_for_log("inventory", "recorded as orphaned", ghost)
    assert cluster.saga_rows(ghost) == 0
    assert cluster.effects(ghost) == []

    # A failure event reaches every service whose compensation reacts to it: each keeps it.
    lost = new_id("ghost")
    failure = event(
        lost,
        "cprobe.c3_failed",
        choreography=choreo_probe,
        event_id=uuid.uuid4().hex,
        correlation_id="corr-" + lost,
    )
    wait_handled(cluster, inject(cluster, failure), "inventory", "payment")
    assert orphans(cluster, lost) == [
        ("inventory", "cprobe.c3_failed", failure["event_id"]),
        ("payment", "cprobe.c3_failed", failure["event_id"]),
    ]
    assert cluster.saga_rows(lost) == 0


# -- 7. the bus leaves nothing behind on the broker -------------------------------------------------


def queue_depths(cluster: Cluster) -> dict[str, int]:
    if cluster.broker == "redis":
        import redis

        client = redis.Redis.from_url(cluster.broker_url)
        try:
            prefix = cluster.keyprefix
            depths = {}
            for key in client.scan_iter(match=f"{prefix}sagas.events*"):
                name = key.decode()[len(prefix) :]
                if client.type(key) == b"list":
                    depths[name] = int(client.llen(key))
            return depths
        finally:
            client.close()
    out = rabbitmqctl(cluster, "list_queues", "name", "messages_ready")
    return {
        name: int(count)
        for name, count in (line.split("\t") for line in out.splitlines() if "\t" in line)
        if name.startswith("sagas.events")
    }


def test_event_queues_hold_no_undelivered_copies_and_no_foreign_bindings(
    cluster: Cluster,
) -> None:
    """Per-service deployment: every copy of an event goes to a queue some worker consumes (no
    copy piles up where nobody reads it), and the event queues receive nothing but events."""
    saga_id = cluster.start("choreo_probe", {"tag": "leftovers"})
    cluster.wait_for(saga_id, TERMINAL)
    consumed = set(expected_bindings())

    def drained() -> bool:
        depths = queue_depths(cluster)
        return all(depths.get(queue, 0) == 0 for queue in consumed)

    assert poll(drained, 10), f"consumed event queues not drained: {queue_depths(cluster)}"
    problems = []
    leftovers = {q: n for q, n in queue_depths(cluster).items() if q not in consumed and n}
    if leftovers:
        problems.append(f"events piling up in queues no worker consumes: {leftovers}")
    bindings = broker_bindings(cluster)
    assert bindings[("sagas", "sagas")] == {"sagas"}  # the reader sees the other exchanges too
    unconsumed = sorted(
        q for (exchange, q) in bindings if exchange == "sagas.events" and q not in consumed
    )
    if unconsumed:
        problems.append(f"queues bound to sagas.events that no worker consumes: {unconsumed}")
    foreign = {
        (exchange, q): keys
        for (exchange, q), keys in bindings.items()
        if q.startswith("sagas.events") and exchange != "sagas.events"
    }
    if foreign:
        problems.append(f"event queues bound to other exchanges: {foreign}")
    assert not problems, "\n".join(problems)
