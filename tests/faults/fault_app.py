"""The Celery app the fault suite's workers run: ``celery -A tests.faults.fault_app worker``.

The integration suite's worker app (``tests/integration/worker_app.py``) with the fault probe
sagas, plus knobs a scenario sets per process through the environment:

- ``SAGAS_FT_VISIBILITY``: Redis ``visibility_timeout`` in seconds (default 3600), with kombu's
  restore sweep every 0.5 s so it takes effect;
- ``SAGAS_FAULTS``, ``SAGAS_LOCAL_TRANSITIONS``, ``SAGAS_OUTBOX_GRACE``...: read by sagas itself.

``SAGAS_IT_KEYPREFIX`` puts every Redis key of the run under a prefix; ``SAGAS_IT_PARENT_PID``
names the test process: when it disappears, the worker stops itself (no orphans after a hard
kill of pytest).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from celery import Celery
from celery.signals import after_setup_logger

import sagas
from sagas.observability import SagaContextFilter

IMPORTS = ["tests.faults.fprobe"]
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(message)s"


def transport_options(broker_url: str, keyprefix: str = "") -> dict[str, object]:
    if broker_url.startswith(("amqp", "pyamqp")):
        return {"confirm_publish": True}
    options: dict[str, object] = {"visibility_timeout": 3600}
    if os.environ.get("SAGAS_FT_VISIBILITY"):
        # A tiny visibility timeout, and kombu's restore sweep run often enough to apply it.
        options["visibility_timeout"] = float(os.environ["SAGAS_FT_VISIBILITY"])
        options["unacked_restore_interval"] = 0.5
        options["unacked_restore_throttle"] = 1
    if keyprefix:
        options["global_keyprefix"] = keyprefix
    return options


def make_app(broker_url: str | None = None, keyprefix: str | None = None) -> Celery:
    broker_url = broker_url or os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    keyprefix = os.environ.get("SAGAS_IT_KEYPREFIX", "") if keyprefix is None else keyprefix
    app = Celery("sagas_faults", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_url = broker_url
    app.conf.broker_transport_options = transport_options(broker_url, keyprefix)
    app.conf.imports = IMPORTS
    app.conf.worker_log_format = LOG_FORMAT
    app.conf.worker_task_log_format = LOG_FORMAT
    return app


def _stop_with(pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgid(0), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="sagas-ft-watchdog", daemon=True).start()


app = make_app()
if os.environ.get("SAGAS_DATABASE_URL"):  # the workers; the test process configures itself
    sagas.configure(app=app)
if os.environ.get("SAGAS_IT_PARENT_PID") and os.getpgid(0) == os.getpid():
    _stop_with(int(os.environ["SAGAS_IT_PARENT_PID"]))


@after_setup_logger.connect(weak=False)
def _saga_log_fields(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(SagaContextFilter())
