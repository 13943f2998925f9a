"""The hot statements on psycopg's connection (``store.driver``) write and read exactly what
SQLAlchemy's execution of the same statements does, leave the pooled connection as they found
it, and step aside while anything listens to the engine's events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text

from sagas.errors import StoreError
from sagas.machine import HistoryRecord, StepSucceeded, decide
from sagas.state import Action, HistoryKind
from sagas.store import NewSaga, Store, Transition
from tests.store.test_store_contract import PAYLOAD, PLAN, UNICODE_RESULT, started


@pytest.fixture
def observed(pg_store: Store) -> Iterator[list[str]]:
    """While this fixture is used, the store's engine has a listener (SQLAlchemy's path)."""
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(pg_store.engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(pg_store.engine, "before_cursor_execute", listen)


def _run_one(store: Store, saga_id: str) -> None:
    """A start, a load, two transitions (one with a Unicode result) and a batch of marks."""
    now = datetime.now(UTC)
    decision = started(saga_id, now)
    new = NewSaga(
        saga_id=saga_id,
        name="order",
        version=3,
        payload=PAYLOAD,
        correlation_id=f"corr-{saga_id}",
        status=decision.status,
        history=decision.history,
        outbox=[{"type": "dispatch", "step": 0}],
    )
    assert store.peek(saga_id)[0] is None
    assert store.create(new, now=now) is None
    assert store.create(new, now=now) is not None  # the duplicate key: the existing record
    for index, result in ((0, UNICODE_RESULT), (1, None)):
        snap = store.load(saga_id)
        assert snap is not None
        step = snap.status.steps[index]
        event_ = StepSucceeded(index, step.attempt, Action.FORWARD, snap.now(), result)
        after = decide(PLAN, snap.status, event_)
        note = HistoryRecord(HistoryKind.REPLY_IGNORED, None, None, {"caf\u00e9": [1, None]})
        t = Transition(snap.record, snap.status, after.status, (*after.history, note))
        assert store.write(t, now=snap.now())
        assert not store.write(t, now=snap.now())  # the version moved: compare-and-set fails
    snap = store.load(saga_id)
    assert snap is not None and snap.record.outbox_at is not None
    store._clear_many([(saga_id, snap.record.outbox_at)])


def _rows(store: Store, saga_id: str) -> dict[str, Any]:
    """Everything stored for one saga, without its id and the times of this run."""
    with store.engine.connect() as conn:
        saga = conn.execute(
            text(
                "SELECT name, version, state, payload, payload_hash, correlation_id, failure,"
                " outbox, outbox_at IS NULL AS sent, parked, lock_version, kind FROM saga"
                " WHERE id = :id"
            ),
            {"id": saga_id},
        ).one()
        steps = conn.execute(
            text(
                "SELECT idx, name, state, attempt, compensation_attempt, result, error,"
                " started_at IS NULL AS unstarted FROM saga_step WHERE saga_id = :id ORDER BY idx"
            ),
            {"id": saga_id},
        ).all()
        history = conn.execute(
            text(
                "SELECT kind, step, attempt, detail FROM saga_event WHERE saga_id = :id ORDER BY id"
            ),
            {"id": saga_id},
        ).all()
    return {"saga": tuple(saga), "steps": [tuple(r) for r in steps], "history": history}


def test_the_driver_writes_what_sqlalchemy_writes(pg_store: Store) -> None:
    _run_one(pg_store, "drv-fast")
    fast = _rows(pg_store, "drv-fast")
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(pg_store.engine, "before_cursor_execute", listen)
    try:
        _run_one(pg_store, "drv-slow")
    finally:
        event.remove(pg_store.engine, "before_cursor_execute", listen)
    assert len(seen) >= 8  # the second run did go through SQLAlchemy
    slow = _rows(pg_store, "drv-slow")
    corr = 5  # the correlation id names the saga; every other value must match
    assert fast["saga"][corr] == "corr-drv-fast" and slow["saga"][corr] == "corr-drv-slow"
    assert fast["saga"][:corr] + fast["saga"][corr + 1 :] == (
        slow["saga"][:corr] + slow["saga"][corr + 1 :]
    )
    assert fast["steps"] == slow["steps"] and fast["history"] == slow["history"]
    assert fast["saga"][-4:] == (True, False, 3, "orchestrated")  # sent, parked, version, kind
    assert fast["steps"][0][5] == UNICODE_RESULT
    assert [h.kind for h in fast["history"]].count("reply_ignored") == 2


def test_without_listeners_the_hot_statements_bypass_sqlalchemy(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def through_sqlalchemy(*_: Any) -> None:
        raise AssertionError("a hot statement went through SQLAlchemy's execution")

    monkeypatch.setattr(pg_store, "_single", through_sqlalchemy)
    _run_one(pg_store, "drv-bypass")
    assert pg_store._driver is not None and pg_store._driver.usable()


def test_listeners_see_every_hot_statement(pg_store: Store, observed: list[str]) -> None:
    _run_one(pg_store, "drv-seen")
    heads = [s.split()[0] for s in observed]
    assert heads.count("WITH") == 6  # the insert, its duplicate, 2 writes and their repeats
    assert any("jsonb_to_recordset" in s and s.startswith("UPDATE") for s in observed)


def test_a_hot_statement_leaves_the_pooled_connection_transactional(pg_store: Store) -> None:
    """The driver switches its connection to autocommit and back: a transaction on the same
    pooled connection afterwards is still one transaction (rolled back as a whole)."""
    _run_one(pg_store, "drv-tx")
    with pytest.raises(RuntimeError):
        with pg_store.transaction() as tx:
            tx.record_only("drv-tx", [HistoryRecord(HistoryKind.REPLY_IGNORED, None, None, {})])
            raise RuntimeError("undo")
    history = _rows(pg_store, "drv-tx")["history"]
    # only the two rows the transitions wrote: the third went with the rollback
    assert [h.kind for h in history].count("reply_ignored") == 2
    fairy = pg_store.engine.raw_connection()
    try:
        assert fairy.driver_connection.autocommit is False  # type: ignore[union-attr]
    finally:
        fairy.close()


def test_a_statement_the_server_refuses_is_a_store_error(pg_store: Store) -> None:
    with pytest.raises(StoreError, match="saga store"):
        pg_store._hot(text("SELECT 1 / 0"), {}, "first")  # type: ignore[arg-type]
    assert pg_store.peek("absent")[0] is None  # the connection is fine afterwards
