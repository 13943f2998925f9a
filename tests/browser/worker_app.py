"""The Celery app of the browser tests' worker and dashboard processes:
``celery -A tests.browser.worker_app worker`` and ``saga dashboard --app
tests.browser.worker_app:app`` (broker, key prefix and store from the environment)."""

from __future__ import annotations

import tests.browser.shop  # noqa: F401 - the sagas both processes define
from tests.worker_harness import base_app, start_worker_process

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"

app = base_app("sagas_browser", ["tests.browser.shop"], LOG_FORMAT)
start_worker_process(app)
