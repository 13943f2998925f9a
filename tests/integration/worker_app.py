"""The Celery app the integration workers run: ``celery -A tests.integration.worker_app worker``.

Like ``workers/app.py`` (configuration from ``celeryconfig``, broker from ``CELERY_BROKER_URL``,
the example's sagas and choreography, each service's event queue ``sagas.events.<service>``
bound to the topic exchange per event it handles) but it also imports the probe sagas and the
probe choreographies. The test process builds its own client app with ``make_app(broker_url)``
so it can talk to each broker in turn.

``SAGAS_IT_KEYPREFIX`` (Redis only) puts every key of this run under a prefix, so a run never
sees messages left by an earlier one or by another process using the same Redis database.
``SAGAS_IT_PARENT_PID`` names the test process: when it disappears, the worker stops itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time

from celery import Celery
from celery.signals import after_setup_logger

import sagas
from sagas.eventbus import choreographies, event_queues
from sagas.observability import SagaContextFilter

IMPORTS = [
    "tests.integration.probe",
    "tests.integration.choreo_probe",
    "workers.order_fulfillment",
    "workers.order_choreography",
    "workers.notification",
]
# Plain (non-engine) log lines carry the saga's correlation id too, through the filter below.
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s {corr=%(correlation_id)s}"


def transport_options(broker_url: str, keyprefix: str = "") -> dict[str, object]:
    if broker_url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True}
    options: dict[str, object] = {"visibility_timeout": 3600}
    if keyprefix:
        options["global_keyprefix"] = keyprefix
    return options


def make_app(broker_url: str | None = None, keyprefix: str | None = None) -> Celery:
    broker_url = broker_url or os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    keyprefix = os.environ.get("SAGAS_IT_KEYPREFIX", "") if keyprefix is None else keyprefix
    app = Celery("sagas_integration", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url
    app.conf.broker_transport_options = transport_options(broker_url, keyprefix)
    app.conf.imports = IMPORTS
    app.conf.worker_log_format = LOG_FORMAT
    # The choreographies must be registered before their event queues are computed (as
    # workers/app.py does with ``import_default_modules``); the queues carry the bindings.
    for module in IMPORTS:
        importlib.import_module(module)
    app.conf.task_queues = [*app.conf.task_queues, *event_queues(only=served_choreographies())]
    return app


def served_choreographies() -> set[str]:
    """Choreographies defined in the modules the workers import (other test modules in the same
    pytest process register their own, which these workers do not serve)."""
    return {
        c.name
        for c in choreographies()
        if all(h.fn.__module__.startswith(("workers.", "tests.integration.")) for h in c.handlers)
    }


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

    threading.Thread(target=watch, name="sagas-it-watchdog", daemon=True).start()


app = make_app()
if os.environ.get("SAGAS_DATABASE_URL"):  # set for the workers; the test process configures itself
    sagas.configure(app=app)
if os.environ.get("SAGAS_IT_PARENT_PID") and os.getpgid(0) == os.getpid():
    _stop_with(int(os.environ["SAGAS_IT_PARENT_PID"]))


@after_setup_logger.connect(weak=False)
def _saga_log_fields(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(SagaContextFilter())
