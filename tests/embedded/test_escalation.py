"""The sweeper escalates what its timers cannot repair: once per saga, reason and version."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import shared_task
from pydantic import BaseModel

from sagas import PermanentError, RetryPolicy, Saga, SagaState, sweeper
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, wait_for
from workers.app import app

PAGED: list[dict[str, Any]] = []
HOLD = threading.Event()


@shared_task(name="escalation_probe.page_operator", queue="escalation_probe")
def page_operator(**fields: Any) -> None:
    PAGED.append(fields)


class Job(BaseModel):
    fail: bool


esc = Saga("escalation_probe", payload=Job)


def undo(ctx: Any) -> None:
    raise PermanentError("ledger is read-only")


@esc.step(queue="escalation_probe", timeout=60, compensation=undo)
def reserve(ctx: Any) -> None:
    return None


@esc.step(
    queue="escalation_probe", timeout=60, retry=RetryPolicy(max_attempts=1), compensation=None
)
def confirm(ctx: Any) -> None:
    if ctx.payload.fail:
        raise PermanentError("declined")
    HOLD.wait(10)  # no progress for longer than stuck_after, no timer due either


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("esc") / "sagas.db"
    settings = Settings(
        database_url=f"sqlite:///{db}",
        sweep_interval=0.1,
        stuck_after=1.0,
        escalation_task="escalation_probe.page_operator",
    )
    queues = ["sagas", "escalation_probe"]
    with embedded(app, settings=settings, queues=queues) as runtime:
        yield runtime
    HOLD.set()


def _stuck_rows(rt: Runtime, saga_id: str) -> list[dict[str, Any] | None]:
    return [h.detail for h in rt.store.get(saga_id)[2] if h.kind == "saga_escalated"]


def _poll(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_dead_lettered_compensation_is_escalated_once(rt: Runtime) -> None:
    saga_id = esc.start({"fail": True}, saga_id=f"esc-{uuid.uuid4().hex[:10]}")
    record = wait_for(rt.store, saga_id, states=(), parked=True, timeout=20)
    assert record.state is SagaState.COMPENSATING
    reason = "compensation exhausted (dead-lettered)"
    assert _poll(lambda: _stuck_rows(rt, saga_id) == [{"reason": reason}])
    assert _poll(lambda: any(p["saga_id"] == saga_id for p in PAGED))
    time.sleep(0.6)  # several more sweeper passes: nothing new to escalate
    assert _stuck_rows(rt, saga_id) == [{"reason": reason}]
    [page] = [p for p in PAGED if p["saga_id"] == saga_id]
    assert page == {
        "saga_id": saga_id,
        "saga": "escalation_probe",
        "state": "compensating",
        "reason": reason,
        "correlation_id": record.correlation_id,
    }
    # A second beat running the same pass at the same moment escalates nothing more.
    assert sweeper.escalate(rt) == 0


def test_a_saga_without_progress_is_escalated_as_stuck_forward(rt: Runtime) -> None:
    saga_id = esc.start({"fail": False}, saga_id=f"esc-{uuid.uuid4().hex[:10]}")
    assert _poll(lambda: _stuck_rows(rt, saga_id) == [{"reason": "stuck forward: no progress"}])
    assert rt.store.get(saga_id)[0].state is SagaState.PENDING
    HOLD.set()
    wait_for(rt.store, saga_id, timeout=20)


def test_a_due_saga_of_a_version_this_process_lacks_is_left_not_counted_as_an_error(
    rt: Runtime,
) -> None:
    """During a rolling deploy the sweeper meets sagas of a version only other processes have:
    it leaves them to those (no error each pass); if nobody has it, it is still escalated."""
    from datetime import timedelta

    from sagas.machine import Start, decide, new_status
    from sagas.store import NewSaga

    saga_id = f"esc-v7-{uuid.uuid4().hex[:10]}"
    long_ago = rt.store.now() - timedelta(seconds=120)
    decision = decide(esc.plan, new_status(saga_id, esc.plan, None), Start(long_ago))
    with rt.store.transaction() as tx:
        tx.insert(
            NewSaga(saga_id, esc.name, 7, {"fail": False}, "c-7", decision.status,
                    decision.history, [])
        )  # fmt: skip
    assert saga_id in rt.store.due(1000)
    report = sweeper.sweep(rt)
    assert report.unavailable >= 1 and report.errors == 0, report
    assert rt.store.get(saga_id)[0].lock_version == 1  # nothing written by this process
    assert _poll(lambda: _stuck_rows(rt, saga_id) == [{"reason": "stuck forward: no progress"}])
