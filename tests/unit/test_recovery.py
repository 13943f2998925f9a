"""Operator recovery in the pure core, one rule per test: pause/resume, rerun, fork, and the
plans (``sagas.recovery``) an operator reads before an action runs compensations or effects."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sagas.errors import PayloadInvalid
from sagas.machine import (
    AwaitSignal,
    Cancel,
    Dispatch,
    ErrorInfo,
    Pause,
    Plan,
    Rerun,
    Resume,
    Retry,
    SagaStatus,
    Signal,
    Start,
    StepFailed,
    StepPlan,
    StepSucceeded,
    Wake,
    WakeAt,
    decide,
    new_status,
    next_wakeup,
    why_no_rerun,
)
from sagas.recovery import (
    ForkDetail,
    dropped_paths,
    edited_payload,
    fork_status,
    operator_event,
    payload_diff,
    plan_action,
    plan_fork,
    why_no_fork,
)
from sagas.retry import RetryPolicy
from sagas.routes import Park
from sagas.state import Action, HistoryKind, OperatorAction, SagaState, StepState

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
FWD, COMP = Action.FORWARD, Action.COMPENSATE
ONE_TRY = RetryPolicy(max_attempts=1)
BOOM = ErrorInfo("CarrierDown", "no", False)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(name: str, *, compensable: bool = True, **kw: object) -> StepPlan:
    return StepPlan(name, 10.0, ONE_TRY, compensable, 5.0, ONE_TRY, **kw)  # type: ignore[arg-type]


ORDER = Plan((step("reserve"), step("charge"), step("ship", compensable=False)))


def run(plan: Plan, status: SagaStatus, *events: object) -> SagaStatus:
    for event in events:
        status = decide(plan, status, event).status  # type: ignore[arg-type]
    return status


def started(plan: Plan = ORDER, deadline: datetime | None = None) -> SagaStatus:
    return run(plan, new_status("order-1", plan, deadline), Start(T0))


def kinds(decision: object) -> list[HistoryKind]:
    return [h.kind for h in decision.history]  # type: ignore[attr-defined]


# -- pause and resume --------------------------------------------------------------------------


def test_a_paused_saga_records_the_running_reply_and_holds_the_next_dispatch() -> None:
    saga = started()
    paused = decide(ORDER, saga, Pause(at(1), "checking stock", "ana"))
    assert paused.commands == () and paused.status.paused_at == at(1)
    assert paused.history[0].detail == {"by": "ana", "reason": "checking stock"}
    reply = decide(ORDER, paused.status, StepSucceeded(0, 1, FWD, at(2), {"r": 1}))
    assert kinds(reply) == [HistoryKind.STEP_SUCCEEDED, HistoryKind.DISPATCH_HELD]
    assert reply.commands == ()  # nothing dispatched
    held = reply.status.steps[1]
    assert (held.state, held.attempt, held.next_attempt_at) == (StepState.PENDING, 0, at(2))
    assert next_wakeup(reply.status) is None  # the sweeper has nothing to fire
    assert decide(ORDER, reply.status, Wake(at(500))).history == ()  # timers wait
    resumed = decide(ORDER, reply.status, Resume(at(600), "stock ok", "ana"))
    assert kinds(resumed)[:2] == [HistoryKind.SAGA_RESUMED, HistoryKind.STEP_DISPATCHED]
    assert resumed.history[0].detail == {
        "by": "ana",
        "reason": "stock ok",
        "paused_at": at(1).isoformat(),
    }
    assert [c for c in resumed.commands if isinstance(c, Dispatch)] == [
        Dispatch(1, 1, FWD, at(610))
    ]
    assert not resumed.status.paused


def test_a_deadline_that_passes_while_paused_compensates_on_resume() -> None:
    saga = run(ORDER, started(deadline=at(60)), StepSucceeded(0, 1, FWD, at(1), {"r": 1}))
    paused = run(ORDER, saga, Pause(at(2), "why so slow?", "ana"))
    assert decide(ORDER, paused, Wake(at(120))).history == ()  # not while paused
    event = Resume(at(120), "go on", "ana")
    plan, decision = plan_action(OperatorAction.RESUME, ORDER, paused, event, revision=7)
    assert HistoryKind.DEADLINE_EXCEEDED in kinds(decision)
    assert decision.status.state is SagaState.COMPENSATING
    assert plan.compensates == ("charge", "reserve")  # charge was running: in doubt
    assert "will compensate charge, then reserve" in plan.text()
    assert "deadline passed while it was paused" in plan.text()
    assert plan.needs_confirmation and plan.revision == 7


def test_a_signal_sent_while_paused_is_kept_and_taken_on_resume() -> None:
    wait = StepPlan("approval", 3600.0, ONE_TRY, False, 5.0, ONE_TRY, wait=True)
    loan = Plan((step("hold"), wait))
    saga = run(loan, started(loan), StepSucceeded(0, 1, FWD, at(1)))
    paused = run(loan, saga, Pause(at(2), "audit", "ana"))
    assert decide(loan, paused, Signal(1, at(3), {"ok": True}, "s-1")).history == ()
    resumed = decide(loan, paused, Resume(at(4), "audit done", "ana"))
    assert AwaitSignal(1) in resumed.commands
    assert WakeAt(saga.steps[1].deadline_at) in resumed.commands  # type: ignore[arg-type]


def test_cancel_retry_and_rerun_wait_for_a_resume() -> None:
    paused = run(ORDER, started(), Pause(at(1), "x", "ana"))
    for event in (Cancel(at(2), "x"), Retry(at(2), "x"), Rerun(at(2), "x"), Pause(at(2), "x")):
        assert decide(ORDER, paused, event).history == (), event
    refused, _ = plan_action(OperatorAction.CANCEL, ORDER, paused, Cancel(at(2)), revision=1)
    assert refused.refused == "saga is paused: resume it first"
    assert refused.text() == "nothing to cancel: saga 'order-1' is paused: resume it first"


def test_resume_and_pause_refused_when_they_change_nothing() -> None:
    saga = started()
    resume, _ = plan_action(OperatorAction.RESUME, ORDER, saga, Resume(at(1)), revision=1)
    assert resume.refused == "saga is pending and not paused"
    done = run(ORDER, saga, *(StepSucceeded(i, 1, FWD, at(i + 1)) for i in range(3)))
    assert done.state is SagaState.COMPLETED
    pause, _ = plan_action(OperatorAction.PAUSE, ORDER, done, Pause(at(9)), revision=1)
    assert pause.refused == "saga is completed"


def test_a_saga_that_finishes_while_paused_is_no_longer_paused() -> None:
    saga = run(ORDER, started(), StepSucceeded(0, 1, FWD, at(1)), StepSucceeded(1, 1, FWD, at(2)))
    paused = run(ORDER, saga, Pause(at(3), "x", "ana"))
    done = decide(ORDER, paused, StepSucceeded(2, 1, FWD, at(4)))
    assert done.status.state is SagaState.COMPLETED and not done.status.paused


# -- rerun -------------------------------------------------------------------------------------------


def test_rerun_of_a_failed_saga_from_its_failed_first_step_keeps_its_history() -> None:
    failed = run(ORDER, started(deadline=at(60)), StepFailed(0, 1, FWD, at(1), BOOM))
    assert failed.state is SagaState.FAILED
    event = Rerun(at(100), "carrier fixed", "ana", at(160))
    plan, decision = plan_action(OperatorAction.RERUN, ORDER, failed, event, revision=4)
    assert plan.refused is None and plan.reruns == ("reserve",)
    assert plan.lines[0] == "rerun order-1 from reserve in the same saga (its history is kept)"
    assert "will re-run reserve (attempt 2) with the same idempotency key order-1:reserve" in (
        plan.text()
    )
    assert "then charge, ship" in plan.text()
    after = decision.status
    assert after.state is SagaState.PENDING and after.failure is None
    assert after.deadline_at == at(160)
    assert [s.state for s in after.steps] == [StepState.RUNNING, StepState.PENDING] * 1 + [
        StepState.PENDING
    ]
    assert decision.history[0].detail == {
        "by": "ana",
        "reason": "carrier fixed",
        "was": "failed",
        "saga_was": "failed",
    }
    done = run(
        ORDER, after, *(StepSucceeded(i, 2 if i == 0 else 1, FWD, at(101)) for i in range(3))
    )
    assert done.state is SagaState.COMPLETED


def test_rerun_refused_when_an_effect_before_the_failed_step_was_undone() -> None:
    saga = run(
        ORDER, started(), StepSucceeded(0, 1, FWD, at(1)), StepFailed(1, 1, FWD, at(2), BOOM)
    )
    failed = run(ORDER, saga, StepSucceeded(0, 1, COMP, at(3)))
    assert failed.state is SagaState.FAILED
    why = why_no_rerun(ORDER, failed)
    assert why is not None and "'reserve' was compensated" in why and "fork" in why
    assert decide(ORDER, failed, Rerun(at(4), "x")).history == ()


def test_rerun_of_a_parked_step_runs_it_again_with_the_same_key() -> None:
    parking = Plan((step("reserve"), step("ship", compensable=False, on_exhausted=Park("ops"))))
    saga = run(
        parking,
        started(parking),
        StepSucceeded(0, 1, FWD, at(1)),
        Wake(at(20)),  # ship's attempt timed out: in doubt, parked
    )
    assert saga.steps[1].state is StepState.PARKED
    event = operator_event(OperatorAction.RERUN, at(30), by="ana", reason="carrier back")
    plan, decision = plan_action(OperatorAction.RERUN, parking, saga, event, revision=3)
    assert plan.reruns == ("ship",)
    assert "with the same idempotency key order-1:ship (an earlier attempt may have" in plan.text()
    assert [c for c in decision.commands if isinstance(c, Dispatch)] == [
        Dispatch(1, 2, FWD, at(40))
    ]


def test_rerun_refused_for_a_completed_or_compensating_saga() -> None:
    done = run(ORDER, started(), *(StepSucceeded(i, 1, FWD, at(1)) for i in range(3)))
    assert "completed" in (why_no_rerun(ORDER, done) or "")
    saga = run(
        ORDER, started(), StepSucceeded(0, 1, FWD, at(1)), StepFailed(1, 1, FWD, at(2), BOOM)
    )
    assert saga.state is SagaState.COMPENSATING
    assert "retry its compensation" in (why_no_rerun(ORDER, saga) or "")


# -- cancel and retry plans --------------------------------------------------------------------


def test_the_cancel_plan_names_the_compensations_newest_first() -> None:
    saga = run(ORDER, started(), StepSucceeded(0, 1, FWD, at(1)))
    plan, decision = plan_action(OperatorAction.CANCEL, ORDER, saga, Cancel(at(2), "x"), revision=2)
    assert plan.compensates == ("charge", "reserve")
    assert plan.lines == (
        "cancel order-1: stop going forward",
        "charge is running: its outcome is unknown, so it is compensated too",
        "will compensate charge, then reserve",
    )
    assert decision.status.state is SagaState.COMPENSATING


def test_the_retry_plan_of_a_parked_compensation_names_its_key() -> None:
    saga = run(
        ORDER, started(), StepSucceeded(0, 1, FWD, at(1)), StepFailed(1, 1, FWD, at(2), BOOM)
    )
    stuck = run(ORDER, saga, StepFailed(0, 1, COMP, at(3), ErrorInfo("LedgerDown", "", False)))
    assert stuck.steps[0].state is StepState.COMPENSATION_FAILED
    plan, _ = plan_action(OperatorAction.RETRY, ORDER, stuck, Retry(at(4), "x"), revision=5)
    assert "will retry the compensation of reserve with the key order-1:reserve:compensate" in (
        plan.text()
    )
    assert plan.compensates == ("reserve",) and plan.needs_confirmation


def test_a_pause_plan_needs_no_confirmation() -> None:
    saga = started()
    plan, _ = plan_action(OperatorAction.PAUSE, ORDER, saga, Pause(at(1), "x"), revision=1)
    assert not plan.needs_confirmation
    assert "reserve is running: its reply is recorded, what follows it is held" in plan.text()


# -- fork ------------------------------------------------------------------------------------------


def completed() -> SagaStatus:
    return run(ORDER, started(), *(StepSucceeded(i, 1, FWD, at(i), {"n": i}) for i in range(3)))


def test_a_fork_reuses_the_steps_before_it_and_starts_at_its_step() -> None:
    original = completed()
    first = fork_status(ORDER, original, 2, "order-1.fork1", at(3600))
    assert [(s.state, s.result, s.attempt) for s in first.steps[:2]] == [
        (StepState.SUCCEEDED, {"n": 0}, 0),
        (StepState.SUCCEEDED, {"n": 1}, 0),
    ]
    started_fork = decide(ORDER, first, Start(at(10)))
    dispatches = [c for c in started_fork.commands if isinstance(c, Dispatch)]
    assert dispatches == [Dispatch(2, 1, FWD, at(20))]
    assert started_fork.status.state is SagaState.PENDING


def test_a_fork_is_refused_for_a_saga_in_flight_a_group_member_or_past_an_undone_step() -> None:
    assert "fork a finished saga" in (why_no_fork(ORDER, started(), 0) or "")
    saga = run(
        ORDER, started(), StepSucceeded(0, 1, FWD, at(1)), StepFailed(1, 1, FWD, at(2), BOOM)
    )
    failed = run(ORDER, saga, StepSucceeded(0, 1, COMP, at(3)))
    assert why_no_fork(ORDER, failed, 0) is None  # nothing reused
    why = why_no_fork(ORDER, failed, 2)
    assert why is not None and "'reserve' is compensated" in why
    group = Plan(
        (step("a"), replace(step("b"), group="g"), replace(step("c"), group="g"), step("d"))
    )
    done = run(group, started(group), *(StepSucceeded(i, 1, FWD, at(1)) for i in range(4)))
    assert "inside a parallel group: fork from 'b'" in (why_no_fork(group, done, 2) or "")


def test_the_fork_plan_lists_reuse_new_effects_and_the_payload_diff() -> None:
    original = completed()
    changes = payload_diff({"city": "Paris", "n": 1}, {"city": "Lyon", "n": 1})
    detail = ForkDetail("order-1.fork1", "ship", ("reserve", "charge"), {}, changes, 2)
    plan = plan_fork(ORDER, original, 2, detail, revision=9)
    assert plan.lines == (
        "fork order-1 from ship as order-1.fork1",
        "steps before it reused with their recorded results, not run again: reserve, charge",
        "will run ship as new effects (idempotency keys of order-1.fork1)",
        "payload city: 'Paris' -> 'Lyon'",
        "order-1 is not changed; each records the link to the other",
    )
    assert plan.needs_confirmation and plan.refused is None


def test_payload_edits_diff_and_unknown_fields() -> None:
    original = {"order_id": "o-1", "address": {"city": "Paris", "zip": "75001"}}
    edited = edited_payload(original, {"address.city": "Lyon", "note": "call first"})
    assert original["address"]["city"] == "Paris"  # type: ignore[index]
    assert edited == {
        "order_id": "o-1",
        "address": {"city": "Lyon", "zip": "75001"},
        "note": "call first",
    }
    assert payload_diff(original, edited) == {
        "address.city": {"old": "Paris", "new": "Lyon"},
        "note": {"new": "call first"},
    }
    validated = {"order_id": "o-1", "address": {"city": "Lyon", "zip": "75001"}}  # note dropped
    assert dropped_paths({"address.city": "Lyon", "note": "x"}, validated) == ["note"]
    with pytest.raises(PayloadInvalid) as err:
        edited_payload(original, {"order_id.x": 1})
    assert err.value.field == "payload.order_id"
