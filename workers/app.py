"""The Celery app every example worker runs (``celery -A workers.app worker -Q <queue>``).

The services themselves ship in the package (``sagas.examples``) so that ``saga demo`` runs
from a plain install; this is their deployment.

Configuration comes from ``celeryconfig.py`` (environment variables with safe defaults).
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger

import sagas
from sagas.observability import SagaContextFilter
from sagas.transport import event_queues

app = Celery("sagas_example")
app.config_from_object("celeryconfig")
# Each worker imports the saga definitions (the coordinator needs them; services run their
# steps) and the plain Celery task of the notification service.
app.conf.imports = [
    "sagas.examples.order_fulfillment",
    "sagas.examples.order_choreography",
    "sagas.examples.notification",
]
app.loader.import_default_modules()
# Each service's choreography event queue, bound to the topic exchange per event it handles.
app.conf.task_queues = [*app.conf.task_queues, *event_queues()]
sagas.configure(app=app)


@after_setup_logger.connect(weak=False)
def _saga_log_fields(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(SagaContextFilter())
