"""Waits for signals with real workers, on Redis and RabbitMQ (``probe_wait``: w1, a wait for
``approval``, w2): a signal after the wait began, one sent while the first step still runs
(kept, then taken when the wait begins), and no signal before the wait's timeout."""

from __future__ import annotations

import pytest

import sagas
from sagas import SagaState, StepState
from sagas.state import HistoryKind
from tests.integration.conftest import Cluster, poll

pytestmark = pytest.mark.workers

TERMINAL = (SagaState.COMPLETED, SagaState.FAILED)


def waiting(cluster: Cluster, saga_id: str) -> bool:
    try:
        _, status, _ = cluster.store.get(saga_id)
    except sagas.SagaNotFound:
        return False
    return status.steps[1].state is StepState.RUNNING


def test_a_signal_after_the_wait_began(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_wait", {})
    assert poll(lambda: waiting(cluster, saga_id), 30), cluster.log_tails()
    sent = sagas.signal(saga_id, "approval", {"by": "ops"}, signal_id="sig-1")
    assert sent.outcome == "delivered"
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert status.steps[2].result == {"approved_by": "ops"}
    assert sagas.signal(saga_id, "approval", {"by": "ops"}, signal_id="sig-1").outcome == (
        "duplicate"
    )
    assert [h.kind for h in history].count(HistoryKind.SIGNAL_RECEIVED) == 1


def test_a_signal_sent_before_the_wait_is_kept_for_it(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_wait", {"sleep": {"w1": 1.0}})
    assert poll(lambda: bool(cluster.effects(saga_id)), 30), cluster.log_tails()  # w1 runs
    sent = sagas.signal(saga_id, "approval", {"by": "early"})
    assert sent.outcome == "kept"
    record, status, _ = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert status.steps[1].result == {"by": "early"}
    assert [s["outcome"] for s in cluster.store.signals(saga_id)] == ["delivered"]


def test_no_signal_before_the_timeout_compensates(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_wait", {})
    record, status, history = cluster.wait_for(saga_id, TERMINAL, timeout=60)
    assert record.state is SagaState.FAILED
    assert [s.state for s in status.steps] == [
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.SKIPPED,
    ]
    assert HistoryKind.WAIT_TIMED_OUT in [h.kind for h in history]
