"""The coordinator against the real store (SQLite and PostgreSQL) with a recording Celery app.

No broker and no worker here: ``Recorder.send_task`` captures what would be published, and a
hook checks, at publish time, that what is published was already committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagas import coordinator, starter
from sagas.definition import Saga, StepContext
from sagas.errors import (
    InvalidSagaId,
    PayloadInvalid,
    PayloadNotJSON,
    PayloadTooLarge,
    SagaConflict,
    SagaInputError,
    UnknownSaga,
)
from sagas.machine import Wake
from sagas.messages import StepCommand, StepReply
from sagas.retry import RetryPolicy
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.state import Action, HistoryKind, SagaState, StepState
from sagas.store import Store, Transition
from sagas.transport import CORRELATION_HEADER, WAKE_TASK
from tests.store.helpers import count_rows


class Order(BaseModel):
    order_id: str
    qty: int
    card: str = ""


def _release(ctx: StepContext[Order]) -> None:
    return None


def _refund(ctx: StepContext[Order]) -> None:
    return None


# Defined at import time, like a real saga module; the name is unique to this test module.
SAGA: Saga[Order] = Saga("unit_coordinator_store_order", payload=Order)


@SAGA.step(queue="inventory", timeout=30, compensation=_release)
def reserve(ctx: StepContext[Order]) -> dict[str, Any]:
    return {"reserved": ctx.payload.qty}


@SAGA.step(
    queue="payments",
    timeout=30,
    retry=RetryPolicy(max_attempts=2, initial=0.05, max_interval=0.05, jitter=0.0),
    compensation=_refund,
)
def charge(ctx: StepContext[Order]) -> dict[str, Any]:
    return {"charged": True}


@SAGA.step(queue="shipping", timeout=30, compensation=None)
def ship(ctx: StepContext[Order]) -> None:
    return None


OTHER: Saga[Order] = Saga("unit_coordinator_store_other", payload=Order)


@OTHER.step(queue="inventory", compensation=None)
def other_step(ctx: StepContext[Order]) -> None:
    return None


STEPS = ["reserve", "charge", "ship"]
SECRET = "4111-1111-1111-1111"
PAYLOAD = {"order_id": "o-1", "qty": 2, "card": SECRET}


@dataclass
class Sent:
    name: str
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    options: dict[str, Any]
    committed: Any = None  # what the store said when this was published

    @property
    def command(self) -> StepCommand:
        assert self.args is not None
        return StepCommand.model_validate(self.args[0])


@dataclass
class Recorder:
    """Stands in for the Celery app: ``send_task`` is all the coordinator uses."""

    store: Store
    sent: list[Sent] = field(default_factory=list)

    def send_task(
        self,
        name: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        committed = None
        saga_id = (options.get("headers") or {}).get("saga_id")
        if saga_id is not None:
            # Read through another connection: only committed state is visible here.
            _, status, _ = self.store.get(saga_id)
            committed = status
        self.sent.append(Sent(name, args, kwargs, options, committed))

    def steps(self) -> list[Sent]:
        return [s for s in self.sent if s.name != WAKE_TASK]


@pytest.fixture
def rt(store: Store) -> Runtime:
    return Runtime(
        settings=Settings(database_url=store.url), store=store, app=Recorder(store=store)
    )


def recorder(rt: Runtime) -> Recorder:
    assert isinstance(rt.app, Recorder)
    return rt.app


def reply(saga_id: str, step: str, attempt: int = 1, **kw: Any) -> StepReply:
    kw.setdefault("ok", True)
    kw.setdefault("action", Action.FORWARD)
    return StepReply(saga_id=saga_id, step=step, attempt=attempt, **kw)


def start(rt: Runtime, saga_id: str = "order-1", **kw: Any) -> str:
    payload = kw.pop("payload", PAYLOAD)
    sid = starter.start(SAGA.name, payload, saga_id=saga_id, rt=rt, **kw)
    # The start's outbox mark is queued (SAGAS_OUTBOX_CLEAR_DELAY): written now, so that a
    # test comparing the row before and after something is not racing the clears thread.
    rt.store.flush_clears()
    return sid


# -- start ----------------------------------------------------------------------------------------


def test_start_creates_the_saga_and_publishes_one_step_command(rt: Runtime) -> None:
    # The longest delay allowed (5 s): the queued mark is still queued when the test looks.
    rt = Runtime(
        settings=Settings(database_url=rt.store.url, outbox_clear_delay=5.0),
        store=rt.store,
        app=rt.app,
    )
    sid = starter.start(SAGA.name, PAYLOAD, saga_id="order-1", rt=rt, correlation_id="req-42")
    assert sid == "order-1"

    sent = recorder(rt).sent
    assert len(sent) == 1
    msg = sent[0]
    assert msg.name == f"saga.{SAGA.name}.reserve"
    assert msg.options["queue"] == "inventory"
    assert msg.options["headers"][CORRELATION_HEADER] == "req-42"
    assert msg.options["headers"]["saga_id"] == sid
    assert msg.options["argsrepr"] == f"saga={SAGA.name} id={sid} step=reserve attempt=1"
    for shown in (msg.options["argsrepr"], msg.options["kwargsrepr"]):
        assert SECRET not in shown and "o-1" not in shown
    command = msg.command
    assert command.saga_id == sid and command.step == "reserve" and command.attempt == 1
    assert command.action is Action.FORWARD and command.correlation_id == "req-42"
    assert command.payload == PAYLOAD and command.results == {}
    # Published only after commit: another connection already saw the dispatched attempt.
    assert msg.committed is not None
    assert msg.committed.steps[0].state is StepState.RUNNING
    assert msg.committed.steps[0].attempt == 1

    # The clear is queued for this process' writer (SAGAS_OUTBOX_CLEAR_DELAY); flush it now.
    assert rt.store.pending_clears() == (1 if rt.store.is_postgres else 0)
    rt.store.flush_clears()
    record, status, history = rt.store.get(sid)
    assert record.state is SagaState.PENDING and record.name == SAGA.name
    assert record.correlation_id == "req-42" and record.payload == PAYLOAD
    assert record.outbox is None, "published commands must be cleared from the outbox"
    assert [s.state for s in status.steps] == [
        StepState.RUNNING,
        StepState.PENDING,
        StepState.PENDING,
    ]
    assert [h.kind for h in history] == [HistoryKind.SAGA_STARTED, HistoryKind.STEP_DISPATCHED]
    assert count_rows(rt.store) == {"saga": 1, "saga_step": 3, "saga_event": 2}


def test_start_without_ids_generates_them(rt: Runtime) -> None:
    sid = starter.start(SAGA.name, PAYLOAD, rt=rt)
    record = rt.store.get(sid)[0]
    assert len(sid) == 32 and record.correlation_id and record.correlation_id != sid
    assert recorder(rt).sent[0].options["headers"][CORRELATION_HEADER] == record.correlation_id


def test_replying_ok_to_each_step_completes_the_saga(rt: Runtime) -> None:
    sid = start(rt)
    results = [{"reserved": 2, "where": "Z\u00fcrich \u2603"}, {"charged": True}, None]
    for i, (name, result) in enumerate(zip(STEPS, results, strict=True)):
        applied = coordinator.handle_reply(reply(sid, name, result=result), rt=rt)

        assert applied is not None

        decision = applied.decision
        assert decision is not None
        assert HistoryKind.STEP_SUCCEEDED in [h.kind for h in decision.history]
        steps_sent = recorder(rt).steps()
        if i + 1 < len(STEPS):
            assert len(steps_sent) == i + 2
            nxt = steps_sent[-1].command
            assert nxt.step == STEPS[i + 1] and nxt.attempt == 1
            assert nxt.results == dict(zip(STEPS[: i + 1], results[: i + 1], strict=True))
    assert len(recorder(rt).sent) == 3

    record, status, history = rt.store.get(sid)
    assert record.state is SagaState.COMPLETED
    assert record.finished_at is not None and record.wake_at is None
    assert [s.state for s in status.steps] == [StepState.SUCCEEDED] * 3
    assert [s.result for s in status.steps] == results
    assert [h.kind for h in history] == [
        HistoryKind.SAGA_STARTED,
        HistoryKind.STEP_DISPATCHED,
        HistoryKind.STEP_SUCCEEDED,
        HistoryKind.STEP_DISPATCHED,
        HistoryKind.STEP_SUCCEEDED,
        HistoryKind.STEP_DISPATCHED,
        HistoryKind.STEP_SUCCEEDED,
        HistoryKind.SAGA_COMPLETED,
    ]


def test_start_is_idempotent_on_the_saga_id(rt: Runtime) -> None:
    sid = start(rt)
    rt.store.flush_clears()  # the start's outbox mark, queued: written before the snapshot
    before = rt.store.get(sid)
    # Same payload, spelled differently (key order, model instance): the same saga.
    assert start(rt, payload=dict(reversed(list(PAYLOAD.items())))) == sid
    assert start(rt, payload=Order(**PAYLOAD)) == sid
    assert len(recorder(rt).sent) == 1, "a duplicate start must not publish again"
    assert rt.store.get(sid) == before
    assert count_rows(rt.store)["saga"] == 1


def test_start_with_the_same_id_and_a_different_payload_conflicts(rt: Runtime) -> None:
    sid = start(rt)
    before = rt.store.get(sid)
    with pytest.raises(SagaConflict) as exc:
        start(rt, payload={**PAYLOAD, "qty": 3})
    assert exc.value.field == "saga_id"
    with pytest.raises(SagaConflict):
        starter.start(OTHER.name, PAYLOAD, saga_id=sid, rt=rt)  # same id, other saga
    assert rt.store.get(sid) == before
    assert len(recorder(rt).sent) == 1


BAD_STARTS: list[tuple[str, dict[str, Any], type[SagaInputError], str]] = [
    ("unknown saga", {"name": "no_such_saga"}, UnknownSaga, "name"),
    ("missing field", {"payload": {"order_id": "o"}}, PayloadInvalid, "payload.qty"),
    ("bool for int", {"payload": {"order_id": "o", "qty": True}}, PayloadInvalid, "payload.qty"),
    ("not an object", {"payload": ["o", 1]}, PayloadInvalid, "payload"),
    (
        "NaN",
        {"payload": {"order_id": "o", "qty": 1, "x": float("nan")}},
        PayloadNotJSON,
        "payload.x",
    ),
    ("too large", {"payload": {**PAYLOAD, "card": "x" * 500}}, PayloadTooLarge, "payload"),
    ("bad saga id", {"saga_id": "has space"}, InvalidSagaId, "saga_id"),
    ("long saga id", {"saga_id": "a" * 129}, InvalidSagaId, "saga_id"),
    ("bad correlation id", {"correlation_id": "x\ny"}, InvalidSagaId, "correlation_id"),
]


@pytest.mark.parametrize(
    ("case", "error", "field_name"),
    [(b[1], b[2], b[3]) for b in BAD_STARTS],
    ids=[b[0] for b in BAD_STARTS],
)
def test_bad_starts_raise_typed_errors_and_write_nothing(
    store: Store, case: dict[str, Any], error: type[SagaInputError], field_name: str
) -> None:
    rt = Runtime(
        settings=Settings(database_url=store.url, max_payload_bytes=300),
        store=store,
        app=Recorder(store=store),
    )
    args: dict[str, Any] = {"name": SAGA.name, "payload": PAYLOAD, "saga_id": "order-1"}
    args.update(case)
    with pytest.raises(error) as exc:
        starter.start(args.pop("name"), args.pop("payload"), rt=rt, **args)
    assert exc.value.field == field_name
    assert count_rows(store) == {"saga": 0, "saga_step": 0, "saga_event": 0}
    assert recorder(rt).sent == []


# -- replies --------------------------------------------------------------------------------------


def test_a_duplicate_reply_is_recorded_and_changes_nothing(rt: Runtime) -> None:
    sid = start(rt)
    coordinator.handle_reply(reply(sid, "reserve", result={"n": 1}), rt=rt)
    _, status, history = rt.store.get(sid)
    published = len(recorder(rt).sent)

    applied = coordinator.handle_reply(reply(sid, "reserve", result={"n": 2}), rt=rt)

    assert applied is not None

    decision = applied.decision
    assert decision is not None and decision.commands == ()
    _, status_after, history_after = rt.store.get(sid)
    assert status_after == status
    assert status_after.steps[0].result == {"n": 1}
    assert len(recorder(rt).sent) == published
    assert len(history_after) == len(history) + 1
    ignored = history_after[-1]
    assert ignored.kind == HistoryKind.REPLY_IGNORED and ignored.step == "reserve"
    assert ignored.detail is not None and ignored.detail["why"] == "step is succeeded"


def test_a_reply_for_an_unknown_saga_changes_nothing(rt: Runtime) -> None:
    sid = start(rt)
    rows, before = count_rows(rt.store), rt.store.get(sid)
    assert coordinator.handle_reply(reply("no-such-saga", "reserve"), rt=rt) is None
    assert count_rows(rt.store) == rows
    assert rt.store.get(sid) == before
    assert len(recorder(rt).sent) == 1


def test_a_reply_for_an_unknown_step_is_ignored(rt: Runtime) -> None:
    sid = start(rt)
    _, status, _ = rt.store.get(sid)
    coordinator.handle_reply(reply(sid, "teleport"), rt=rt)
    _, after, history = rt.store.get(sid)
    assert after == status
    assert history[-1].kind == HistoryKind.REPLY_IGNORED
    assert history[-1].detail is not None and history[-1].detail["why"] == "unknown step"
    assert len(recorder(rt).sent) == 1


def test_a_permanent_failure_publishes_compensations_newest_first(rt: Runtime) -> None:
    sid = start(rt)
    coordinator.handle_reply(reply(sid, "reserve", result={"reserved": 2}), rt=rt)
    failed = reply(sid, "charge", ok=False, error_type="CardDeclined", retryable=False)
    coordinator.handle_reply(failed, rt=rt)

    undo = recorder(rt).sent[-1]
    assert undo.name == f"saga.{SAGA.name}.reserve.compensate"
    assert undo.options["queue"] == "inventory"
    assert undo.options["argsrepr"] == (
        f"saga={SAGA.name} id={sid} step=reserve (compensate) attempt=1"
    )
    assert undo.command.action is Action.COMPENSATE
    assert undo.command.result == {"reserved": 2}
    assert undo.committed.steps[0].state is StepState.COMPENSATING

    comp_ok = reply(sid, "reserve", action=Action.COMPENSATE)
    coordinator.handle_reply(comp_ok, rt=rt)
    record, status, _ = rt.store.get(sid)
    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "CardDeclined"
    assert [s.state for s in status.steps] == [
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.SKIPPED,
    ]
    assert len(recorder(rt).sent) == 3


@pytest.mark.parametrize("bad", ["lone \ud800 surrogate", "nul \u0000 char", float("inf")])
def test_a_result_json_cannot_carry_fails_the_step_instead_of_the_coordinator(
    rt: Runtime, bad: Any
) -> None:
    sid = start(rt)
    applied = coordinator.handle_reply(reply(sid, "reserve", result={"v": bad}), rt=rt)

    assert applied is not None

    decision = applied.decision
    assert decision is not None
    record, status, history = rt.store.get(sid)
    assert status.steps[0].error is not None
    assert status.steps[0].error.type == "StepResultNotJSON"
    assert status.steps[0].result is None
    assert record.state is SagaState.FAILED  # first step failed for good: nothing to undo
    assert HistoryKind.STEP_FAILED in [h.kind for h in history]


# -- timers ---------------------------------------------------------------------------------------


def test_wake_with_nothing_due_changes_nothing(rt: Runtime) -> None:
    sid = start(rt)
    before = rt.store.get(sid)
    applied = coordinator.wake(sid, rt=rt)

    assert applied is not None

    decision = applied.decision
    assert decision is not None and not decision.changed
    assert rt.store.get(sid) == before
    assert len(recorder(rt).sent) == 1
    assert coordinator.wake("no-such-saga", rt=rt) is None


def test_a_retryable_failure_is_retried_when_its_timer_fires(rt: Runtime) -> None:
    sid = start(rt)
    coordinator.handle_reply(reply(sid, "reserve"), rt=rt)
    failed = reply(sid, "charge", ok=False, error_type="Timeout", retryable=True)
    coordinator.handle_reply(failed, rt=rt)

    record, status, _ = rt.store.get(sid)
    retry_at = status.steps[1].next_attempt_at
    assert status.steps[1].state is StepState.PENDING and retry_at is not None
    assert record.wake_at == retry_at
    wake_msg = recorder(rt).sent[-1]
    assert wake_msg.name == WAKE_TASK and wake_msg.args == [sid]
    assert wake_msg.options["queue"] == rt.settings.coordinator_queue
    assert 0 <= wake_msg.options["countdown"] <= 0.05 + 1e-6

    # Poll the timer the way the countdown message / sweeper would, until it is due.
    deadline = time.monotonic() + 10
    while len(recorder(rt).steps()) < 3:
        assert time.monotonic() < deadline, "the retry never fired"
        coordinator.wake(sid, rt=rt)
        time.sleep(0.01)
    retry_msg = recorder(rt).steps()[-1]
    assert retry_msg.command.step == "charge" and retry_msg.command.attempt == 2
    assert retry_msg.options["argsrepr"].endswith("step=charge attempt=2")
    _, status, _ = rt.store.get(sid)
    assert status.steps[1].state is StepState.RUNNING and status.steps[1].attempt == 2
    assert rt.store.due(limit=10) == []


def test_a_timeout_schedules_a_retry_and_a_late_reply_is_ignored(rt: Runtime) -> None:
    sid = start(rt)
    applied = coordinator.apply(sid, lambda now, _saga: Wake(now + timedelta(seconds=31)), rt=rt)

    assert applied is not None

    later = applied.decision
    assert later is not None
    assert [h.kind for h in later.history] == [
        HistoryKind.STEP_TIMED_OUT,
        HistoryKind.RETRY_SCHEDULED,
    ]
    wake_msg = recorder(rt).sent[-1]
    assert wake_msg.name == WAKE_TASK
    assert 31 < wake_msg.options["countdown"] < 31 + 5  # 31 s ahead + the ~1 s backoff

    applied = coordinator.handle_reply(reply(sid, "reserve", attempt=1), rt=rt)

    assert applied is not None

    decision = applied.decision
    assert decision is not None
    assert [h.kind for h in decision.history] == [HistoryKind.REPLY_IGNORED]
    assert rt.store.get(sid)[1].steps[0].state is StepState.PENDING


def test_cancel_compensates_through_the_store(rt: Runtime) -> None:
    sid = start(rt)
    coordinator.handle_reply(reply(sid, "reserve", result={"r": 1}), rt=rt)
    coordinator.cancel(sid, "customer asked", rt=rt)
    record, status, history = rt.store.get(sid)
    assert record.state is SagaState.COMPENSATING
    assert status.steps[1].state is StepState.COMPENSATING  # charge was in flight
    assert recorder(rt).sent[-1].name == f"saga.{SAGA.name}.charge.compensate"
    assert HistoryKind.CANCEL_REQUESTED in [h.kind for h in history]


# -- optimistic transitions: compare-and-set ----------------------------------------------------


def test_a_write_from_a_stale_snapshot_writes_nothing(rt: Runtime) -> None:
    """Two readers of one version: the first write wins, the second changes no row at all."""
    sid = start(rt)
    first, second = rt.store.load(sid), rt.store.load(sid)
    assert first is not None and second is not None
    assert first.record.lock_version == second.record.lock_version
    _, _, history = rt.store.get(sid)

    def succeed(snap: Any, result: dict[str, Any]) -> Any:
        from sagas.machine import StepSucceeded, decide

        return decide(
            SAGA.plan, snap.status, StepSucceeded(0, 1, Action.FORWARD, snap.now(), result)
        )

    won, lost = succeed(first, {"n": 1}), succeed(second, {"n": 2})
    assert rt.store.write(
        Transition(first.record, first.status, won.status, won.history), now=first.now()
    )
    assert not rt.store.write(
        Transition(second.record, second.status, lost.status, lost.history), now=second.now()
    )
    record, status, history_after = rt.store.get(sid)
    assert record.lock_version == first.record.lock_version + 1
    assert status.steps[0].result == {"n": 1}  # the loser's result was not written
    assert len(history_after) == len(history) + len(won.history)


def test_a_transition_that_loses_the_race_reads_again_and_decides_again(rt: Runtime) -> None:
    """While our reply is being decided, a duplicate of it commits first. Our write conflicts;
    apply re-reads, finds the step settled and records the reply as ignored: one success, no
    lost update, and no second dispatch of the next step."""
    sid = start(rt)
    calls = 0

    def event(now: Any, saga: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # another worker's transition lands between our read and our write
            coordinator.handle_reply(reply(sid, "reserve", result={"n": 1}), rt=rt)
        from sagas.machine import StepSucceeded

        return StepSucceeded(0, 1, Action.FORWARD, now, {"n": 2})

    before = len(recorder(rt).steps())
    applied = coordinator.apply(sid, event, rt=rt)

    assert applied is not None

    decision = applied.decision
    assert calls == 2 and decision is not None and decision.commands == ()
    _, status, history = rt.store.get(sid)
    assert status.steps[0].result == {"n": 1} and status.steps[1].state is StepState.RUNNING
    assert [h.kind for h in history].count(HistoryKind.STEP_SUCCEEDED) == 1
    assert history[-1].kind == HistoryKind.REPLY_IGNORED
    assert len(recorder(rt).steps()) == before + 1  # charge dispatched once, by the winner


def test_the_sweeper_leaves_a_saga_another_transition_is_moving(rt: Runtime) -> None:
    """skip_locked semantics without a lock: a wake that loses the race gives up (None)."""
    sid = start(rt)

    def event(now: Any, saga: Any) -> Any:
        coordinator.handle_reply(reply(sid, "reserve"), rt=rt)
        return Wake(now + timedelta(seconds=3600))  # would time the step out

    assert coordinator.apply(sid, event, rt=rt, skip_locked=True) is None
    _, status, history = rt.store.get(sid)
    assert status.steps[0].state is StepState.SUCCEEDED
    assert HistoryKind.STEP_TIMED_OUT not in [h.kind for h in history]


def test_stats_count_sagas_by_state_and_what_needs_attention(rt: Runtime) -> None:
    empty = rt.store.stats(unsent_grace=10)
    assert empty["by_state"] == {} and empty["oldest_active_seconds"] == 0.0
    done = start(rt, saga_id="done-1")
    for step in STEPS:
        coordinator.handle_reply(reply(done, step), rt=rt)
    start(rt, saga_id="open-1")
    time.sleep(0.05)
    stats = rt.store.stats(unsent_grace=10)
    assert stats["by_state"] == {(SAGA.name, "completed"): 1, (SAGA.name, "pending"): 1}
    assert stats["parked"] == 0 and stats["outbox_unsent"] == 0
    assert stats["timers_due"] == 0  # open-1's step deadline is 30 s away
    assert 0.0 < stats["oldest_active_seconds"] < 30
