"""Operator actions: parked compensations on the dead-letter list, retry, cancel, stuck."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import sagas
from sagas import PermanentError, RetryPolicy, Saga, SagaState, StepState, coordinator
from sagas.runtime import Runtime
from sagas.testing import embedded, wait_for
from workers.app import app


class Job(BaseModel):
    n: int


BROKEN = {"undo": True}
RELEASE = threading.Event()
UNDONE: list[str] = []
BOOKED: list[str] = []

ops = Saga("operator_probe", payload=Job)


def undo_book(ctx: Any) -> None:
    if BROKEN["undo"]:
        raise PermanentError("ledger is read-only")
    UNDONE.append(ctx.saga_id)


@ops.step(queue="ops_a", timeout=5, compensation=undo_book)
def book(ctx: Any) -> dict[str, int]:
    BOOKED.append(ctx.saga_id)
    return {"n": ctx.payload.n}


@ops.step(queue="ops_b", timeout=5, retry=RetryPolicy(max_attempts=1), compensation=None)
def settle(ctx: Any) -> None:
    if ctx.payload.n < 0:
        raise PermanentError("negative")
    RELEASE.wait(10)  # holds the step open so a test can cancel mid-flight


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("ops") / "sagas.db"
    with embedded(app, database_url=f"sqlite:///{db}", sweep_interval=0.1) as runtime:
        yield runtime
    RELEASE.set()


def _sid() -> str:
    return f"op-{uuid.uuid4().hex[:12]}"


def test_parked_compensation_is_dead_lettered_then_retried_by_an_operator(rt: Runtime) -> None:
    BROKEN["undo"] = True
    saga_id = ops.start({"n": -1}, saga_id=_sid())
    record = wait_for(rt.store, saga_id, timeout=20, states=(), parked=True)
    assert record.state is SagaState.COMPENSATING and record.parked
    letters = [(r.id, step.name) for r, step in rt.store.dead_letters()]
    assert (saga_id, "book") in letters
    assert any(r.id == saga_id for r, _ in rt.store.stuck(older_than=3600))
    with pytest.raises(sagas.SagaError, match="nothing to cancel"):
        coordinator.cancel(saga_id, "too late", rt=rt)

    BROKEN["undo"] = False
    coordinator.retry(saga_id, "ledger writable again (ticket OPS-1)", rt=rt)
    record = wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert record.state is SagaState.FAILED and not record.parked
    assert status.steps[0].state is StepState.COMPENSATED
    assert UNDONE.count(saga_id) == 1
    retries = [h for h in history if h.kind == "operator_retry"]
    assert retries and retries[0].detail == {
        "reason": "ledger writable again (ticket OPS-1)",
        "was": "compensation_failed",
    }
    assert all(r.id != saga_id for r, _ in rt.store.dead_letters())


def test_cancel_compensates_a_running_saga_and_records_the_reason(rt: Runtime) -> None:
    BROKEN["undo"] = False
    RELEASE.clear()
    saga_id = ops.start({"n": 1}, saga_id=_sid())
    # wait until the second step is in flight
    deadline = time.monotonic() + 10
    while rt.store.get(saga_id)[1].steps[1].state is not StepState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    coordinator.cancel(saga_id, "customer called to cancel", rt=rt)
    RELEASE.set()
    record = wait_for(rt.store, saga_id, timeout=20)
    _, status, history = rt.store.get(saga_id)
    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "SagaCancelled"
    assert [s.state for s in status.steps] == [StepState.COMPENSATED, StepState.TIMED_OUT]
    cancel = next(h for h in history if h.kind == "cancel_requested")
    assert cancel.detail == {"reason": "customer called to cancel"}
    # the late success of the cancelled step is recorded and changes nothing
    late = [h for h in history if h.kind == "reply_ignored"]
    wait_until = time.monotonic() + 10
    while not late and time.monotonic() < wait_until:
        time.sleep(0.05)
        late = [h for h in rt.store.get(saga_id)[2] if h.kind == "reply_ignored"]
    assert late and late[0].step == "settle"


def test_operator_actions_on_unknown_or_finished_sagas_fail_clearly(rt: Runtime) -> None:
    with pytest.raises(sagas.SagaNotFound):
        coordinator.retry("no-such-saga", "x", rt=rt)
    RELEASE.set()
    saga_id = ops.start({"n": 2}, saga_id=_sid())
    assert wait_for(rt.store, saga_id, timeout=20).state is SagaState.COMPLETED
    with pytest.raises(sagas.SagaError, match="nothing to retry: saga .* is completed"):
        coordinator.retry(saga_id, "x", rt=rt)


def test_a_redelivered_command_for_a_settled_attempt_does_not_run_again(rt: Runtime) -> None:
    from celery.signals import before_task_publish

    from sagas.observability import metrics

    sent: list[dict[str, Any]] = []

    def capture(sender: str, body: Any, **_: Any) -> None:
        if sender == "saga.operator_probe.book":
            sent.append(body)

    before_task_publish.connect(capture, weak=False)
    try:
        RELEASE.set()
        saga_id = ops.start({"n": 3}, saga_id=_sid())
        assert wait_for(rt.store, saga_id, timeout=20).state is SagaState.COMPLETED
    finally:
        before_task_publish.disconnect(capture)
    assert BOOKED.count(saga_id) == 1 and len(sent) == 1
    args = sent[0][0]  # protocol 2 body: (args, kwargs, embed)
    before = metrics.get("sagas_stale_commands_total")
    app.send_task("saga.operator_probe.book", args=args, queue="ops_a")
    deadline = time.monotonic() + 10
    while metrics.get("sagas_stale_commands_total") == before:
        assert time.monotonic() < deadline, "redelivered command was not judged"
        time.sleep(0.02)
    assert BOOKED.count(saga_id) == 1  # the effect did not run a second time
    assert rt.store.get(saga_id)[0].state is SagaState.COMPLETED
