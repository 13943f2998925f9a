"""``saga demo`` in server mode: the same three order sagas on the configured database and
broker, with the Procfile topology as child processes (one ``celery worker`` per queue and a
beat for the sweeper). Needs this checkout (``celeryconfig.py``, ``workers/``); the embedded
demo, which needs neither, is ``sagas.examples.demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

import sagas
from sagas.examples.demo import print_timelines, run_embedded, run_id, start_all, wait_all
from sagas.settings import Settings, mask_url
from sagas.store import Store
from sagas.store.migrate import upgrade
from workers.app import app

SERVICES = ("inventory", "payment", "shipping", "notification")
# One coordinator worker; one worker per service consuming its step queue and its event queue.
QUEUES = ("sagas", *(f"{s},sagas.events.{s}" for s in SERVICES))
ROOT = Path(__file__).resolve().parent.parent


def run(*, spawn_workers: bool = True, choreography: bool = False) -> None:
    settings = Settings()
    if not settings.broker_url:
        run_embedded(choreography=choreography, app=app)
        return
    store = Store(settings.database_url_sqlalchemy)
    store.ping()
    upgrade(store.engine)
    click.echo(
        f"server mode: store {mask_url(settings.database_url)}, "
        f"broker {mask_url(settings.broker_url)}"
    )
    rt = sagas.configure(settings=settings, store=store, app=app)
    context = _worker_processes(settings) if spawn_workers else _nothing()
    with context:
        ids = start_all(rt, run_id(), via_celery=True, choreography=choreography)
        wait_all(store, ids, timeout=90)
    print_timelines(store, ids)


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
