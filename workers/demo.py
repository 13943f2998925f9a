"""``saga demo``: three order-fulfillment sagas end to end, then their timelines.

1. an order that completes;
2. an order whose card is declined (permanent): the inventory reservation is released;
3. an order whose carrier API fails twice (transient) and then books the shipment.

Embedded default (no CELERY_BROKER_URL): SQLite (``SAGAS_DATABASE_URL``, default ./sagas.db),
an in-memory broker and an in-process worker thread consuming every queue, plus an in-process
sweeper. Server mode (CELERY_BROKER_URL set): the configured database and broker, one
``celery worker`` process per queue (the Procfile topology) and a beat for the sweeper.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

import sagas
from sagas import report
from sagas.runtime import Runtime
from sagas.settings import Settings, mask_url
from sagas.store import Store
from sagas.store.migrate import upgrade
from sagas.testing import embedded, wait_for

SERVICES = ("inventory", "payment", "shipping", "notification")
# One coordinator worker; one worker per service consuming its step queue and its event queue.
QUEUES = ("sagas", *(f"{s},sagas.events.{s}" for s in SERVICES))
ROOT = Path(__file__).resolve().parent.parent


def orders(run_id: str, choreography: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
    base: dict[str, Any] = {
        "email": "ada@example.com",
        "card_number": "4242424242424242",
        "items": [{"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250}],
        "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
    }
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
        (
            f"demo-{run_id}-carrier-flaky",
            "carrier fails twice (transient), then ships",
            {**base, "order_id": f"C-{run_id}", "simulate": {"carrier_outages": 2}},
        )
        if not choreography
        else (
            f"demo-{run_id}-undeliverable",
            "shipment fails (permanent): payment refunded, then inventory released",
            {**base, "order_id": f"C-{run_id}", "simulate": {"undeliverable": True}},
        ),
    ]


def run(*, spawn_workers: bool = True, choreography: bool = False) -> None:
    settings = Settings()
    store = Store(settings.database_url_sqlalchemy)
    store.ping()
    upgrade(store.engine)
    from workers.app import app

    run_id = datetime.now(UTC).strftime("%H%M%S") + f"{os.getpid() % 1000:03d}"
    if settings.broker_url:
        click.echo(
            f"server mode: store {mask_url(settings.database_url)}, "
            f"broker {mask_url(settings.broker_url)}"
        )
        rt = sagas.configure(settings=settings, store=store, app=app)
        context = _worker_processes(settings) if spawn_workers else _nothing()
        with context:
            ids = _start_all(rt, run_id, via_celery=True, choreography=choreography)
            _wait(store, ids, timeout=90)
    else:
        click.echo(
            f"embedded mode: store {mask_url(settings.database_url)}, in-memory broker, "
            "in-process worker"
        )
        with embedded(app, settings=settings, sweep_interval=0.25) as rt:
            ids = _start_all(rt, run_id, via_celery=False, choreography=choreography)
            _wait(store, ids, timeout=60)
    for saga_id in ids:
        click.echo("")
        click.echo("=" * 100)
        click.echo(report.timeline(*store.get(saga_id)))
    click.echo("")
    click.echo(report.saga_list([store.get(i)[0] for i in ids]))


def _start_all(rt: Runtime, run_id: str, *, via_celery: bool, choreography: bool) -> list[str]:
    ids = []
    name = "order_choreography" if choreography else "order_fulfillment"
    for saga_id, label, payload in orders(run_id, choreography):
        click.echo(f"starting {saga_id} ({name}): {label}")
        if via_celery:
            # Exactly what a Django/Flask app does.
            sagas.start_saga.delay(name, payload, saga_id=saga_id)
        else:
            sagas.get_saga(name).start(payload, saga_id=saga_id)
        ids.append(saga_id)
    return ids


def _wait(store: Store, ids: list[str], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for saga_id in ids:
        wait_for(store, saga_id, timeout=max(deadline - time.monotonic(), 0.1))


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def _worker_processes(settings: Settings) -> Iterator[None]:
    """The Procfile topology as child processes, stopped by PID on exit."""
    env = {**os.environ, "SAGAS_SWEEP_INTERVAL": "1", "PYTHONPATH": str(ROOT)}
    celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
    procs = []
    for queue in QUEUES:
        procs.append(
            subprocess.Popen(
                [
                    *celery,
                    "worker",
                    "-Q",
                    queue,
                    "-n",
                    f"{queue}-demo@%h",
                    "-c",
                    "1",
                    "--loglevel",
                    "WARNING",
                ],
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        )
    procs.append(
        subprocess.Popen(
            [
                *celery,
                "beat",
                "--loglevel",
                "WARNING",
                "-s",
                str(Path(os.environ.get("TMPDIR", "/tmp")) / f"sagas-demo-beat-{os.getpid()}"),
            ],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
    )
    try:
        from workers.app import app

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replies = app.control.ping(timeout=1.0) or []
            if len(replies) >= len(QUEUES):
                break
        else:
            raise sagas.SagaError("workers did not come up within 60s")
        click.echo(f"{len(QUEUES)} worker processes and a beat are up")
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
