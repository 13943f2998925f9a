"""A pivot step with real workers, on Redis and RabbitMQ (``probe_pivot``: p1, p2 the pivot, p3,
p4): a failure before the pivot compensates; one after it is retried, parked for an operator,
refuses a cancel, and goes on when the operator retries it. Nothing past the pivot is undone."""

from __future__ import annotations

import pytest

from sagas import SagaError, SagaState, StepState, coordinator
from sagas.state import HistoryKind
from tests.integration.conftest import Cluster, poll
from tests.integration.probe import FAST_RETRY

pytestmark = pytest.mark.workers

TERMINAL = (SagaState.COMPLETED, SagaState.FAILED)


def test_a_failure_before_the_pivot_compensates(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_pivot", {"fail_permanent": "p2"})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.FAILED
    assert [s.state for s in status.steps] == [
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.SKIPPED,
        StepState.SKIPPED,
    ]
    assert not [h for h in history if h.kind == HistoryKind.PIVOT_PASSED]
    ran = [(e.step, e.action) for e in cluster.effects(saga_id)]
    assert ran == [("p1", "forward"), ("p2", "forward"), ("p1", "compensate")]


def test_a_failure_past_the_pivot_is_parked_then_resumed_by_an_operator(cluster: Cluster) -> None:
    exhausted = FAST_RETRY.max_attempts
    saga_id = cluster.start("probe_pivot", {"transient": {"p3": exhausted}})

    def parked() -> bool:
        try:
            record, status, _ = cluster.store.get(saga_id)
        except SagaError:
            return False
        return record.parked and status.steps[2].state is StepState.PARKED

    assert poll(parked, 30), cluster.log_tails()
    record, status, history = cluster.store.get(saga_id)
    assert record.state is SagaState.PENDING and status.steps[2].attempt == exhausted
    assert [h.kind for h in history if h.step == "p2"][-1] == HistoryKind.PIVOT_PASSED
    [note] = [h for h in history if h.kind == HistoryKind.STEP_PARKED]
    assert note.step == "p3" and note.detail is not None
    assert note.detail["reason"] == "retries exhausted past the pivot"
    with pytest.raises(SagaError, match="passed its pivot step 'p2' and only goes forward"):
        coordinator.cancel(saga_id, "customer asked")

    coordinator.retry(saga_id, "carrier is back")
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED and not record.parked
    assert [s.state for s in status.steps] == [StepState.SUCCEEDED] * 4
    assert status.steps[2].attempt == exhausted + 1
    assert not [e for e in cluster.effects(saga_id) if e.action == "compensate"]
