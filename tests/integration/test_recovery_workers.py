"""Operator recovery with real workers, on Redis and RabbitMQ (``probe_ops``: o1, o2, o3): a
saga paused while o2 runs records o2's reply (in the worker's own transition), dispatches
nothing while the sweeper passes it by, and goes on when resumed; a failed saga forked with an
edited payload completes, both sagas linked, the original untouched."""

from __future__ import annotations

import pytest
from sqlalchemy import text

import sagas
from sagas import SagaState, StepState
from tests.integration.conftest import Cluster, poll

pytestmark = pytest.mark.workers

TERMINAL = (SagaState.COMPLETED, SagaState.FAILED)


def _sweeps(cluster: Cluster) -> int:
    """Sweeper passes the coordinator finished so far (its log)."""
    return sum(
        1
        for line in cluster.log("sagas").splitlines()
        if "sagas.sweep[" in line and "succeeded" in line
    )


def _kinds(cluster: Cluster, saga_id: str) -> list[str]:
    return [h.kind for h in cluster.store.get(saga_id)[2]]


def test_pause_while_a_step_runs_then_resume(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_ops", {"gate": True})

    def o2_running() -> bool:
        try:
            status = cluster.store.get(saga_id)[1]
        except sagas.SagaNotFound:
            return False
        ran = [e.step for e in cluster.effects(saga_id)]
        return status.steps[1].state is StepState.RUNNING and "o2" in ran

    assert poll(o2_running, 30), cluster.log_tails()
    plan = sagas.pause(saga_id, reason="payment provider incident", by="ops-bot")
    assert "o2 is running: its reply is recorded, what follows it is held" in plan.text()
    with cluster.engine.begin() as conn:  # o2 finishes while the saga is paused
        conn.execute(text("INSERT INTO probe_gate (saga_id) VALUES (:s)"), {"s": saga_id})
    assert poll(lambda: "dispatch_held" in _kinds(cluster, saga_id), 30), cluster.log_tails()
    record, status, _ = cluster.store.get(saga_id)
    assert status.steps[1].state is StepState.SUCCEEDED and record.paused_at is not None
    assert record.wake_at is None

    seen = _sweeps(cluster)
    assert poll(lambda: _sweeps(cluster) >= seen + 3, 30), cluster.log_tails()
    after = cluster.store.get(saga_id)[0]
    assert after.lock_version == record.lock_version  # the sweeper left it alone
    assert "saga_escalated" not in _kinds(cluster, saga_id)
    assert "o3" not in [e.step for e in cluster.effects(saga_id)]

    info = sagas.get(saga_id)
    sagas.resume(saga_id, reason="incident over", by="ops-bot", revision=info.revision)
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED and record.paused_at is None
    ran = [(e.step, e.action) for e in cluster.effects(saga_id)]
    assert ran == [("o1", "forward"), ("o2", "forward"), ("o3", "forward")]
    kinds = [h.kind for h in history]
    assert kinds.index("saga_paused") < kinds.index("dispatch_held") < kinds.index("saga_resumed")
    resumed = next(h for h in history if h.kind == "saga_resumed")
    assert resumed.detail is not None and resumed.detail["by"] == "ops-bot"


def test_fork_of_a_failed_saga_completes(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_ops", {"fail": "o2"})
    record, status, _ = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.FAILED
    assert [s.state for s in status.steps] == [
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.SKIPPED,
    ]
    plan = sagas.preview(
        saga_id, "fork", from_step="o1", changes={"fail": None}, reason="bad flag", by="ops-bot"
    )
    assert plan.refused is None and plan.fork is not None
    assert "payload fail: 'o2' -> None" in plan.text()
    sagas.carry_out(plan)
    child = plan.fork.saga_id
    record, status, history = cluster.wait_for(child, TERMINAL)
    assert record.state is SagaState.COMPLETED and record.forked_from == saga_id
    assert [(e.step, e.action) for e in cluster.effects(child)] == [
        ("o1", "forward"),
        ("o2", "forward"),
        ("o3", "forward"),
    ]
    assert history[0].kind == "forked_from" and history[0].detail is not None
    assert history[0].detail["changes"] == {"fail": {"old": "o2", "new": None}}
    original = sagas.get(saga_id)
    assert original.state is SagaState.FAILED and original.forks == (child,)
    assert original.payload["fail"] == "o2"
    assert [h.kind for h in original.history][-1] == "forked_to"
