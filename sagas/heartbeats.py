"""Heartbeats from a remote step: the Celery task in another codebase says it is alive.

    @app.task(name="reports.build")
    def build(payload, saga):
        for n, chunk in enumerate(chunks(payload), start=(saga["progress"] or 0)):
            render(chunk)
            sagas.heartbeat(saga, n)      # by message to the coordinator's queue

A local step calls ``ctx.heartbeat(details)`` instead (it also learns whether its attempt is
fenced). The message is ``sagas.heartbeat`` on the coordinator queue, with the saga id, step,
attempt and details: a codebase without sagas installed can send the same with its own
``app.send_task``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .messages import HeartbeatMessage
from .payload import check_json
from .runtime import get_runtime
from .transport import send_heartbeat


def heartbeat(saga: Mapping[str, Any], details: Any = None) -> None:
    """Send a heartbeat for the attempt ``saga`` (the ``saga=`` keyword a remote step's task
    received) describes. ``details`` (JSON) reaches the next attempt as ``saga["progress"]``."""
    check_json(details, field="details")
    rt = get_runtime()
    beat = HeartbeatMessage(
        saga_id=saga["saga_id"], step=saga["step"], attempt=saga["attempt"], details=details
    )
    queue = saga.get("coordinator_queue") or rt.settings.coordinator_queue
    send_heartbeat(rt.celery, beat, str(saga.get("correlation_id") or ""), queue)
