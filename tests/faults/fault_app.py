"""The Celery app the fault suite's workers run: ``celery -A tests.faults.fault_app worker``.

The integration suite's worker app (``tests/integration/worker_app.py``) with the fault probe
sagas, plus knobs a scenario sets per process through the environment:

- ``SAGAS_FT_VISIBILITY``: Redis ``visibility_timeout`` in seconds (default 3600), with kombu's
  restore sweep every 0.5 s so it takes effect;
- ``SAGAS_FAULTS``, ``SAGAS_LOCAL_TRANSITIONS``, ``SAGAS_OUTBOX_GRACE``...: read by sagas itself.

Shared with the integration app: ``tests/worker_harness.py`` (key prefix, watchdog, log fields).
"""

from __future__ import annotations

import os

from celery import Celery

from tests.worker_harness import base_app, start_worker_process

IMPORTS = ["tests.faults.fprobe"]
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(message)s"


def make_app(broker_url: str | None = None, keyprefix: str | None = None) -> Celery:
    visibility = os.environ.get("SAGAS_FT_VISIBILITY")
    return base_app(
        "sagas_faults",
        IMPORTS,
        LOG_FORMAT,
        broker_url,
        keyprefix,
        visibility=float(visibility) if visibility else None,
        task_log_format=LOG_FORMAT,
    )


app = make_app()
start_worker_process(app)
