"""Run sagas in one process: an in-memory broker, a real Celery worker thread pool and a
sweeper thread, in real time.

This is the embedded default behind ``saga demo``:

    with embedded(app) as rt:
        saga_id = order_fulfillment.start(payload)
        record = wait_for(rt.store, saga_id)
        assert record.state is SagaState.COMPLETED

The store defaults to a private temporary SQLite file, deleted on exit. An in-memory SQLite
database (``sqlite://``) is one connection shared by every thread; the worker's threads, the
sweeper and the caller then interleave transactions on it ("cannot start a transaction within
a transaction"), so an in-memory URL is given a temporary file instead. For fast,
deterministic tests with a fake clock see ``sagas.testing.local_runtime``.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.contrib.testing.worker import start_worker

from .. import sweeper
from ..catalog import registered_sagas
from ..choreography.definition import Choreography
from ..errors import SagaError, SagaNotFound
from ..install import configure
from ..runtime import Runtime
from ..settings import Settings
from ..state import SagaState
from ..store import SagaRecord, Store
from ..store.migrate import upgrade
from ..transport import COMBINED_QUEUE, event_queues


def saga_queues(coordinator_queue: str = "sagas") -> list[str]:
    """Every queue the registered sagas use, plus the coordinator's."""
    queues = {coordinator_queue}
    for saga in registered_sagas().values():
        if isinstance(saga, Choreography):
            queues.add(COMBINED_QUEUE)  # one in-process worker: one combined event queue
            continue
        for step in saga.steps:
            if not step.is_wait:  # a wait runs no task
                queues.update((step.queue, step.compensation_queue))
    return sorted(queues)


@contextmanager
def embedded(
    app: Any,
    *,
    database_url: str | None = None,
    queues: Iterable[str] | None = None,
    sweep_interval: float | None = None,
    concurrency: int = 4,
    settings: Settings | None = None,
) -> Iterator[Runtime]:
    """Configure sagas on ``app`` with an in-memory broker and run a worker and a sweeper.

    ``database_url`` (or ``settings.database_url``) None or in-memory: a temporary SQLite file,
    private to this call and deleted on exit. The sweeper passes every ``sweep_interval``
    seconds: the argument if given, else ``settings.sweep_interval``, else 0.25 s (a test's
    timers fire promptly); the runtime's settings say the period it runs at."""
    if sweep_interval is not None and not sweep_interval > 0:
        raise ValueError(f"sweep_interval must be > 0 seconds, got {sweep_interval!r}")
    with private_database(settings.database_url if settings else database_url) as url:
        if settings is None:
            period = FAST_SWEEP if sweep_interval is None else sweep_interval
            settings = Settings(database_url=url, sweep_interval=period)
        else:
            update: dict[str, Any] = {"database_url": url}
            if sweep_interval is not None:
                update["sweep_interval"] = sweep_interval
            settings = settings.model_copy(update=update)
        with _embedded(app, settings, queues, settings.sweep_interval, concurrency) as rt:
            yield rt


FAST_SWEEP = 0.25


@contextmanager
def private_database(url: str | None) -> Iterator[str]:
    """``url``, unless it is None or an in-memory SQLite URL: then a temporary SQLite file
    (safe to share between threads, unlike one in-memory connection), removed on exit."""
    if url is not None and url not in MEMORY_URLS:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="sagas-test-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'sagas.db'}"


MEMORY_URLS = (
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite+pysqlite://",
    "sqlite+pysqlite:///:memory:",
)


@contextmanager
def _embedded(
    app: Any,
    settings: Settings,
    queues: Iterable[str] | None,
    sweep_interval: float,
    concurrency: int,
) -> Iterator[Runtime]:
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
            try:
                yield rt
            finally:
                store.dispose()


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
