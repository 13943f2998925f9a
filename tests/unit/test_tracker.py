"""Example-based tests of the choreography tracker's rules, one rule per test, with exact times.

The tracker (``sagas.choreography.tracker``) is pure like the orchestrator's core: each function
takes a status and returns an ``Outcome``. The runner folds the events an outcome publishes back
into the status with ``event_seen`` (``runner._apply_events``); ``fold`` below does the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagas.choreography import Choreography, Handler
from sagas.choreography.definition import COMPENSATED_EVENT, HandlerSpec
from sagas.choreography.tracker import (
    NO_FAILURE_EVENT,
    Outcome,
    compensation_done,
    compensation_failed,
    event_seen,
    handler_done,
    handler_failed,
    may_compensate,
    new_choreo_status,
    timed_out,
)
from sagas.machine import ErrorInfo, HistoryRecord, SagaStatus, StepStatus
from sagas.retry import DEFAULT_RETRY, RetryPolicy
from sagas.state import HistoryKind, SagaState, StepState

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
NO_JITTER = RetryPolicy(max_attempts=3, initial=1.0, backoff=2.0, max_interval=60.0, jitter=0.0)
UNDO_TWICE = RetryPolicy(max_attempts=2, initial=5.0, backoff=2.0, max_interval=60.0, jitter=0.0)
BOOM = ErrorInfo("Boom", "broke", True)
DECLINED = ErrorInfo("Declined", "card declined", False)


class Order(BaseModel):
    order_id: str = "o-1"


def fn(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


ORDER = Choreography(
    "tracker_unit_order",
    payload=Order,
    starts_on="order.created",
    completes_on="order.fulfilled",
    handlers=[
        Handler(
            "reserve",
            service="inventory",
            on="order.created",
            emits="inventory.reserved",
            fails_with="inventory.failed",
            fn=fn,
            compensation=undo,
            compensate_on=("payment.failed", "shipment.failed"),
            compensation_retry=UNDO_TWICE,
        ),  # default forward retry: 3 attempts, 10 % jitter
        Handler(
            "charge",
            service="payment",
            on="inventory.reserved",
            emits="payment.processed",
            fails_with="payment.failed",
            fn=fn,
            compensation=undo,
            compensate_on=("shipment.failed",),
            timeout=20,
            retry=NO_JITTER,
            compensation_retry=UNDO_TWICE,
        ),
        Handler(
            "ship",
            service="shipping",
            on="payment.processed",
            emits="shipment.created",
            fails_with="shipment.failed",
            fn=fn,
            compensation=None,
            timeout=10,
            fail_on_timeout=True,
        ),
        Handler(
            "confirm",
            service="notification",
            on="shipment.created",
            emits="order.fulfilled",
            fn=fn,
            timeout=5,
        ),
    ],
)
RESERVE, CHARGE, SHIP, CONFIRM = ORDER.handlers


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def kinds(o: Outcome) -> list[HistoryKind]:
    return [h.kind for h in o.history]


def states(s: SagaStatus) -> list[StepState]:
    return [x.state for x in s.steps]


def fold(outcome: Outcome, when: datetime) -> Outcome:
    """What ``runner._apply_events`` does: apply each published event (but the internal
    ``sagas.compensated``) to the status, keeping the outcome's publish list."""
    status, history = outcome.status, list(outcome.history)
    for name in outcome.publish:
        if name == COMPENSATED_EVENT:
            continue
        seen = event_seen(ORDER, status, name, when)
        status, history = seen.status, [*history, *seen.history]
    return Outcome(
        status, tuple(history), outcome.publish, retry_in=outcome.retry_in, parked=outcome.parked
    )


def started() -> SagaStatus:
    return event_seen(ORDER, new_choreo_status(ORDER, "saga-1"), "order.created", T0).status


def succeed(status: SagaStatus, h: HandlerSpec, seconds: float) -> SagaStatus:
    done = handler_done(ORDER, status, h, at(seconds), result={"by": h.name})
    return fold(done, at(seconds)).status


def after_successes(n: int) -> SagaStatus:
    """The first ``n`` handlers succeeded at t=1, 2, ...; the next one is running."""
    s = started()
    for i, h in enumerate(ORDER.handlers[:n]):
        s = succeed(s, h, i + 1)
    return s


def compensating() -> SagaStatus:
    """reserve and charge succeeded, ship failed for good: both wait to be compensated."""
    s = after_successes(2)
    s = fold(handler_done(ORDER, s, SHIP, at(3), error=DECLINED), at(3)).status
    assert states(s)[:2] == [StepState.COMPENSATING, StepState.COMPENSATING]
    return s


# -- new_choreo_status and the start event ------------------------------------------------------


def test_new_status_is_started_with_every_handler_pending() -> None:
    s = new_choreo_status(ORDER, "saga-1")
    assert s.id == "saga-1" and s.state is SagaState.STARTED and s.failure is None
    assert s.steps == tuple(StepStatus(name) for name in ("reserve", "charge", "ship", "confirm"))


def test_start_event_runs_the_first_handler_and_makes_the_saga_pending() -> None:
    o = event_seen(ORDER, new_choreo_status(ORDER, "saga-1"), "order.created", T0)
    assert o.status.state is SagaState.PENDING
    assert states(o.status) == [StepState.RUNNING] + [StepState.PENDING] * 3
    first = o.status.steps[0]
    assert first.started_at == T0 and first.deadline_at == at(30)  # the default 30 s timeout
    assert o.history == (
        HistoryRecord(HistoryKind.EVENT_PUBLISHED, detail={"event": "order.created"}),
    )
    assert o.publish == () and o.changed


def test_another_event_before_the_start_event_moves_nothing() -> None:
    s = new_choreo_status(ORDER, "saga-1")
    o = event_seen(ORDER, s, "inventory.reserved", T0)
    assert o.status == s
    assert kinds(o) == [HistoryKind.EVENT_PUBLISHED]


def test_the_start_event_seen_again_only_adds_history() -> None:
    s = started()
    o = event_seen(ORDER, s, "order.created", at(1))
    assert o.status == s and kinds(o) == [HistoryKind.EVENT_PUBLISHED]


# -- handler_done ---------------------------------------------------------------------------------


def test_success_publishes_emits_and_the_next_handler_starts_when_it_is_seen() -> None:
    s = started()
    o = handler_done(ORDER, s, RESERVE, at(2), result={"sku": 1}, attempt=2)
    assert o.publish == ("inventory.reserved",)
    assert o.history == (HistoryRecord(HistoryKind.STEP_SUCCEEDED, "reserve", 2),)
    step = o.status.steps[0]
    assert step.state is StepState.SUCCEEDED and step.attempt == 2
    assert step.result == {"sku": 1} and step.finished_at == at(2) and step.deadline_at is None
    assert o.status.steps[1].state is StepState.PENDING  # not before the event is seen

    folded = fold(o, at(2))
    charge = folded.status.steps[1]
    assert charge.state is StepState.RUNNING
    assert charge.started_at == at(2) and charge.deadline_at == at(22)
    assert kinds(folded) == [HistoryKind.STEP_SUCCEEDED, HistoryKind.EVENT_PUBLISHED]
    assert folded.status.state is SagaState.PENDING


def test_the_completion_event_completes_the_saga() -> None:
    s = after_successes(3)
    o = fold(handler_done(ORDER, s, CONFIRM, at(4)), at(4))
    assert o.publish == ("order.fulfilled",)
    assert o.status.state is SagaState.COMPLETED
    assert states(o.status) == [StepState.SUCCEEDED] * 4
    assert kinds(o) == [
        HistoryKind.STEP_SUCCEEDED,
        HistoryKind.EVENT_PUBLISHED,
        HistoryKind.SAGA_COMPLETED,
    ]
    assert [x.result for x in o.status.steps] == [
        {"by": n} for n in ("reserve", "charge", "ship")
    ] + [None]


def test_failure_publishes_fails_with() -> None:
    s = after_successes(1)
    o = handler_done(ORDER, s, CHARGE, at(5), error=DECLINED, attempt=2)
    assert o.publish == ("payment.failed",)
    step = o.status.steps[1]
    assert step.state is StepState.FAILED and step.error == DECLINED and step.attempt == 2
    assert step.finished_at == at(5) and step.deadline_at is None
    assert o.history == (HistoryRecord(HistoryKind.STEP_FAILED, "charge", 2, DECLINED.as_json()),)
    assert o.status.state is SagaState.PENDING  # compensation begins when the event is seen


def test_a_failure_without_fails_with_parks_the_saga_for_an_operator_at_once() -> None:
    """Nothing would compensate the handlers before it, and nothing announces the failure:
    the saga stays pending, parked (the sweeper escalates a parked saga on its next pass)."""
    s = after_successes(3)
    done = handler_done(ORDER, s, CONFIRM, at(9), error=DECLINED)
    assert done.parked is True
    assert done.history[-1] == HistoryRecord(
        HistoryKind.STEP_PARKED, "confirm", 1, {"reason": NO_FAILURE_EVENT}
    )
    o = fold(done, at(9))
    assert o.publish == ()
    assert o.status.steps[3].state is StepState.FAILED
    assert o.status.state is SagaState.PENDING
    assert not timed_out(ORDER, o.status, at(10_000)).changed


# -- failure events: compensation begins ----------------------------------------------------------


def test_a_failure_event_compensates_succeeded_handlers_that_react_to_it() -> None:
    s = compensating()
    assert s.state is SagaState.COMPENSATING
    assert states(s) == [
        StepState.COMPENSATING,
        StepState.COMPENSATING,
        StepState.FAILED,
        StepState.SKIPPED,
    ]
    assert s.failure == ErrorInfo("Declined", "card declined", False)


def test_the_fold_of_a_failure_records_the_event_and_the_start_of_compensation() -> None:
    s = after_successes(2)
    o = fold(handler_done(ORDER, s, SHIP, at(3), error=BOOM, attempt=3), at(3))
    assert kinds(o) == [
        HistoryKind.STEP_FAILED,
        HistoryKind.EVENT_PUBLISHED,
        HistoryKind.COMPENSATION_STARTED,
    ]
    assert o.history[2].detail == {"event": "shipment.failed"}
    # The cause keeps the handler's error, recorded as permanent: the saga will not retry it.
    assert o.status.failure == ErrorInfo("Boom", "broke", False)


def test_only_handlers_whose_compensation_reacts_to_the_event_are_compensated() -> None:
    # charge's compensation reacts to shipment.failed only; payment.failed is its own failure.
    s = after_successes(1)
    o = fold(handler_done(ORDER, s, CHARGE, at(2), error=DECLINED), at(2))
    assert states(o.status) == [
        StepState.COMPENSATING,
        StepState.FAILED,
        StepState.SKIPPED,
        StepState.SKIPPED,
    ]
    assert o.status.state is SagaState.COMPENSATING


def test_a_running_handler_fails_and_pending_ones_are_skipped_when_a_failure_event_is_seen() -> (
    None
):
    s = after_successes(2)  # ship is running
    o = event_seen(ORDER, s, "shipment.failed", at(4))
    ship = o.status.steps[2]
    assert ship.state is StepState.FAILED and ship.deadline_at is None and ship.finished_at == at(4)
    assert ship.error == ErrorInfo("shipment.failed", "saga failed while waiting", False)
    assert o.status.steps[3].state is StepState.SKIPPED
    assert o.status.failure == ErrorInfo("shipment.failed", "shipment.failed published", False)
    assert states(o.status)[:2] == [StepState.COMPENSATING, StepState.COMPENSATING]


def test_nothing_to_compensate_fails_the_saga_at_once() -> None:
    s = started()
    o = fold(handler_done(ORDER, s, RESERVE, at(1), error=DECLINED), at(1))
    assert o.publish == ("inventory.failed",)
    assert o.status.state is SagaState.FAILED
    assert states(o.status) == [StepState.FAILED] + [StepState.SKIPPED] * 3
    assert kinds(o) == [
        HistoryKind.STEP_FAILED,
        HistoryKind.EVENT_PUBLISHED,
        HistoryKind.COMPENSATION_STARTED,
        HistoryKind.SAGA_FAILED,
    ]
    assert o.history[-1].detail == {
        "type": "Declined",
        "message": "card declined",
        "retryable": False,
    }


def test_a_second_failure_event_while_compensating_changes_nothing() -> None:
    s = compensating()
    o = event_seen(ORDER, s, "payment.failed", at(5))
    assert o.status == s and kinds(o) == [HistoryKind.EVENT_PUBLISHED]


@pytest.mark.parametrize("ending", ["completed", "failed"])
def test_events_after_the_end_only_record_that_they_were_published(ending: str) -> None:
    if ending == "completed":
        s = fold(handler_done(ORDER, after_successes(3), CONFIRM, at(4)), at(4)).status
    else:
        s = fold(handler_done(ORDER, started(), RESERVE, at(1), error=DECLINED), at(1)).status
    assert s.state.terminal
    for event in sorted(ORDER.events()):
        o = event_seen(ORDER, s, event, at(100))
        assert o.status == s, event
        assert o.history == (HistoryRecord(HistoryKind.EVENT_PUBLISHED, detail={"event": event}),)
        assert o.publish == ()


# -- handler_failed -------------------------------------------------------------------------------


def test_a_retryable_failure_with_attempts_left_schedules_a_retry_and_changes_nothing() -> None:
    s = after_successes(1)
    o = handler_failed(ORDER, s, CHARGE, at(3), BOOM, attempt=1)
    assert o.retry_in == 1.0 and o.status == s and o.publish == () and o.parked is None
    assert o.history == (
        HistoryRecord(HistoryKind.STEP_FAILED, "charge", 1, BOOM.as_json()),
        HistoryRecord(HistoryKind.RETRY_SCHEDULED, "charge", 2, {"interval": 1.0}),
    )
    second = handler_failed(ORDER, s, CHARGE, at(5), BOOM, attempt=2)
    assert second.retry_in == 2.0 and second.history[1].detail == {"interval": 2.0}


def test_retry_waits_are_jittered_deterministically_per_saga_and_handler() -> None:
    assert RESERVE.retry == DEFAULT_RETRY  # 1 s, ±10 %
    s = started()
    first = handler_failed(ORDER, s, RESERVE, at(1), BOOM, attempt=1).retry_in
    again = handler_failed(ORDER, s, RESERVE, at(7), BOOM, attempt=1).retry_in
    assert first is not None and 0.9 <= first <= 1.1
    assert first == again == DEFAULT_RETRY.interval(1, "saga-1:reserve")


@pytest.mark.parametrize(
    ("error", "attempt"),
    [(BOOM, 3), (BOOM, 4), (DECLINED, 1)],
    ids=["exhausted", "past-the-policy", "non-retryable"],
)
def test_a_failure_for_good_is_handler_done_with_the_error(error: ErrorInfo, attempt: int) -> None:
    s = after_successes(1)
    o = handler_failed(ORDER, s, CHARGE, at(3), error, attempt=attempt)
    assert o == handler_done(ORDER, s, CHARGE, at(3), error=error, attempt=attempt)
    assert o.retry_in is None and o.publish == ("payment.failed",)
    assert o.status.steps[1].state is StepState.FAILED and o.status.steps[1].attempt == attempt


# -- compensation_done, may_compensate ------------------------------------------------------------


def test_only_the_newest_compensating_handler_may_compensate() -> None:
    s = compensating()
    assert may_compensate(s, CHARGE)
    assert not may_compensate(s, RESERVE)  # charge, after it, still waits
    assert not may_compensate(s, SHIP) and not may_compensate(s, CONFIRM)  # not compensating


def test_handlers_that_are_not_compensating_may_not_compensate() -> None:
    s = after_successes(2)
    assert [may_compensate(s, h) for h in ORDER.handlers] == [False] * 4


def test_compensations_finish_newest_first_and_the_last_fails_the_saga() -> None:
    s = compensating()
    o = compensation_done(ORDER, s, CHARGE, at(10))
    assert o.publish == (COMPENSATED_EVENT,)  # wakes the next one
    assert o.history == (HistoryRecord(HistoryKind.STEP_COMPENSATED, "charge", 1),)
    charge = o.status.steps[1]
    assert charge.state is StepState.COMPENSATED and charge.finished_at == at(10)
    assert charge.deadline_at is None
    assert o.status.state is SagaState.COMPENSATING
    assert may_compensate(o.status, RESERVE)

    last = compensation_done(ORDER, o.status, RESERVE, at(11))
    assert last.status.state is SagaState.FAILED
    assert last.publish == ()
    assert kinds(last) == [HistoryKind.STEP_COMPENSATED, HistoryKind.SAGA_FAILED]
    assert last.history[1].detail == DECLINED.as_json()
    assert states(last.status) == [
        StepState.COMPENSATED,
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.SKIPPED,
    ]
    assert not any(may_compensate(last.status, h) for h in ORDER.handlers)


# -- compensation_failed --------------------------------------------------------------------------


def test_a_failed_compensation_with_attempts_left_is_retried() -> None:
    s = compensating()
    o = compensation_failed(ORDER, s, CHARGE, at(10), BOOM, attempt=1)
    assert o.retry_in == 5.0 and o.status == s and o.parked is None and o.publish == ()
    assert o.history == (
        HistoryRecord(HistoryKind.COMPENSATION_FAILED, "charge", 1, BOOM.as_json()),
    )


@pytest.mark.parametrize(
    ("error", "attempt"), [(BOOM, 2), (DECLINED, 1)], ids=["exhausted", "non-retryable"]
)
def test_an_exhausted_compensation_is_parked_for_an_operator(
    error: ErrorInfo, attempt: int
) -> None:
    s = compensating()
    o = compensation_failed(ORDER, s, CHARGE, at(20), error, attempt=attempt)
    assert o.parked is True and o.retry_in is None and o.publish == ()
    charge = o.status.steps[1]
    assert charge.state is StepState.COMPENSATION_FAILED and charge.error == error
    assert o.history == (
        HistoryRecord(HistoryKind.COMPENSATION_FAILED, "charge", attempt, error.as_json()),
        HistoryRecord(HistoryKind.COMPENSATION_PARKED, "charge", attempt, error.as_json()),
    )
    assert o.status.state is SagaState.COMPENSATING  # waits for an operator
    assert o.status.steps[0].state is StepState.COMPENSATING


def test_the_compensation_retry_policy_is_the_handlers_own() -> None:
    assert RESERVE.compensation_retry is UNDO_TWICE and RESERVE.retry is DEFAULT_RETRY
    s = compensation_done(ORDER, compensating(), CHARGE, at(10)).status
    assert compensation_failed(ORDER, s, RESERVE, at(11), BOOM, attempt=1).retry_in == 5.0
    assert compensation_failed(ORDER, s, RESERVE, at(16), BOOM, attempt=2).parked is True


# -- timed_out ------------------------------------------------------------------------------------


def test_nothing_overdue_changes_nothing() -> None:
    s = after_successes(1)  # charge running since t=1, deadline t=21
    o = timed_out(ORDER, s, at(20.999))
    assert not o.changed and o.status == s and o.history == () and o.publish == ()


def test_an_overdue_handler_without_fail_on_timeout_is_only_flagged_once() -> None:
    s = after_successes(1)
    o = timed_out(ORDER, s, at(21))  # exactly at the deadline
    assert o.changed and o.publish == ()
    assert o.history == (
        HistoryRecord(
            HistoryKind.SAGA_STUCK,
            "charge",
            None,
            {"waiting_for": "payment.processed", "since": at(1).isoformat()},
        ),
    )
    charge = o.status.steps[1]
    assert charge.state is StepState.RUNNING and charge.deadline_at is None  # still awaited
    assert o.status.state is SagaState.PENDING
    assert not timed_out(ORDER, o.status, at(1000)).changed
    # A late success still counts.
    assert succeed(o.status, CHARGE, 1001).steps[2].state is StepState.RUNNING


def test_an_overdue_handler_with_fail_on_timeout_publishes_its_failure_event() -> None:
    s = after_successes(2)  # ship running since t=2, deadline t=12
    o = timed_out(ORDER, s, at(13))
    assert o.changed and o.publish == ("shipment.failed",)
    assert kinds(o) == [HistoryKind.SAGA_STUCK]
    ship = o.status.steps[2]
    assert ship.state is StepState.TIMED_OUT and ship.deadline_at is None
    assert ship.finished_at == at(13)
    assert ship.error == ErrorInfo("StepTimeout", "no 'shipment.created' within 10.0s", False)

    folded = fold(o, at(13))
    assert folded.status.state is SagaState.COMPENSATING
    assert states(folded.status) == [
        StepState.COMPENSATING,
        StepState.COMPENSATING,
        StepState.TIMED_OUT,
        StepState.SKIPPED,
    ]
    assert folded.status.failure == ErrorInfo(
        "StepTimeout", "no 'shipment.created' within 10.0s", False
    )


def test_timed_out_on_a_finished_saga_changes_nothing() -> None:
    s = fold(handler_done(ORDER, after_successes(3), CONFIRM, at(4)), at(4)).status
    o = timed_out(ORDER, s, at(100_000))
    assert not o.changed and o.status == s


# -- every change is checked against the transition tables ----------------------------------------


def test_compensation_done_of_a_handler_that_is_not_compensating_is_refused() -> None:
    s = after_successes(2)  # reserve succeeded, not compensating
    with pytest.raises(AssertionError, match="illegal step transition succeeded -> compensated"):
        compensation_done(ORDER, s, RESERVE, at(5))


def test_an_exhausted_compensation_of_a_handler_that_is_not_compensating_is_refused() -> None:
    s = after_successes(2)
    with pytest.raises(AssertionError, match="succeeded -> compensation_failed"):
        compensation_failed(ORDER, s, RESERVE, at(5), DECLINED, attempt=1)


def test_a_handler_that_never_started_cannot_succeed() -> None:
    s = started()
    with pytest.raises(AssertionError, match="illegal step transition pending -> succeeded"):
        handler_done(ORDER, s, CHARGE, at(1))


def test_a_late_success_after_a_timeout_failure_is_refused() -> None:
    s = fold(timed_out(ORDER, after_successes(2), at(13)), at(13)).status
    with pytest.raises(AssertionError, match="timed_out -> succeeded"):
        handler_done(ORDER, s, SHIP, at(14))


def test_completing_a_saga_that_never_started_is_refused() -> None:
    s = new_choreo_status(ORDER, "saga-1")
    with pytest.raises(AssertionError, match="illegal saga transition started -> completed"):
        event_seen(ORDER, s, "order.fulfilled", T0)


# -- a parked compensation holds back older ones (as in the orchestrator) -------------------------


def parked_charge() -> SagaStatus:
    s = compensation_failed(ORDER, compensating(), CHARGE, at(10), DECLINED, attempt=1).status
    assert states(s)[:2] == [StepState.COMPENSATING, StepState.COMPENSATION_FAILED]
    return s


def test_a_parked_compensation_blocks_older_ones() -> None:
    assert not may_compensate(parked_charge(), RESERVE)


def test_a_saga_with_a_parked_compensation_does_not_end() -> None:
    o = compensation_done(ORDER, parked_charge(), RESERVE, at(11))
    assert o.status.state is SagaState.COMPENSATING
