"""Hostile or broken messages put straight onto the broker never run a step, and a saga whose
command was lost recovers by its step timeout.

``security_lost``'s real command sits on a queue nobody consumes (a lost message). Copies of it
are then published onto a consumed queue: as pickle, as an undecodable body, as JSON nested too
deep to decode, and as JSON of the wrong shape. None may run the step; the saga must still end,
failed by its step timeout. A control copy sent as plain JSON for a second saga does run, which
shows the forged copies were delivered and would have run had the worker accepted them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import before_task_publish
from kombu import Exchange, Queue

from sagas import SagaState, StepState, get_saga
from sagas.observability import metrics
from sagas.runtime import Runtime
from sagas.testing import wait_for
from tests.security import probe
from tests.security.conftest import eventually, sid
from workers.app import app

LOST_TASK = "saga.security_lost.lost_step"
TARGET = "security"  # a queue the worker consumes


@pytest.fixture
def commands() -> Iterator[dict[str, dict[str, Any]]]:
    """Step commands published by the engine, by saga id."""
    seen: dict[str, dict[str, Any]] = {}

    def capture(sender: str, body: Any, **_: Any) -> None:
        if sender == LOST_TASK:
            seen[body[0][0]["saga_id"]] = body[0][0]

    before_task_publish.connect(capture, weak=False)
    try:
        yield seen
    finally:
        before_task_publish.disconnect(capture)


def _publish(body: Any, *, task: str = LOST_TASK, **options: Any) -> None:
    message = app.amqp.as_task_v2(uuid.uuid4().hex, task, args=[], kwargs={})
    queue = Queue(TARGET, Exchange(TARGET, type="direct"), routing_key=TARGET)
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange=queue.exchange,
            routing_key=TARGET,
            declare=[queue],
            headers=message.headers,
            **message.properties,
            **options,
        )


def _queued(name: str) -> int:
    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(name, passive=True).message_count)


def test_forged_pickle_and_undecodable_copies_never_run_and_the_saga_times_out(
    rt: Runtime, commands: dict[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    lost = get_saga("security_lost")
    victim, control = sid("lost"), sid("lost")
    lost.start({"text": "victim"}, saga_id=victim)
    lost.start({"text": "control"}, saga_id=control)
    eventually(lambda: victim in commands and control in commands, what="both commands")
    assert _queued(probe.LOST_QUEUE) >= 2  # the real commands: never delivered
    command = commands[victim]
    bad_before = metrics.get("sagas_bad_commands_total", reason="schema")
    deep = "[" * 100_000 + "]" * 100_000

    with caplog.at_level(logging.WARNING):
        _publish(([command], {}, {}), serializer="pickle")
        _publish(b"\xff\xfe{not json", content_type="application/json", content_encoding="utf-8")
        _publish(deep.encode(), content_type="application/json", content_encoding="utf-8")
        _publish((["not a command"], {}, {}), serializer="json")  # JSON, wrong shape
        _publish(([{**command, "saga_id": control}], {}, {}), serializer="json")  # the control

        eventually(lambda: probe.runs(control), what="the JSON control copy to run")
        record = wait_for(rt.store, victim, timeout=15)
    assert probe.runs(victim) == []  # no forged copy ran the step
    assert record.state is SagaState.FAILED  # recovered by the step timeout
    assert record.failure is not None and record.failure.type == "StepTimeout"
    _, status, _ = rt.store.get(victim)
    assert status.steps[0].state is StepState.TIMED_OUT
    assert wait_for(rt.store, control, timeout=10).state is SagaState.COMPLETED
    assert metrics.get("sagas_bad_commands_total", reason="schema") == bad_before + 1
    assert _queued(TARGET) == 0  # rejected or dropped, not requeued forever
    worker = [r.getMessage() for r in caplog.records if r.name.startswith("celery.worker")]
    assert sum("untrusted content of type pickle" in m for m in worker) == 1
    assert sum("decode message body" in m for m in worker) == 2  # garbage, and too deep


def test_an_unregistered_task_name_is_rejected_once_and_nothing_breaks(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        app.send_task("payments.steal_everything", args=[{"x": 1}], queue=TARGET)
        eventually(
            lambda: any("unregistered task" in r.getMessage().lower() for r in caplog.records),
            what="the worker to reject the unknown task",
        )
        saga_id = get_saga("security_probe").start({"text": "after"}, saga_id=sid())
        assert wait_for(rt.store, saga_id, timeout=10).state is SagaState.COMPLETED
    rejected = [r for r in caplog.records if "unregistered task" in r.getMessage().lower()]
    assert len(rejected) == 1  # rejected without requeue: no redelivery loop
    assert _queued(TARGET) == 0
