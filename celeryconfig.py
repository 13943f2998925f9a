"""Celery settings for the example deployment (the Procfile and docker-compose topology).

Every value can be overridden from the environment; nothing secret lives here. Why each choice:
see the README's "Celery settings" section.
"""

from __future__ import annotations

import os

from kombu import Exchange, Queue

broker_url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# Step outcomes travel as replies, not results; a backend is optional (remote steps use it for
# error details when present).
result_backend = os.environ.get("CELERY_RESULT_BACKEND") or None

# JSON only: never unpickle a message from the broker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

# A step's message is acknowledged only after the step ran; a killed worker's message comes back.
task_acks_late = True
task_reject_on_worker_lost = True
# Steps may be long: a worker reserves one message at a time so others are not stuck behind it.
worker_prefetch_multiplier = 1
task_track_started = False
# Flower and `celery events` see the task names and argsrepr (saga, step, attempt).
worker_send_task_events = True
# No "task-sent" event per publish: it is a second publish (confirmed, on RabbitMQ) for every
# step, ~10 % of a spread step worker's CPU there (bench/README.md, 2026-12-04), and shows only
# that a task is still queued, which the saga's own record (dispatched, not started) and
# Flower's Broker page already say.
task_send_sent_event = os.environ.get("CELERY_TASK_SEND_SENT_EVENT", "").lower() in {"1", "true"}

broker_connection_retry_on_startup = True
broker_transport_options: dict[str, object] = {}
if broker_url.startswith(("amqp", "pyamqp")):
    # Without publisher confirms a publish during a RabbitMQ restart can vanish silently.
    broker_transport_options = {"confirm_publish": True}
elif broker_url.startswith(("redis", "rediss")):
    # Unacked messages return after this long. Long retry waits live in the database, and
    # sagas never sends a countdown longer than SAGAS_MAX_COUNTDOWN (300 s), well below it.
    broker_transport_options = {"visibility_timeout": 3600}

COORDINATOR_QUEUE = os.environ.get("SAGAS_COORDINATOR_QUEUE", "sagas")
SERVICE_QUEUES = ("inventory", "payment", "shipping", "notification")

task_default_queue = "celery"
task_queues = [
    Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)
    for name in (COORDINATOR_QUEUE, *SERVICE_QUEUES, "celery")
]
# The engine names each step's queue when it sends; these routes cover tasks sent by name
# elsewhere (start_saga from a web app, the beat sweeper).
task_routes = {"sagas.*": {"queue": COORDINATOR_QUEUE}}

beat_schedule = {
    "sagas-sweep": {
        "task": "sagas.sweep",
        "schedule": float(os.environ.get("SAGAS_SWEEP_INTERVAL", "5")),
        # A sweep that waited longer than one period is superseded by the next.
        "options": {
            "queue": COORDINATOR_QUEUE,
            "expires": float(os.environ.get("SAGAS_SWEEP_INTERVAL", "5")),
        },
    },
}
