"""Run sagas in one process: an in-memory broker, a worker thread and a sweeper thread.

This is the embedded default behind ``saga demo`` and a harness for users' own tests:

    with embedded(app, database_url="sqlite:///test.db") as rt:
        saga_id = order_fulfillment.start(payload)
        record = wait_for(rt.store, saga_id)
        assert record.state is SagaState.COMPLETED
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery.contrib.testing.worker import start_worker

from . import sweeper
from .catalog import registered_sagas
from .choreography.definition import Choreography
from .errors import SagaError, SagaNotFound
from .install import configure
from .runtime import Runtime
from .settings import Settings
from .state import SagaState
from .store import SagaRecord, Store
from .store.migrate import upgrade
from .transport import COMBINED_QUEUE, event_queues


def saga_queues(coordinator_queue: str = "sagas") -> list[str]:
    """Every queue the registered sagas use, plus the coordinator's."""
    queues = {coordinator_queue}
    for saga in registered_sagas().values():
        if isinstance(saga, Choreography):
            queues.add(COMBINED_QUEUE)  # one in-process worker: one combined event queue
            continue
        for step in saga.steps:
            queues.update((step.queue, step.compensation_queue))
    return sorted(queues)


@contextmanager
def embedded(
    app: Any,
    *,
    database_url: str = "sqlite://",
    queues: Iterable[str] | None = None,
    sweep_interval: float = 0.25,
    concurrency: int = 4,
    settings: Settings | None = None,
) -> Iterator[Runtime]:
    """Configure sagas on ``app`` with an in-memory broker and run a worker and a sweeper."""
    settings = settings or Settings(database_url=database_url, sweep_interval=sweep_interval)
    store = Store(settings.database_url_sqlalchemy)
    upgrade(store.engine)
    app.loader.import_default_modules()  # the app's saga modules decide which queues exist
    app.conf.broker_url = "memory://localhost/"
    # memory:// polls; the default one-second poll would add a second to every hop.
    app.conf.broker_transport_options = {"polling_interval": 0.01}
    app.conf.task_always_eager = False
    # Choreography events reach the single worker through one queue bound to every event.
    combined = event_queues(combined=True)
    known = {q.name for q in app.conf.task_queues or ()}
    app.conf.task_queues = [
        *(app.conf.task_queues or ()),
        *(q for q in combined if q.name not in known),
    ]
    rt = configure(settings=settings, store=store, app=app)
    with start_worker(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        queues=list(queues or saga_queues(settings.coordinator_queue)),
        loglevel="WARNING",
        shutdown_timeout=30,
    ):
        with _sweeper_thread(rt, sweep_interval):
            yield rt


@contextmanager
def _sweeper_thread(rt: Runtime, interval: float) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            sweeper.sweep(rt)

    thread = threading.Thread(target=loop, name="sagas-sweeper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def wait_for(
    store: Store,
    saga_id: str,
    *,
    states: Iterable[SagaState] = (SagaState.COMPLETED, SagaState.FAILED),
    timeout: float = 30.0,
    parked: bool = False,
) -> SagaRecord:
    """Poll the store until the saga reaches one of ``states`` (or is parked, if asked)."""
    wanted = set(states)
    deadline = time.monotonic() + timeout
    last: SagaRecord | None = None
    while time.monotonic() < deadline:
        try:
            last = store.get(saga_id)[0]
        except SagaNotFound:
            last = None
        if last is not None and (last.state in wanted or (parked and last.parked)):
            return last
        time.sleep(0.02)
    seen = last.state.value if last else "no saga row"
    raise SagaError(f"saga {saga_id!r} did not reach {sorted(wanted)} in {timeout}s ({seen})")
