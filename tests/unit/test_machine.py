"""Example-based tests of the core's rules, one rule per test, with exact times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sagas.machine import (
    DEADLINE_ERROR,
    TIMEOUT_ERROR,
    Cancel,
    Decision,
    Dispatch,
    ErrorInfo,
    Finished,
    Parked,
    Plan,
    Retry,
    SagaStatus,
    Start,
    StepFailed,
    StepPlan,
    StepSucceeded,
    Wake,
    WakeAt,
    decide,
    new_status,
    next_wakeup,
)
from sagas.retry import RetryPolicy
from sagas.state import Action, HistoryKind, SagaState, StepState

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
FWD, COMP = Action.FORWARD, Action.COMPENSATE
NO_JITTER = RetryPolicy(max_attempts=3, initial=1.0, backoff=2.0, max_interval=60.0, jitter=0.0)
ONE_TRY = RetryPolicy(max_attempts=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def step(
    name: str,
    *,
    timeout: float = 10.0,
    retry: RetryPolicy = NO_JITTER,
    compensable: bool = True,
    compensation_timeout: float = 5.0,
    compensation_retry: RetryPolicy = NO_JITTER,
) -> StepPlan:
    return StepPlan(name, timeout, retry, compensable, compensation_timeout, compensation_retry)


def plan(*steps: StepPlan) -> Plan:
    return Plan(steps)


ABC = plan(step("a"), step("b"), step("c"))


def kinds(d: Decision) -> list[HistoryKind]:
    return [h.kind for h in d.history]


def states(s: SagaStatus) -> list[StepState]:
    return [x.state for x in s.steps]


def started(p: Plan, deadline: datetime | None = None) -> SagaStatus:
    d = decide(p, new_status("saga-1", p, deadline), Start(T0))
    assert d.commands == (Dispatch(0, 1, FWD, at(10.0 if p is ABC else p.steps[0].timeout)),)
    return d.status


def ok(i: int, attempt: int, seconds: float, action: Action = FWD, result: object = None):
    return StepSucceeded(i, attempt, action, at(seconds), result)


def fail(
    i: int, attempt: int, seconds: float, *, retryable: bool, action: Action = FWD, type_="Boom"
):
    return StepFailed(i, attempt, action, at(seconds), ErrorInfo(type_, "broke", retryable))


def run(p: Plan, status: SagaStatus, *events) -> tuple[SagaStatus, list[Decision]]:
    out = []
    for ev in events:
        d = decide(p, status, ev)
        out.append(d)
        status = d.status
    return status, out


# -- happy path ---------------------------------------------------------------------------------


def test_start_dispatches_first_step_and_records_it() -> None:
    d = decide(ABC, new_status("saga-1", ABC, None), Start(T0))
    assert d.status.state is SagaState.PENDING
    assert states(d.status) == [StepState.RUNNING, StepState.PENDING, StepState.PENDING]
    assert d.status.steps[0].attempt == 1
    assert d.status.steps[0].started_at == T0
    assert d.status.steps[0].deadline_at == at(10)
    assert kinds(d) == [HistoryKind.SAGA_STARTED, HistoryKind.STEP_DISPATCHED]
    assert d.commands == (Dispatch(0, 1, FWD, at(10)),)


def test_start_twice_is_a_no_op() -> None:
    s = started(ABC)
    d = decide(ABC, s, Start(at(1)))
    assert d.status == s and d.commands == () and d.history == ()


def test_all_steps_succeed_completes_the_saga_with_results() -> None:
    s = started(ABC)
    s, ds = run(ABC, s, ok(0, 1, 1, result={"r": 0}), ok(1, 1, 2, result=[1]), ok(2, 1, 3))
    assert ds[0].commands == (Dispatch(1, 1, FWD, at(11)),)
    assert ds[1].commands == (Dispatch(2, 1, FWD, at(12)),)
    assert ds[2].commands == (Finished(SagaState.COMPLETED),)
    assert kinds(ds[2]) == [HistoryKind.STEP_SUCCEEDED, HistoryKind.SAGA_COMPLETED]
    assert s.state is SagaState.COMPLETED
    assert [x.result for x in s.steps] == [{"r": 0}, [1], None]
    assert [x.finished_at for x in s.steps] == [at(1), at(2), at(3)]
    assert all(x.deadline_at is None for x in s.steps)
    assert next_wakeup(s) is None


# -- retries ------------------------------------------------------------------------------------


def test_retryable_failure_waits_the_policy_interval_then_retries() -> None:
    s = started(ABC)
    d = decide(ABC, s, fail(0, 1, 2, retryable=True))
    step0 = d.status.steps[0]
    assert step0.state is StepState.PENDING and step0.next_attempt_at == at(3)  # initial 1 s
    assert step0.deadline_at is None and step0.error == ErrorInfo("Boom", "broke", True)
    assert kinds(d) == [HistoryKind.STEP_FAILED, HistoryKind.RETRY_SCHEDULED]
    assert d.history[1].attempt == 2 and d.history[1].detail == {
        "at": at(3).isoformat(),
        "interval": 1.0,
    }
    assert d.commands == (WakeAt(at(3)),)
    assert next_wakeup(d.status) == at(3)

    early = decide(ABC, d.status, Wake(at(2.999)))
    assert early.status == d.status and early.commands == () and early.history == ()

    retry = decide(ABC, d.status, Wake(at(3)))
    assert retry.commands == (Dispatch(0, 2, FWD, at(13)),)
    assert retry.status.steps[0].state is StepState.RUNNING
    assert retry.status.steps[0].started_at == T0  # first start is kept


def test_retry_intervals_grow_by_backoff_up_to_max_interval() -> None:
    policy = RetryPolicy(max_attempts=6, initial=1.0, backoff=3.0, max_interval=10.0, jitter=0.0)
    p = plan(step("a", retry=policy))
    s, now, waits = started(p), 0.0, []
    for attempt in range(1, 6):
        d = decide(p, s, fail(0, attempt, now, retryable=True))
        waits.append((d.status.steps[0].next_attempt_at - at(now)).total_seconds())
        now = (d.status.steps[0].next_attempt_at - T0).total_seconds()
        s = decide(p, d.status, Wake(at(now))).status
        assert s.steps[0].attempt == attempt + 1
    assert waits == [1.0, 3.0, 9.0, 10.0, 10.0]


def test_jittered_intervals_stay_within_bounds_and_are_deterministic() -> None:
    policy = RetryPolicy(max_attempts=3, initial=4.0, backoff=2.0, max_interval=60.0, jitter=0.25)
    p = plan(step("a", retry=policy))
    first = decide(p, started(p), fail(0, 1, 0, retryable=True))
    again = decide(p, started(p), fail(0, 1, 0, retryable=True))
    wait = (first.status.steps[0].next_attempt_at - T0).total_seconds()
    assert 3.0 <= wait <= 5.0  # 4 s ± 25 %
    assert again.status == first.status  # jitter comes from the saga id, not randomness


def test_failure_of_the_last_attempt_compensates() -> None:
    p = plan(step("a"), step("b", retry=RetryPolicy(max_attempts=2, jitter=0.0)))
    s, _ = run(p, started(p), ok(0, 1, 1))
    s, ds = run(p, s, fail(1, 1, 2, retryable=True), Wake(at(3)), fail(1, 2, 4, retryable=True))
    assert ds[1].commands == (Dispatch(1, 2, FWD, at(13)),)
    last = ds[2]
    assert states(last.status) == [StepState.COMPENSATING, StepState.FAILED]
    assert last.commands == (Dispatch(0, 1, COMP, at(4 + 5)),)
    assert last.status.failure == ErrorInfo("Boom", "broke", True)


# -- permanent errors ---------------------------------------------------------------------------


def test_permanent_error_compensates_completed_steps_newest_first() -> None:
    s, _ = run(ABC, started(ABC), ok(0, 1, 1), ok(1, 1, 2))
    d = decide(ABC, s, fail(2, 1, 3, retryable=False))
    assert d.status.state is SagaState.COMPENSATING
    assert states(d.status) == [StepState.SUCCEEDED, StepState.COMPENSATING, StepState.FAILED]
    assert kinds(d) == [
        HistoryKind.STEP_FAILED,
        HistoryKind.COMPENSATION_STARTED,
        HistoryKind.COMPENSATION_DISPATCHED,
    ]
    assert d.commands == (Dispatch(1, 1, COMP, at(8)),)  # step c failed: nothing to undo

    s, ds = run(ABC, d.status, ok(1, 1, 4, COMP))
    assert ds[0].commands == (Dispatch(0, 1, COMP, at(9)),)
    s, ds = run(ABC, s, ok(0, 1, 5, COMP))
    assert s.state is SagaState.FAILED
    assert states(s) == [StepState.COMPENSATED, StepState.COMPENSATED, StepState.FAILED]
    assert ds[0].commands == (Finished(SagaState.FAILED),)
    assert ds[0].history[-1].kind is HistoryKind.SAGA_FAILED
    assert ds[0].history[-1].detail == {"type": "Boom", "message": "broke", "retryable": False}


def test_non_retryable_error_type_in_policy_is_permanent() -> None:
    policy = RetryPolicy(max_attempts=5, non_retryable=["OutOfStock"])
    p = plan(step("a", retry=policy))
    d = decide(p, started(p), fail(0, 1, 1, retryable=True, type_="OutOfStock"))
    assert d.status.steps[0].state is StepState.FAILED
    assert d.status.state is SagaState.FAILED  # the only step failed: nothing to compensate
    assert d.commands == (Finished(SagaState.FAILED),)


def test_first_step_failing_for_good_fails_the_saga_at_once() -> None:
    d = decide(ABC, started(ABC), fail(0, 1, 1, retryable=False))
    assert d.status.state is SagaState.FAILED
    assert states(d.status) == [StepState.FAILED, StepState.SKIPPED, StepState.SKIPPED]
    assert [c for c in d.commands if isinstance(c, Dispatch)] == []


def test_steps_without_compensation_are_skipped_when_undoing() -> None:
    p = plan(step("a"), step("b", compensable=False), step("c"))
    s, _ = run(p, started(p), ok(0, 1, 1), ok(1, 1, 2))
    d = decide(p, s, fail(2, 1, 3, retryable=False))
    assert d.commands == (Dispatch(0, 1, COMP, at(8)),)
    s = decide(p, d.status, ok(0, 1, 4, COMP)).status
    assert s.state is SagaState.FAILED
    assert states(s) == [StepState.COMPENSATED, StepState.SUCCEEDED, StepState.FAILED]


# -- timeouts -------------------------------------------------------------------------------------


def test_timeout_with_attempts_left_schedules_a_retry() -> None:
    s = started(ABC)
    assert next_wakeup(s) == at(10)
    d = decide(ABC, s, Wake(at(10)))
    assert kinds(d) == [HistoryKind.STEP_TIMED_OUT, HistoryKind.RETRY_SCHEDULED]
    step0 = d.status.steps[0]
    assert step0.state is StepState.PENDING and step0.error.type == TIMEOUT_ERROR
    assert step0.next_attempt_at == at(11) and d.commands == (WakeAt(at(11)),)
    # The late reply of the timed-out attempt is ignored; the retry's reply is accepted.
    late = decide(ABC, d.status, ok(0, 1, 10.5))
    assert late.status == d.status and kinds(late) == [HistoryKind.REPLY_IGNORED]
    retry = decide(ABC, d.status, Wake(at(11)))
    assert retry.commands == (Dispatch(0, 2, FWD, at(21)),)
    stale = decide(ABC, retry.status, ok(0, 1, 12))
    assert stale.history[0].detail["why"] == "stale attempt 1 (current 2)"
    assert decide(ABC, retry.status, ok(0, 2, 12)).status.steps[0].state is StepState.SUCCEEDED


def test_exhausted_timeout_is_timed_out_and_compensated_itself() -> None:
    p = plan(step("a"), step("b", retry=ONE_TRY))
    s, _ = run(p, started(p), ok(0, 1, 1))
    assert next_wakeup(s) == at(11)
    d = decide(p, s, Wake(at(11)))
    assert states(d.status) == [StepState.SUCCEEDED, StepState.COMPENSATING]
    assert d.status.steps[1].state is StepState.COMPENSATING  # outcome unknown: undo it
    assert d.status.steps[1].error.type == TIMEOUT_ERROR
    assert d.commands == (Dispatch(1, 1, COMP, at(16)),)
    s, _ = run(p, d.status, ok(1, 1, 12, COMP), ok(0, 1, 13, COMP))
    assert s.state is SagaState.FAILED
    assert states(s) == [StepState.COMPENSATED, StepState.COMPENSATED]


def test_a_step_whose_earlier_attempt_timed_out_is_compensated_even_if_the_last_failed() -> None:
    """Attempt 1 of b times out (it may still take effect), attempt 2 fails permanently: b's
    outcome is in doubt, so it ends timed_out and is compensated before a (issue 4, bug A)."""
    p = plan(step("a"), step("b"))
    s, _ = run(p, started(p), ok(0, 1, 1), Wake(at(11)))
    assert s.steps[1].in_doubt and s.steps[1].state is StepState.PENDING
    s, ds = run(p, s, Wake(at(12)), fail(1, 2, 13, retryable=False))
    assert s.steps[1].state is StepState.COMPENSATING and s.steps[1].error.type == "Boom"
    assert ds[-1].commands == (Dispatch(1, 1, COMP, at(18)),)
    s, _ = run(p, s, ok(1, 1, 14, COMP), ok(0, 1, 15, COMP))
    assert s.state is SagaState.FAILED
    assert states(s) == [StepState.COMPENSATED, StepState.COMPENSATED]


def test_a_step_that_only_ever_failed_is_not_compensated() -> None:
    p = plan(step("a"), step("b"))
    s, _ = run(p, started(p), ok(0, 1, 1), fail(1, 1, 2, retryable=True))
    s, _ = run(p, s, Wake(at(3)), fail(1, 2, 4, retryable=False))
    assert not s.steps[1].in_doubt
    assert states(s) == [StepState.COMPENSATING, StepState.FAILED]


def test_deadline_while_waiting_to_retry_a_step_that_once_timed_out_compensates_it() -> None:
    """Attempt 1 timed out, attempt 2 failed (retryable): the saga deadline passes during the
    retry wait. The last error is not a timeout, but attempt 1 is still in doubt."""
    p = plan(step("a"), step("b", retry=RetryPolicy(max_attempts=5, initial=50.0, jitter=0.0)))
    s, _ = run(p, started(p, deadline=at(100)), ok(0, 1, 1), Wake(at(11)))
    s, _ = run(p, s, Wake(at(61)), fail(1, 2, 62, retryable=True))
    assert s.steps[1].state is StepState.PENDING and s.steps[1].error.type == "Boom"
    d = decide(p, s, Wake(at(100)))
    assert d.status.steps[1].state is StepState.COMPENSATING
    assert d.commands[0] == Dispatch(1, 1, COMP, at(105))


def test_an_operator_retry_of_a_running_step_puts_its_old_attempt_in_doubt() -> None:
    p = plan(step("a"), step("b", retry=RetryPolicy(max_attempts=2, jitter=0.0)))
    s, _ = run(p, started(p), ok(0, 1, 1), Retry(at(2), "stuck"))
    assert s.steps[1].attempt == 2 and s.steps[1].in_doubt
    s, _ = run(p, s, fail(1, 2, 3, retryable=False))
    assert states(s)[1] is StepState.COMPENSATING  # attempt 1 may still have taken effect


def test_a_reply_after_the_timeout_was_handled_is_ignored() -> None:
    p = plan(step("a", retry=ONE_TRY))
    d = decide(p, started(p), Wake(at(10)))
    late = decide(p, d.status, ok(0, 1, 10.5))
    assert late.status == d.status and late.commands == ()
    assert kinds(late) == [HistoryKind.REPLY_IGNORED]


# -- compensation failures ------------------------------------------------------------------------


def compensating_a(comp_retry: RetryPolicy) -> tuple[Plan, SagaStatus]:
    p = plan(step("a", compensation_retry=comp_retry), step("b"))
    s, _ = run(p, started(p), ok(0, 1, 1), fail(1, 1, 2, retryable=False))
    assert s.steps[0].state is StepState.COMPENSATING and s.steps[0].compensation_attempt == 1
    return p, s


def test_failed_compensation_is_retried_then_parked() -> None:
    p, s = compensating_a(NO_JITTER)  # 3 attempts
    d = decide(p, s, fail(0, 1, 3, retryable=True, action=COMP))
    assert kinds(d) == [HistoryKind.COMPENSATION_FAILED, HistoryKind.RETRY_SCHEDULED]
    assert d.history[1].detail["action"] == "compensate"
    assert d.status.steps[0].state is StepState.COMPENSATING
    assert d.status.steps[0].next_attempt_at == at(4) and d.commands == (WakeAt(at(4)),)
    dup = decide(p, d.status, fail(0, 1, 3.5, retryable=True, action=COMP))
    assert dup.status == d.status and kinds(dup) == [HistoryKind.REPLY_IGNORED]

    s, ds = run(
        p,
        d.status,
        Wake(at(4)),
        fail(0, 2, 5, retryable=True, action=COMP),
        Wake(at(7)),  # second wait: 2 s
        fail(0, 3, 8, retryable=True, action=COMP),
    )
    assert ds[0].commands == (Dispatch(0, 2, COMP, at(9)),)
    assert ds[2].commands == (Dispatch(0, 3, COMP, at(12)),)
    parked = ds[3]
    assert parked.commands == (Parked(0, ErrorInfo("Boom", "broke", True)),)
    assert kinds(parked) == [HistoryKind.COMPENSATION_FAILED, HistoryKind.COMPENSATION_PARKED]
    assert s.state is SagaState.COMPENSATING  # stays for an operator
    assert s.steps[0].state is StepState.COMPENSATION_FAILED
    assert next_wakeup(s) is None
    # Nothing moves it by itself: time passing and cancels change nothing.
    for ev in (Wake(at(10_000)), Cancel(at(10_001), "x")):
        d = decide(p, s, ev)
        assert d.status == s and d.commands == ()


def test_compensation_timeout_is_retried_like_a_failure() -> None:
    p, s = compensating_a(NO_JITTER)
    assert next_wakeup(s) == at(2 + 5)
    d = decide(p, s, Wake(at(7)))
    assert kinds(d) == [HistoryKind.STEP_TIMED_OUT, HistoryKind.RETRY_SCHEDULED]
    assert d.history[0].detail == {"action": "compensate"}
    assert d.commands == (WakeAt(at(8)),)
    assert decide(p, d.status, Wake(at(8))).commands == (Dispatch(0, 2, COMP, at(13)),)


def test_non_retryable_compensation_failure_parks_at_once() -> None:
    p, s = compensating_a(NO_JITTER)
    d = decide(p, s, fail(0, 1, 3, retryable=False, action=COMP))
    assert d.status.steps[0].state is StepState.COMPENSATION_FAILED
    assert any(isinstance(c, Parked) for c in d.commands)


def test_a_parked_compensation_blocks_older_ones() -> None:
    p = plan(step("a"), step("b", compensation_retry=ONE_TRY), step("c"))
    s, _ = run(p, started(p), ok(0, 1, 1), ok(1, 1, 2), fail(2, 1, 3, retryable=False))
    d = decide(p, s, fail(1, 1, 4, retryable=True, action=COMP))
    assert states(d.status)[:2] == [StepState.SUCCEEDED, StepState.COMPENSATION_FAILED]
    assert not [c for c in d.commands if isinstance(c, Dispatch)]


# -- saga deadline and cancel ---------------------------------------------------------------------


def test_saga_deadline_compensates_the_in_flight_step_too() -> None:
    p = plan(step("a"), step("b", timeout=100.0))
    s, _ = run(p, started(p, deadline=at(30)), ok(0, 1, 1))
    assert next_wakeup(s) == at(30)  # before the step's own deadline at 101
    d = decide(p, s, Wake(at(30)))
    assert kinds(d)[:2] == [HistoryKind.DEADLINE_EXCEEDED, HistoryKind.COMPENSATION_STARTED]
    assert d.status.failure.type == DEADLINE_ERROR
    assert d.commands == (Dispatch(1, 1, COMP, at(35)),)  # b was in flight: outcome unknown
    assert d.status.steps[1].finished_at == at(30)


def test_saga_deadline_does_not_fire_while_compensating() -> None:
    p = plan(step("a"), step("b"))
    s, _ = run(p, started(p, deadline=at(30)), ok(0, 1, 1), fail(1, 1, 2, retryable=False))
    assert next_wakeup(s) == at(7)  # compensation deadline only
    d = decide(p, s, ok(0, 1, 40, COMP))
    assert d.status.state is SagaState.FAILED
    assert HistoryKind.DEADLINE_EXCEEDED not in kinds(d)


def test_deadline_during_a_retry_wait_settles_the_step() -> None:
    # a timed out and waits to retry: its outcome is unknown, so it is compensated.
    p = plan(step("a", retry=RetryPolicy(initial=50.0, max_interval=60.0, jitter=0.0)))
    s, _ = run(p, started(p, deadline=at(30)), Wake(at(10)))
    assert s.steps[0].state is StepState.PENDING and next_wakeup(s) == at(30)
    d = decide(p, s, Wake(at(30)))
    assert d.status.steps[0].state is StepState.COMPENSATING
    assert d.status.steps[0].next_attempt_at is None
    # b reported a failure and waits to retry: known failed, nothing to undo.
    s, _ = run(p, started(p, deadline=at(30)), fail(0, 1, 5, retryable=True))
    d = decide(p, s, Cancel(at(6), "changed my mind"))
    assert d.status.steps[0].state is StepState.FAILED
    assert d.status.state is SagaState.FAILED


def test_cancel_compensates_and_is_recorded() -> None:
    s, _ = run(ABC, started(ABC), ok(0, 1, 1))
    d = decide(ABC, s, Cancel(at(2), "customer asked"))
    assert kinds(d)[0] is HistoryKind.CANCEL_REQUESTED
    assert d.history[0].detail == {"reason": "customer asked"}
    # b was in flight: its outcome is unknown, so it is undone first, then a.
    assert states(d.status) == [StepState.SUCCEEDED, StepState.COMPENSATING, StepState.SKIPPED]
    assert d.commands == (Dispatch(1, 1, COMP, at(7)),)
    again = decide(ABC, d.status, Cancel(at(3), "twice"))
    assert again.status == d.status and again.history == () and again.commands == ()


def test_cancel_before_start_fails_without_dispatching() -> None:
    d = decide(ABC, new_status("saga-1", ABC, None), Cancel(T0, "never mind"))
    assert d.status.state is SagaState.FAILED
    assert states(d.status) == [StepState.SKIPPED] * 3
    assert d.commands == (Finished(SagaState.FAILED),)


def test_cancel_and_replies_after_completion_change_nothing() -> None:
    s, _ = run(ABC, started(ABC), ok(0, 1, 1), ok(1, 1, 2), ok(2, 1, 3))
    for ev in (Cancel(at(4)), Wake(at(400)), ok(2, 1, 5), fail(0, 1, 5, retryable=False)):
        d = decide(ABC, s, ev)
        assert d.status == s and d.commands == ()
    assert decide(ABC, s, ok(2, 1, 5)).history[0].detail["why"] == "saga already completed"


# -- stale and malformed replies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (ok(7, 1, 1), "unknown step"),
        (ok(-1, 1, 1), "unknown step"),
        (ok(1, 1, 1), "step is pending"),
        (ok(0, 2, 1), "stale attempt 2 (current 1)"),
        (ok(0, 1, 1, COMP), "step is running"),
    ],
)
def test_replies_that_do_not_answer_the_open_attempt_are_ignored(reply, why) -> None:
    s = started(ABC)
    d = decide(ABC, s, reply)
    assert d.status == s and d.commands == ()
    assert kinds(d) == [HistoryKind.REPLY_IGNORED]
    assert d.history[0].detail["why"] == why


# -- next_wakeup ------------------------------------------------------------------------------------


def test_next_wakeup_is_the_earliest_timer() -> None:
    p = plan(step("a", timeout=50.0))
    s = started(p, deadline=at(20))
    assert next_wakeup(s) == at(20)
    s = started(p, deadline=at(90))
    assert next_wakeup(s) == at(50)
    assert next_wakeup(new_status("x", p, None)) is None
    assert next_wakeup(new_status("x", p, at(5))) == at(5)
    done = decide(p, s, ok(0, 1, 1)).status
    assert done.state is SagaState.COMPLETED and next_wakeup(done) is None
