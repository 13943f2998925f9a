"""The sweeper's escalation pages past what it already handled.

Found by ``bench/scale.py`` at 10^7 finished sagas: with 1,000 sagas stuck and a batch of 200,
every pass listed the same 200 oldest (escalated already), tried to claim each again (200
transactions, 470 ms a pass) and never reached the other 800. On both backends.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import update

from sagas import Saga, sweeper
from sagas.machine import Start, decide, new_status
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.state import StepState
from sagas.store import NewSaga, Store
from sagas.store.schema import saga_table


class Order(BaseModel):
    n: int


busy = Saga("esc_paging_busy", payload=Order)
waiting = Saga("esc_paging_wait", payload=Order)


@busy.step(queue="esc_paging", timeout=3600, compensation=None)
def work(ctx: Any) -> None:
    return None


class Approval(BaseModel):
    ok: bool


waiting.wait_for("approval", model=Approval, timeout=timedelta(hours=1))


def _insert(store: Store, saga: Saga[Any], saga_id: str, minutes_ago: int) -> None:
    """A saga started ``minutes_ago`` whose first step (a task, or a wait) is still open."""
    at = store.now() - timedelta(minutes=minutes_ago)
    decision = decide(saga.plan, new_status(saga_id, saga.plan, None), Start(at))
    with store.transaction() as tx:
        assert tx.insert(
            NewSaga(saga_id, saga.name, 1, {"n": 1}, f"c-{saga_id}", decision.status,
                    decision.history, [])
        ) is None  # fmt: skip
    with store.engine.begin() as conn:  # PostgreSQL stamps the insert with its own clock
        conn.execute(update(saga_table).where(saga_table.c.id == saga_id).values(updated_at=at))


@pytest.fixture
def rt(store: Store) -> Runtime:
    return Runtime(settings=Settings(sweep_batch=2, stuck_after=60.0), store=store)


def _escalated(store: Store, saga_id: str) -> int:
    return sum(h.kind == "saga_escalated" for h in store.get(saga_id)[2])


def test_every_stuck_saga_is_escalated_though_more_are_stuck_than_a_batch(rt: Runtime) -> None:
    ids = [f"esc-page-{i}" for i in range(5)]
    for i, saga_id in enumerate(ids):
        _insert(rt.store, busy, saga_id, minutes_ago=30 - i)  # oldest first
    assert [sweeper.escalate(rt) for _ in range(4)] == [2, 2, 1, 0]
    assert [_escalated(rt.store, saga_id) for saga_id in ids] == [1] * 5
    assert rt.store.stuck(60.0, 10, unmarked=sweeper.ESCALATED) == []
    assert len(rt.store.stuck(60.0, 10)) == 5  # operators still see all of them


def test_a_pass_with_everything_escalated_claims_nothing(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        _insert(rt.store, busy, f"esc-done-{i}", minutes_ago=30)
    while sweeper.escalate(rt):
        pass
    claims: list[str] = []
    monkeypatch.setattr(rt.store, "note_once", lambda saga_id, *a, **k: claims.append(saga_id))
    assert sweeper.escalate(rt) == 0
    assert claims == []


def test_sagas_waiting_for_a_signal_do_not_hold_the_batch(rt: Runtime) -> None:
    """Idle by design: never escalated, and looked at once per version, not every pass."""
    for i in range(3):
        _insert(rt.store, waiting, f"esc-wait-{i}", minutes_ago=40)
    _insert(rt.store, busy, "esc-behind", minutes_ago=20)  # newer than every waiting saga
    record = rt.store.get("esc-wait-0")[0]
    assert sweeper.waiting_for_signal(rt, record)
    assert rt.store.get("esc-wait-0")[1].steps[0].state is StepState.RUNNING
    escalated = [sweeper.escalate(rt) for _ in range(3)]
    assert sum(escalated) == 1 and escalated[-1] == 0
    assert _escalated(rt.store, "esc-behind") == 1
    assert [_escalated(rt.store, f"esc-wait-{i}") for i in range(3)] == [0, 0, 0]
    assert rt.store.stuck(60.0, 10, unmarked=sweeper.ESCALATED) == []
