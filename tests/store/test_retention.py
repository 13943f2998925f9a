"""Retention on both backends: finished sagas past the age go with everything they own,
archived first when asked; active and recent sagas stay; a row another transaction holds is
skipped without waiting (PostgreSQL); the sweeper prunes one batch per pass when configured."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import text

from sagas import retention
from sagas.state import SagaState
from sagas.store import Store, Transition
from tests.store.helpers import count_rows
from tests.store.test_store_contract import insert

DAY = 86400.0


def age(store: Store, saga_id: str, state: SagaState, days: float) -> None:
    """Move ``saga_id`` to ``state``, written ``days`` ago."""
    snap = store.load(saga_id)
    assert snap is not None
    new = replace(snap.status, state=state)
    at = store.now() - timedelta(days=days)
    assert store.write(Transition(snap.record, snap.status, new, ()), now=at)


@pytest.fixture
def aged(store: Store) -> Store:
    """old-ok, old-failed: finished 40 days ago; old-active: pending, untouched for 40 days;
    new-ok: finished an hour ago. old-ok also has a kept signal."""
    for saga_id in ("old-ok", "old-failed", "old-active", "new-ok"):
        insert(store, saga_id)
    age(store, "old-ok", SagaState.COMPLETED, 40)
    age(store, "old-failed", SagaState.FAILED, 40)
    age(store, "old-active", SagaState.PENDING, 40)
    age(store, "new-ok", SagaState.COMPLETED, 1 / 24)
    assert store.add_signal("old-ok", "late", "sig-1", {"by": "x"})
    return store


def test_prune_deletes_finished_sagas_past_the_age_with_all_they_own(aged: Store) -> None:
    cutoff, due = retention.due(aged, 30 * DAY)
    assert due == 2
    archive = io.StringIO()
    done = retention.prune(aged, 30 * DAY, batch=1, archive=archive)
    assert (done.deleted, done.archived) == (2, 2) and done.batches >= 2
    assert sorted(r.id for r in aged.list(limit=10)) == ["new-ok", "old-active"]
    rows = count_rows(aged)
    assert rows["saga_step"] == 2 * 3 and rows["saga"] == 2  # 3 steps per saga left
    with aged.engine.connect() as conn:
        orphans = conn.execute(
            text("SELECT count(*) FROM saga_event WHERE saga_id LIKE 'old-%' AND saga_id <> "
                 "'old-active'")
        ).scalar_one()  # fmt: skip
        signals = conn.execute(text("SELECT count(*) FROM saga_signal")).scalar_one()
    assert orphans == 0 and signals == 0
    lines = [json.loads(line) for line in archive.getvalue().splitlines()]
    assert sorted(line["id"] for line in lines) == ["old-failed", "old-ok"]
    ok = next(line for line in lines if line["id"] == "old-ok")
    assert ok["state"] == "completed" and [s["name"] for s in ok["steps"]] == [
        "reserve",
        "charge",
        "ship",
    ]
    assert [h["kind"] for h in ok["history"]][:2] == ["saga_started", "step_dispatched"]
    assert retention.prune(aged, 30 * DAY).deleted == 0  # nothing left past the age
    assert retention.due(aged, 30 * DAY)[1] == 0 and cutoff < aged.now()


def test_max_batches_bounds_one_run(aged: Store) -> None:
    done = retention.prune(aged, 30 * DAY, batch=1, max_batches=1)
    assert done.deleted == 1 and done.batches == 1
    assert retention.due(aged, 30 * DAY)[1] == 1


def test_a_saga_held_by_another_transaction_is_skipped_not_waited_for(pg_store: Store) -> None:
    for saga_id in ("held", "free"):
        insert(pg_store, saga_id)
        age(pg_store, saga_id, SagaState.COMPLETED, 40)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pg_store.engine.begin() as conn:
            conn.execute(text("SELECT 1 FROM saga WHERE id = 'held' FOR UPDATE"))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        began = time.monotonic()
        done = retention.prune(pg_store, 30 * DAY, batch=10)
        took = time.monotonic() - began
    finally:
        release.set()
        holder.join(10)
    assert done.deleted == 1 and took < 5, (done, took)
    assert [r.id for r in pg_store.list(limit=10)] == ["held"]
    assert retention.prune(pg_store, 30 * DAY).deleted == 1  # released: its turn now
