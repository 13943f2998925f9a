"""The Celery app the integration workers run: ``celery -A tests.integration.worker_app worker``.

Like ``workers/app.py`` (configuration from ``celeryconfig``, broker from ``CELERY_BROKER_URL``,
the example's sagas and choreography, each service's event queue ``sagas.events.<service>``
bound to the topic exchange per event it handles) but it also imports the probe sagas and the
probe choreographies. The test process builds its own client app with ``make_app(broker_url)``
so it can talk to each broker in turn.

Key prefix, watchdog and saga log fields: ``tests/worker_harness.py``, shared with the fault
suite's app.
"""

from __future__ import annotations

import importlib

from celery import Celery

from sagas.catalog import choreographies
from sagas.transport import event_queues
from tests.worker_harness import base_app, start_worker_process

IMPORTS = [
    "tests.integration.probe",
    "tests.integration.choreo_probe",
    "sagas.examples.order_fulfillment",
    "sagas.examples.order_choreography",
    "sagas.examples.notification",
]
# Plain (non-engine) log lines carry the saga's correlation id too (the harness's log filter).
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s {corr=%(correlation_id)s}"


def make_app(broker_url: str | None = None, keyprefix: str | None = None) -> Celery:
    app = base_app("sagas_integration", IMPORTS, LOG_FORMAT, broker_url, keyprefix)
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
        if all(
            h.fn.__module__.startswith(("sagas.examples.", "tests.integration."))
            for h in c.handlers
        )
    }


app = make_app()
start_worker_process(app)
