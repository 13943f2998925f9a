"""``Store.versions``: sagas by name, version and definition fingerprint, on both backends."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sagas.machine import Plan, Start, StepPlan, decide, new_status
from sagas.retry import RetryPolicy
from sagas.state import SagaState
from sagas.store import NewSaga, Store, Transition, VersionCount

NOW = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def _insert(store: Store, saga_id: str, version: int, steps: str, digest: str | None) -> None:
    plan = Plan(tuple(StepPlan(n, 30.0, RetryPolicy(), True, 10.0, RetryPolicy()) for n in steps))
    decision = decide(plan, new_status(saga_id, plan, None), Start(NOW))
    new = NewSaga(
        saga_id, "order", version, {"id": saga_id}, "c", decision.status, decision.history, [],
        definition_hash=digest,
    )  # fmt: skip
    assert store.create(new, now=NOW) is None


def test_counts_by_version_and_fingerprint_with_an_example_in_flight(store: Store) -> None:
    _insert(store, "a", 1, "xy", "h1")
    _insert(store, "b", 1, "xy", "h1")
    _insert(store, "c", 1, "xz", None)  # started before fingerprints were stored
    _insert(store, "d", 2, "xyz", "h2")
    snap = store.load("d")
    assert snap is not None
    done = replace(snap.status, state=SagaState.COMPLETED)
    assert store.write(Transition(snap.record, snap.status, done, ()), now=NOW)
    assert store.get("a")[0].definition_hash == "h1"

    got = sorted(store.versions(), key=lambda v: (v.version, v.definition_hash or ""))
    assert got == [
        VersionCount("order", 1, None, 1, 0, "c", ["x", "z"]),
        VersionCount("order", 1, "h1", 2, 0, "a", ["x", "y"]),
        VersionCount("order", 2, "h2", 0, 1, None, []),
    ]
    assert [v.version for v in store.versions(active_only=True)] == [1, 1]
