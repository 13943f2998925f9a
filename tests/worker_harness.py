"""What the integration and fault suites' Celery worker apps share: broker options, the app
built from ``celeryconfig``, saga log fields on every handler, and the watchdog that stops a
worker whose test process is gone.

``SAGAS_IT_KEYPREFIX`` (Redis only) puts every key of a run under a prefix, so a run never sees
messages left by an earlier one or by another process using the same Redis database.
``SAGAS_IT_PARENT_PID`` names the test process: when it disappears, the worker stops itself
(no orphans after a hard kill of pytest).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from celery import Celery
from celery.signals import after_setup_logger
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

import sagas
from sagas.observability import SagaContextFilter


def transport_options(
    broker_url: str, keyprefix: str = "", visibility: float | None = None
) -> dict[str, object]:
    if broker_url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True}
    options: dict[str, object] = {"visibility_timeout": 3600}
    if visibility is not None:
        # A tiny visibility timeout, and kombu's restore sweep run often enough to apply it.
        options["visibility_timeout"] = visibility
        options["unacked_restore_interval"] = 0.5
        options["unacked_restore_throttle"] = 1
    if keyprefix:
        options["global_keyprefix"] = keyprefix
    return options


def base_app(
    name: str,
    imports: list[str],
    log_format: str,
    broker_url: str | None = None,
    keyprefix: str | None = None,
    visibility: float | None = None,
    task_log_format: str | None = None,
) -> Celery:
    """An app configured like ``workers/app.py``, talking to ``broker_url`` (or the
    environment's) under ``keyprefix``."""
    broker_url = broker_url or os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    keyprefix = os.environ.get("SAGAS_IT_KEYPREFIX", "") if keyprefix is None else keyprefix
    app = Celery(name, set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url
    app.conf.broker_transport_options = transport_options(broker_url, keyprefix, visibility)
    app.conf.imports = imports
    app.conf.worker_log_format = log_format
    if task_log_format is not None:
        app.conf.worker_task_log_format = task_log_format
    return app


def start_worker_process(app: Celery) -> None:
    """Called at import by a worker app module: configure sagas (workers only: the test process
    configures itself) and stop with the test process."""
    if os.environ.get("SAGAS_DATABASE_URL"):
        sagas.configure(app=app)
    if os.environ.get("SAGAS_IT_PARENT_PID") and os.getpgid(0) == os.getpid():
        _stop_with(int(os.environ["SAGAS_IT_PARENT_PID"]))


_engine: Engine | None = None
_engine_pid: int | None = None
_engine_lock = threading.Lock()


def process_engine() -> Engine:
    """An engine on SAGAS_DATABASE_URL for the probes' own tables (effects, runs): one per
    process, made on first use, so a prefork child never shares its parent's connections."""
    global _engine, _engine_pid
    with _engine_lock:
        if _engine is None or _engine_pid != os.getpid():
            url = os.environ["SAGAS_DATABASE_URL"]
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            _engine = create_engine(url, poolclass=NullPool)
            _engine_pid = os.getpid()
        return _engine


def _stop_with(pid: int) -> None:
    """Stop this process group (a worker and its pool) once the test process ``pid`` is gone,
    so a test run killed hard (no fixture teardown) leaves no worker behind."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgid(0), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="sagas-test-watchdog", daemon=True).start()


@after_setup_logger.connect(weak=False)
def _saga_log_fields(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(SagaContextFilter())
