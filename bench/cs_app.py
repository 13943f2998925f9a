"""Celery app for the celery-saga baseline: ``celery -A bench.cs_app worker -Q bench_cs``.

celery-saga (PyPI ``celery-saga``) runs a saga as one Celery chain: start, one orchestrator task
per step (which runs the step task eagerly and saves the saga's state), complete. Its state lives
in Redis (``RedisSagaBackend``). Same celeryconfig as the sagas workers.
"""

from __future__ import annotations

import os

from celery import Celery
from celery_saga import Saga, set_default_backend
from celery_saga.backends import RedisSagaBackend
from kombu import Exchange, Queue

QUEUE = "bench_cs"

app = Celery("celery_saga_bench")
app.config_from_object("celeryconfig")
app.conf.task_queues = [
    *app.conf.task_queues,
    Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE, durable=True),
]
if os.environ.get("BENCH_NO_EVENTS"):
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
set_default_backend(RedisSagaBackend(url=os.environ["BENCH_CS_STATE_URL"]))


@app.task(name="bench_cs.step1")
def step1(**_: object) -> None:
    return None


@app.task(name="bench_cs.step2")
def step2(**_: object) -> None:
    return None


@app.task(name="bench_cs.step3")
def step3(**_: object) -> None:
    return None


@app.task(name="bench_cs.step4")
def step4(**_: object) -> None:
    return None


bench_saga = (
    Saga("bench_cs")
    .add_step(step1, no_compensation=True)
    .add_step(step2, no_compensation=True)
    .add_step(step3, no_compensation=True)
    .add_step(step4, no_compensation=True)
)
