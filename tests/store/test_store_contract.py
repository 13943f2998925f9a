"""The store contract: one suite, run against SQLite and PostgreSQL (see conftest ``store``)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from sagas.errors import SagaNotFound
from sagas.machine import (
    Decision,
    ErrorInfo,
    HistoryRecord,
    Plan,
    SagaStatus,
    Start,
    StepFailed,
    StepPlan,
    StepSucceeded,
    decide,
    new_status,
    next_wakeup,
)
from sagas.retry import RetryPolicy
from sagas.state import Action, HistoryKind, SagaState, StepState
from sagas.store import HistoryEntry, NewSaga, SagaRecord, Store, payload_hash

PLAN = Plan(
    tuple(
        StepPlan(name, 30.0, RetryPolicy(), True, 10.0, RetryPolicy())
        for name in ("reserve", "charge", "ship")
    )
)
PAYLOAD = {"order_id": "o-1", "customer": "Zo\u00eb \u2603 \U0001f600", "qty": 2}
UNICODE_RESULT = {
    "note": 'na\u00efve caf\u00e9 \u2603 \U0001d11e \u2028 "quoted" \\ back',
    "values": [1, 2.5, None, True, False, "", {"deep": ["\u00e9"]}],
    "big": 2**62,
}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=123456)


def started(saga_id: str, at: datetime, deadline: datetime | None = None) -> Decision:
    return decide(PLAN, new_status(saga_id, PLAN, deadline), Start(at))


def insert(
    store: Store,
    saga_id: str,
    *,
    at: datetime | None = None,
    name: str = "order",
    payload: dict[str, Any] | None = None,
    deadline: datetime | None = None,
    outbox: list[dict[str, Any]] | None = None,
) -> Decision:
    decision = started(saga_id, at or utcnow(), deadline)
    with store.transaction() as tx:
        existing = tx.insert(
            NewSaga(
                saga_id=saga_id,
                name=name,
                version=3,
                payload=payload if payload is not None else PAYLOAD,
                correlation_id=f"corr-{saga_id}",
                status=decision.status,
                history=decision.history,
                outbox=[{"type": "dispatch", "step": 0}] if outbox is None else outbox,
            )
        )
    assert existing is None
    return decision


def transition(store: Store, saga_id: str, make_event: Any, **save: Any) -> Decision:
    with store.transaction() as tx:
        loaded = tx.lock(saga_id)
        assert loaded is not None
        record, status = loaded
        decision = decide(PLAN, status, make_event(status))
        tx.save(record, status, decision.status, decision.history, save.pop("outbox", []), **save)
    return decision


def ok(step: int, result: Any = None) -> Any:
    return lambda s: StepSucceeded(step, s.steps[step].attempt, Action.FORWARD, utcnow(), result)


def assert_utc(value: datetime | None) -> None:
    assert value is not None and value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


def kinds(history: list[HistoryEntry]) -> list[str]:
    return [h.kind for h in history]


# -- insert ---------------------------------------------------------------------------------------


def test_insert_creates_the_saga_and_get_returns_it(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    decision = insert(store, "s-1")
    record, status, history = store.get("s-1")

    assert record.id == "s-1" and record.name == "order" and record.version == 3
    assert record.state is SagaState.PENDING
    assert record.payload == PAYLOAD
    assert record.payload_hash == payload_hash(PAYLOAD)
    assert record.correlation_id == "corr-s-1"
    assert record.lock_version == 1 and record.parked is False and record.failure is None
    assert record.outbox == [{"type": "dispatch", "step": 0}]
    assert record.finished_at is None and record.deadline_at is None
    for ts in (record.created_at, record.updated_at, record.outbox_at):
        assert_utc(ts)
        assert ts is not None and before <= ts <= datetime.now(UTC) + timedelta(seconds=5)

    assert status == decision.status
    assert [s.name for s in status.steps] == ["reserve", "charge", "ship"]
    assert kinds(history) == [HistoryKind.SAGA_STARTED, HistoryKind.STEP_DISPATCHED]
    assert history[1].step == "reserve" and history[1].attempt == 1
    assert history[0].id < history[1].id
    for h in history:
        assert_utc(h.at)


def test_insert_twice_returns_the_existing_record_and_changes_nothing(store: Store) -> None:
    insert(store, "s-1")
    again = started("s-1", utcnow() + timedelta(seconds=3))
    with store.transaction() as tx:
        existing = tx.insert(
            NewSaga(
                saga_id="s-1",
                name="other",
                version=9,
                payload={"different": True},
                correlation_id="other-corr",
                status=again.status,
                history=again.history,
                outbox=[],
            )
        )
    assert isinstance(existing, SagaRecord)
    assert existing.id == "s-1" and existing.name == "order" and existing.payload == PAYLOAD
    record, _, history = store.get("s-1")
    assert record == existing
    assert len(history) == 2


def test_insert_without_outbox_leaves_it_empty(store: Store) -> None:
    insert(store, "s-1", outbox=[])
    record, _, _ = store.get("s-1")
    assert record.outbox is None and record.outbox_at is None
    assert store.unsent(grace=0, limit=10) == []


def test_get_of_a_missing_id_raises_saga_not_found(store: Store) -> None:
    with pytest.raises(SagaNotFound, match="nope"):
        store.get("nope")
    with pytest.raises(LookupError):
        store.get("nope")


def test_lock_of_a_missing_id_is_none(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.lock("nope") is None
        assert tx.lock("nope", skip_locked=True) is None


# -- lock and save --------------------------------------------------------------------------------


def test_lock_and_save_persist_a_transition(store: Store) -> None:
    insert(store, "s-1")
    stored = store.get("s-1")
    with store.transaction() as tx:
        loaded = tx.lock("s-1")
        assert loaded is not None
        record, status = loaded
        assert (record, status) == stored[:2]
        decision = decide(PLAN, status, ok(0, UNICODE_RESULT)(status))
        version = tx.save(record, status, decision.status, decision.history, [])
    assert version == 2

    record, status, history = store.get("s-1")
    assert record.lock_version == 2
    assert status == decision.status
    assert status.steps[0].state is StepState.SUCCEEDED
    assert status.steps[0].result == UNICODE_RESULT
    assert status.steps[1].state is StepState.RUNNING and status.steps[1].attempt == 1
    assert kinds(history) == [
        HistoryKind.SAGA_STARTED,
        HistoryKind.STEP_DISPATCHED,
        HistoryKind.STEP_SUCCEEDED,
        HistoryKind.STEP_DISPATCHED,
    ]
    assert [h.step for h in history[2:]] == ["reserve", "charge"]
    assert [h.id for h in history] == sorted(h.id for h in history)
    assert record.updated_at >= record.created_at


def test_lock_version_increments_on_every_save(store: Store) -> None:
    insert(store, "s-1")
    for expected in (2, 3, 4):
        transition(store, "s-1", lambda s: StepSucceeded(9, 1, Action.FORWARD, utcnow()))
        assert store.get("s-1")[0].lock_version == expected
    history = store.get("s-1")[2]
    assert kinds(history)[-3:] == [HistoryKind.REPLY_IGNORED] * 3
    assert history[-1].detail == {"action": "forward", "outcome": "ok", "why": "unknown step"}


def test_step_timestamps_errors_and_failure_round_trip(store: Store) -> None:
    insert(store, "s-1")
    transition(store, "s-1", ok(0, {"reserved": 2}))
    error = ErrorInfo("CardDeclined", "declined \u20ac", False)
    decision = transition(
        store,
        "s-1",
        lambda s: StepFailed(1, 1, Action.FORWARD, utcnow(), error),
    )
    record, status, history = store.get("s-1")
    assert status == decision.status
    assert record.state is SagaState.COMPENSATING
    assert record.failure == error and status.failure == error
    assert status.steps[1].state is StepState.FAILED and status.steps[1].error == error
    assert status.steps[0].state is StepState.COMPENSATING
    for s in status.steps[:2]:
        assert_utc(s.started_at)
        assert_utc(s.finished_at)
    assert_utc(status.steps[0].deadline_at)
    assert status.steps[2].state is StepState.SKIPPED and status.steps[2].started_at is None
    assert history[-3].detail == error.as_json()


def test_finishing_sets_finished_at_and_clears_wake_at(store: Store) -> None:
    insert(store, "s-1")
    for step in range(3):
        transition(store, "s-1", ok(step, step))
    record, status, _ = store.get("s-1")
    assert record.state is SagaState.COMPLETED and status.state is SagaState.COMPLETED
    assert_utc(record.finished_at)
    assert record.wake_at is None
    assert [s.result for s in status.steps] == [0, 1, 2]


def test_record_only_appends_history(store: Store) -> None:
    insert(store, "s-1")
    with store.transaction() as tx:
        tx.record_only(
            "s-1", [HistoryRecord(HistoryKind.COMMANDS_REPUBLISHED, detail={"count": 2})]
        )
    record, _, history = store.get("s-1")
    assert record.lock_version == 1
    assert history[-1].kind == HistoryKind.COMMANDS_REPUBLISHED
    assert history[-1].detail == {"count": 2}


def test_parked_flag_is_saved(store: Store) -> None:
    insert(store, "s-1")
    with store.transaction() as tx:
        loaded = tx.lock("s-1")
        assert loaded is not None
        tx.save(loaded[0], loaded[1], loaded[1], [], [], parked=True)
    assert store.get("s-1")[0].parked is True


# -- timers -------------------------------------------------------------------------------------


def test_wake_at_is_the_next_wakeup_of_the_saved_status(store: Store) -> None:
    decision = insert(store, "s-1", deadline=utcnow() + timedelta(seconds=20))
    record = store.get("s-1")[0]
    assert record.wake_at == next_wakeup(decision.status) == decision.status.deadline_at
    decision = transition(store, "s-1", ok(0))
    record = store.get("s-1")[0]
    assert record.wake_at == next_wakeup(decision.status)
    assert_utc(record.wake_at)
    assert_utc(record.deadline_at)


def test_due_returns_only_sagas_whose_timer_has_passed(store: Store) -> None:
    now = utcnow()
    insert(store, "past-2", at=now - timedelta(minutes=10))  # step deadline 9.5 min ago
    insert(store, "past-1", at=now - timedelta(minutes=20))  # 19.5 min ago: earlier
    insert(store, "future", at=now)  # step deadline in 30 s
    insert(store, "done", at=now - timedelta(hours=1))
    for step in range(3):
        transition(store, "done", ok(step))
    assert store.get("done")[0].wake_at is None
    assert store.due(limit=10) == ["past-1", "past-2"]
    assert store.due(limit=1) == ["past-1"]


def test_unsent_and_clear_outbox(store: Store) -> None:
    insert(store, "s-1")
    insert(store, "s-2", outbox=[])
    assert store.unsent(grace=0, limit=10) == ["s-1"]
    assert store.unsent(grace=3600, limit=10) == []  # not overdue yet
    written = store.get("s-1")[0].outbox_at
    assert written is not None
    store.clear_outbox("s-1", outbox_at=written - timedelta(seconds=1))  # superseded: no-op
    assert store.get("s-1")[0].outbox == [{"type": "dispatch", "step": 0}]
    store.clear_outbox("s-1", outbox_at=written)
    record = store.get("s-1")[0]
    assert record.outbox is None and record.outbox_at is None
    assert store.unsent(grace=0, limit=10) == []


def test_clears_queued_for_later_are_written_together_and_skip_superseded_outboxes(
    store: Store,
) -> None:
    for sid in ("s-1", "s-2", "s-3"):
        insert(store, sid)
    at = {sid: store.get(sid)[0].outbox_at for sid in ("s-1", "s-2", "s-3")}
    # A long delay: nothing is written until the flush (on SQLite: at once, as clear_outbox).
    store.clear_outbox_soon("s-1", at["s-1"], within=60)
    store.clear_outbox_soon("s-2", at["s-2"] - timedelta(seconds=1), within=60)  # superseded
    if store.is_postgres:
        assert store.pending_clears() == 2
        assert store.get("s-1")[0].outbox == [{"type": "dispatch", "step": 0}]
    store.flush_clears()
    assert store.pending_clears() == 0
    assert store.get("s-1")[0].outbox is None and store.get("s-1")[0].outbox_at is None
    assert store.get("s-2")[0].outbox == [{"type": "dispatch", "step": 0}]  # left for the sweeper
    assert store.get("s-3")[0].outbox == [{"type": "dispatch", "step": 0}]  # never queued
    assert store.unsent(grace=0, limit=10) == ["s-2", "s-3"]


def test_queued_clears_are_written_by_the_background_thread_within_the_delay(
    store: Store,
) -> None:
    insert(store, "s-1")
    written = store.get("s-1")[0].outbox_at
    assert written is not None
    store.clear_outbox_soon("s-1", written, within=0.05)
    deadline = time.monotonic() + 10
    while store.get("s-1")[0].outbox is not None:  # no flush: the thread writes it
        assert time.monotonic() < deadline, "the queued clear was never written"
        time.sleep(0.02)
    assert store.pending_clears() == 0


def test_save_appends_to_an_unpublished_outbox(store: Store) -> None:
    insert(store, "s-1")
    transition(store, "s-1", ok(0), outbox=[{"type": "wake", "at": "x"}])
    record = store.get("s-1")[0]
    assert record.outbox == [{"type": "dispatch", "step": 0}, {"type": "wake", "at": "x"}]
    transition(store, "s-1", ok(1), clear_outbox=True)
    assert store.get("s-1")[0].outbox is None


# -- listing --------------------------------------------------------------------------------------


def test_list_filters_by_state_and_name(store: Store) -> None:
    now = utcnow()
    insert(store, "a-1", name="order")
    insert(store, "a-2", name="order")
    insert(store, "b-1", name="refund")
    for step in range(3):
        transition(store, "a-2", ok(step))
    time.sleep(0.002)  # distinct created_at for the ordering check below
    insert(store, "a-3", name="order", at=now)

    assert {r.id for r in store.list()} == {"a-1", "a-2", "a-3", "b-1"}
    assert {r.id for r in store.list(name="order")} == {"a-1", "a-2", "a-3"}
    assert [r.id for r in store.list(state=SagaState.COMPLETED)] == ["a-2"]
    assert {r.id for r in store.list(state=SagaState.PENDING, name="order")} == {"a-1", "a-3"}
    assert store.list(state=SagaState.FAILED) == []
    assert store.list(name="nothing") == []
    assert len(store.list(limit=2)) == 2
    assert store.list(name="order")[0].id == "a-3"  # newest first


# -- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [UNICODE_RESULT, [1, "two", None], "plain \u00e9 string", 3.25, 0, None, True, {}],
)
def test_json_results_round_trip(store: Store, result: Any) -> None:
    insert(store, "s-1", payload={"text": "\u00e9\u2603\U0001f600", "nested": {"a": [1, None]}})
    transition(store, "s-1", ok(0, result))
    record, status, _ = store.get("s-1")
    assert status.steps[0].result == result
    assert type(status.steps[0].result) is type(result)
    assert record.payload == {"text": "\u00e9\u2603\U0001f600", "nested": {"a": [1, None]}}


def test_microseconds_survive(store: Store) -> None:
    at = datetime(2031, 5, 6, 7, 8, 9, 654321, tzinfo=UTC)
    decision = insert(store, "s-1", at=at)
    status = store.get("s-1")[1]
    assert status.steps[0].started_at == at
    assert status.steps[0].deadline_at == decision.status.steps[0].deadline_at


def test_a_non_utc_datetime_keeps_its_instant(store: Store) -> None:
    paris = timezone(timedelta(hours=2))
    at = datetime(2031, 5, 6, 9, 0, tzinfo=paris)
    insert(store, "s-1", at=at)
    started_at = store.get("s-1")[1].steps[0].started_at
    assert started_at == at, f"{started_at} != {at.astimezone(UTC)}"


# -- concurrency (PostgreSQL: SELECT ... FOR UPDATE) ----------------------------------------------


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Holder(threading.Thread):
    """Locks a saga, bumps its lock_version, and holds the lock until released."""

    def __init__(self, store: Store, saga_id: str) -> None:
        super().__init__(daemon=True)
        self.store, self.saga_id = store, saga_id
        self.locked, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.store.transaction() as tx:
                loaded = tx.lock(self.saga_id)
                assert loaded is not None
                record, status = loaded
                tx.save(
                    record, status, status, [HistoryRecord(HistoryKind.COMMANDS_REPUBLISHED)], []
                )
                self.locked.set()
                assert self.release.wait(30), "never released"
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.locked.set()


def test_a_second_locker_waits_for_the_first_to_commit(pg_store: Store) -> None:
    insert(pg_store, "s-1")
    holder = Holder(pg_store, "s-1")
    holder.start()
    assert holder.locked.wait(10) and holder.error is None

    waiting_pid: list[int] = []
    seen: list[SagaStatus | int] = []
    acquired = threading.Event()

    def waiter() -> None:
        with pg_store.transaction() as tx:
            waiting_pid.append(tx.conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            loaded = tx.lock("s-1")
            assert loaded is not None
            seen.append(loaded[0].lock_version)
            acquired.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    monitor = create_engine(pg_store.url)
    try:

        def blocked_on_a_lock() -> bool:
            if not waiting_pid:
                return False
            with monitor.connect() as conn:
                wait = conn.execute(
                    text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                    {"pid": waiting_pid[0]},
                ).scalar_one_or_none()
            return wait == "Lock"

        wait_until(blocked_on_a_lock, what="the second transaction to wait on the row lock")
        assert not acquired.is_set(), "the second locker got the row while the first held it"
    finally:
        holder.release.set()
        monitor.dispose()
    holder.join(10)
    thread.join(10)
    assert acquired.is_set()
    assert seen == [2], "the second locker must see the first one's committed save"


def test_skip_locked_returns_none_while_another_transaction_holds_the_row(
    pg_store: Store,
) -> None:
    insert(pg_store, "s-1")
    insert(pg_store, "s-2")
    holder = Holder(pg_store, "s-1")
    holder.start()
    try:
        assert holder.locked.wait(10) and holder.error is None
        started_at = time.monotonic()
        with pg_store.transaction() as tx:
            assert tx.lock("s-1", skip_locked=True) is None
            other = tx.lock("s-2", skip_locked=True)  # other rows are not affected
            assert other is not None and other[0].id == "s-2"
        assert time.monotonic() - started_at < 5, "skip_locked must not wait"
    finally:
        holder.release.set()
    holder.join(10)
    assert holder.error is None
    with pg_store.transaction() as tx:
        loaded = tx.lock("s-1", skip_locked=True)
        assert loaded is not None and loaded[0].lock_version == 2


def test_status_survives_a_replace_round_trip(store: Store) -> None:
    """Saving a status the store handed back stores exactly what was handed in."""
    insert(store, "s-1")
    with store.transaction() as tx:
        loaded = tx.lock("s-1")
        assert loaded is not None
        record, status = loaded
        first = replace(status.steps[0], result=UNICODE_RESULT, error=ErrorInfo("E", "m", True))
        changed = replace(status, steps=(first, *status.steps[1:]))
        tx.save(record, status, changed, [], [])
    assert store.get("s-1")[1] == changed
