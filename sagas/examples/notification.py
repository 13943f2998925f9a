"""Notification service: a plain Celery task that knows nothing about sagas.

The saga names it by string (``remote_step(task="notification.send_confirmation")``); the
coordinator never imports this module. It receives ``payload`` and ``saga`` (ids, attempt,
idempotency key, correlation id) as keyword arguments and its return value is the step's result.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="notification.send_confirmation", acks_late=True, reject_on_worker_lost=True)
def send_confirmation(payload: dict[str, Any], saga: dict[str, Any]) -> dict[str, Any]:
    log.info(
        "confirmation for order %s sent to %s (correlation %s)",
        payload["order_id"],
        payload["email"],
        saga["correlation_id"],
    )
    return {"sent_to": payload["email"]}
