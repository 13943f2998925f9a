"""``saga demo``, embedded: three order sagas end to end on SQLite, an in-memory broker and an
in-process worker and sweeper, then their timelines. Works from a plain install.

1. an order that completes;
2. an order whose card is declined (permanent): the inventory reservation is released;
3. an order whose carrier API fails twice (transient) and then ships (with ``choreography``:
   a shipment that fails for good: the payment is refunded, then the inventory released).

``saga demo --example loan`` runs the loan approval example (a two-day wait for an officer's
signal) on the test runtime's fake clock instead, so its two days pass at once;
``--example trip`` the trip booking example (flight, hotel and car in parallel, the charge as
the pivot) the same way.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from celery import Celery

from .. import report
from ..catalog import get_saga
from ..runtime import Runtime
from ..settings import Settings, mask_url
from ..signals import signal
from ..store import Store
from ..store.migrate import upgrade
from ..tasks import start_saga
from ..testing import embedded, wait_for
from ..testing.runtime import local_runtime

EXAMPLE_MODULES = [
    "sagas.examples.order_fulfillment",
    "sagas.examples.order_choreography",
    "sagas.examples.notification",
]


def demo_app() -> Celery:
    """A Celery app for the example, configured in code (JSON only, the example modules)."""
    app = Celery("sagas_demo", set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        imports=EXAMPLE_MODULES,
    )
    return app


def orders(run_id: str, choreography: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    base: dict[str, Any] = {
        "email": "ada@example.com",
        "card_number": "4242424242424242",
        "items": [{"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250}],
        "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
    }
    third = (
        (
            f"demo-{run_id}-undeliverable",
            "shipment fails (permanent): payment refunded, then inventory released",
            {**base, "order_id": f"C-{run_id}", "simulate": {"undeliverable": True}},
        )
        if choreography
        else (
            f"demo-{run_id}-carrier-flaky",
            "carrier fails twice (transient), then ships",
            {**base, "order_id": f"C-{run_id}", "simulate": {"carrier_outages": 2}},
        )
    )
    return [
        (
            f"demo-{run_id}-completes",
            "an order that completes",
            {**base, "order_id": f"A-{run_id}"},
        ),
        (
            f"demo-{run_id}-card-declined",
            "card declined (permanent): inventory released",
            {**base, "order_id": f"B-{run_id}", "card_number": "4000000000000002"},
        ),
        third,
    ]


def run_id() -> str:
    return datetime.now(UTC).strftime("%H%M%S") + f"{os.getpid() % 1000:03d}"


def run_embedded(*, choreography: bool = False, app: Any = None) -> None:
    settings = Settings()
    store = Store(settings.database_url_sqlalchemy)
    store.ping()
    upgrade(store.engine)
    click.echo(
        f"embedded mode: store {mask_url(settings.database_url)}, in-memory broker, "
        "in-process worker"
    )
    rid = run_id()
    with embedded(app or demo_app(), settings=settings, sweep_interval=0.25) as rt:
        ids = start_all(rt, rid, via_celery=False, choreography=choreography)
        wait_all(store, ids, timeout=60)
    print_timelines(store, ids)


def start_all(rt: Runtime, rid: str, *, via_celery: bool, choreography: bool) -> list[str]:

    ids = []
    name = "order_choreography" if choreography else "order_fulfillment"
    for saga_id, label, payload in orders(rid, choreography):
        click.echo(f"starting {saga_id} ({name}): {label}")
        if via_celery:
            start_saga.delay(name, payload, saga_id=saga_id)  # exactly what a web app does
        else:
            get_saga(name).start(payload, saga_id=saga_id)
        ids.append(saga_id)
    return ids


def wait_all(store: Store, ids: list[str], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for saga_id in ids:
        wait_for(store, saga_id, timeout=max(deadline - time.monotonic(), 0.1))


def print_timelines(store: Store, ids: list[str]) -> None:
    for saga_id in ids:
        click.echo("")
        click.echo("=" * 100)
        click.echo(report.timeline(*store.get(saga_id)))
    click.echo("")
    click.echo(report.saga_list([store.get(i)[0] for i in ids]))


def run_loans() -> None:
    """Three loans on the fake clock: approved by an officer after a day, decided before the
    saga reached its wait, and never decided (the two-day wait times out)."""
    app = Celery("sagas_demo_loans", set_as_current=False)
    app.conf.update(imports=["sagas.examples.loan_approval"])
    click.echo("loan approval on the test runtime: fake clock, in-process broker, no servers")
    rid = run_id()
    ids = [f"loan-{rid}-{k}" for k in ("approved", "early", "no-decision")]
    with local_runtime(app, consume=["loans"]) as rt:
        loan = get_saga("loan_approval")
        payload = {"applicant": "ada@example.com", "amount_cents": 2_500_000}
        first = rt.start(loan, {**payload, "loan_id": ids[0]}, saga_id=ids[0])
        early = rt.start(loan, {**payload, "loan_id": ids[1]}, saga_id=ids[1], run=False)
        sent = signal(early, "officer_decision", {"officer": "grace", "note": "pre-approved"})
        click.echo(f"{early}: officer_decision sent before the wait: {sent.outcome}")
        rt.run()
        rt.start(loan, {**payload, "loan_id": ids[2]}, saga_id=ids[2])
        rt.advance(timedelta(days=1))
        sent = signal(first, "officer_decision", {"officer": "alan"})
        click.echo(f"{first}: officer_decision one day later: {sent.outcome}")
        for saga_id in ids:
            rt.wait(saga_id)  # skips the fake clock to the two-day timeout where it must
        print_timelines(rt.store, ids)


def run_trips() -> None:
    """Three trips on the fake clock: all booked; the hotel full (the flight and the car are
    cancelled); the mailer down after the charge (retried, then parked: never unbooked)."""
    app = Celery("sagas_demo_trips", set_as_current=False)
    app.conf.update(imports=["sagas.examples.trip_booking"])
    click.echo("trip booking on the test runtime: fake clock, in-process broker, no servers")
    rid = run_id()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("booked", {}),
        ("hotel-full", {"full": ["hotel"]}),
        ("mailer-down", {"mail_down": True}),
    ]
    ids = []
    with local_runtime(app, consume=["flights", "hotels", "cars", "payments", "mail"]) as rt:
        trip = get_saga("trip_booking")
        for name, extra in cases:
            saga_id = f"trip-{rid}-{name}"
            click.echo(f"starting {saga_id}")
            rt.start(trip, {"trip_id": saga_id, "traveller": "ada@example.com", **extra},
                     saga_id=saga_id)  # fmt: skip
            rt.wait(saga_id)
            ids.append(saga_id)
        print_timelines(rt.store, ids)
