"""A parallel group with real workers, on Redis and RabbitMQ (``probe_group``: g0, then ga, gb
and gc in parallel on three queues, then gz): joined when all succeed, and a failure in each
branch in turn: the other branches finish, then every branch that took effect and g0 are
compensated, the branches before g0."""

from __future__ import annotations

import pytest

from sagas import SagaState, StepState
from sagas.state import HistoryKind
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.workers

TERMINAL = (SagaState.COMPLETED, SagaState.FAILED)
BRANCHES = ("ga", "gb", "gc")


def test_the_branches_run_in_parallel_and_join(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_group", {"sleep": {b: 0.5 for b in BRANCHES}})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert status.steps[4].result == {"saw": list(BRANCHES)}
    effects = [e for e in cluster.effects(saga_id) if e.step in BRANCHES]
    # All three were dispatched together: each started before any of them could finish.
    first_end = min(e.at for e in effects).timestamp() + 0.5
    assert all(e.at.timestamp() < first_end for e in effects), [(e.step, e.at) for e in effects]
    assert [h.kind for h in history].count(HistoryKind.GROUP_JOINED) == 1


@pytest.mark.parametrize("failing", BRANCHES)
def test_a_failing_branch_compensates_the_others_and_the_steps_before(
    cluster: Cluster, failing: str
) -> None:
    others = [b for b in BRANCHES if b != failing]
    saga_id = cluster.start(
        "probe_group", {"fail_permanent": failing, "sleep": {b: 0.3 for b in others}}
    )
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.FAILED
    by_name = {s.name: s.state for s in status.steps}
    assert by_name == {
        "g0": StepState.COMPENSATED,
        **{b: StepState.COMPENSATED for b in others},
        failing: StepState.FAILED,
        "gz": StepState.SKIPPED,
    }
    effects = cluster.effects(saga_id)
    undo = [e for e in effects if e.action == "compensate"]
    assert sorted(e.step for e in undo) == sorted([*others, "g0"])
    assert undo[-1].step == "g0"  # the steps before the group, after every branch
    forward_ends = max(e.at for e in effects if e.action == "forward")
    assert min(e.at for e in undo) >= forward_ends  # the others finished first
    assert HistoryKind.GROUP_FAILED in [h.kind for h in history]
