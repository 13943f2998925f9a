"""The Celery app every bench worker runs: ``celery -A bench.app worker -Q <queues>``.

Configured exactly like the example deployment (``/work/main/celeryconfig.py``: JSON, acks_late,
reject_on_worker_lost, prefetch 1, task events on), plus the bench queues, the bench sagas
(``bench.saga_defs``) and the Celery baselines (``bench.baseline_tasks``). The store and the
broker come from SAGAS_DATABASE_URL and CELERY_BROKER_URL.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

import sagas

SPREAD_QUEUES = ("bench_s1", "bench_s2", "bench_s3", "bench_s4")
INLINE_QUEUE = "bench_inline"
CHAIN_QUEUE = "bench_chain"
COORDINATOR_QUEUE = os.environ.get("SAGAS_COORDINATOR_QUEUE", "sagas")
ALL_QUEUES = (COORDINATOR_QUEUE, *SPREAD_QUEUES, INLINE_QUEUE, CHAIN_QUEUE)

app = Celery("sagas_bench")
app.config_from_object("celeryconfig")
app.conf.task_queues = [
    *app.conf.task_queues,
    *(
        Queue(n, Exchange(n, type="direct"), routing_key=n, durable=True)
        for n in (*SPREAD_QUEUES, INLINE_QUEUE, CHAIN_QUEUE)
    ),
]
if os.environ.get("BENCH_CELERY_DEFAULTS"):
    # The floor "under Celery's defaults": what a team running plain Celery has (ack on
    # receipt, prefetch 4 per process, no task events); JSON stays (no pickle, ever).
    app.conf.task_acks_late = False
    app.conf.task_reject_on_worker_lost = False
    app.conf.worker_prefetch_multiplier = 4
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
if os.environ.get("BENCH_NO_EVENTS"):
    # Variant: Celery task events off (celeryconfig turns them on for Flower).
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
if os.environ.get("BENCH_NO_SENT_EVENT"):
    # Variant: no task-sent event per publish (worker task events stay on).
    app.conf.task_send_sent_event = False
app.conf.imports = ["bench.saga_defs", "bench.baseline_tasks"]
if os.environ.get("BENCH_SQL_COUNT"):
    app.conf.imports.append("bench.sqlcount")
app.loader.import_default_modules()
sagas.configure(app=app)
