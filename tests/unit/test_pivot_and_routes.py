"""Pivot steps and failure routes, rule by rule (``sagas.machine``), and their definition checks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagas import Compensate, DefinitionError, Park, RetryAfter, Saga
from sagas.machine import (
    Cancel,
    Decision,
    Dispatch,
    ErrorInfo,
    Parked,
    Plan,
    Retry,
    SagaStatus,
    Start,
    StepFailed,
    StepPlan,
    StepSucceeded,
    Wake,
    decide,
    is_parked,
    new_status,
    past_pivot,
    why_no_cancel,
)
from sagas.retry import RetryPolicy
from sagas.routes import Route
from sagas.state import Action, HistoryKind, SagaState
from tests.unit.properties import BASE

ONCE = RetryPolicy(max_attempts=1)
TWICE = RetryPolicy(max_attempts=2, initial=1.0, backoff=1.0, jitter=0.0)
BOOM = ErrorInfo("Boom", "it broke", True)
DECLINED = ErrorInfo("Declined", "card declined", False)


def step(
    name: str,
    *,
    pivot: bool = False,
    compensable: bool = True,
    route: Route | None = None,
    retry: RetryPolicy = ONCE,
) -> StepPlan:
    return StepPlan(name, 30.0, retry, compensable, 30.0, ONCE, pivot, route or Compensate())


# reserve -> charge (pivot) -> ship -> email
TRIP = Plan(
    (
        step("reserve"),
        step("charge", pivot=True),
        step("ship", compensable=False, retry=TWICE),
        step("email", compensable=False),
    )
)


class Driver:
    def __init__(self, plan: Plan, deadline: timedelta | None = None) -> None:
        self.plan, self.now = plan, BASE
        at = BASE + deadline if deadline else None
        self.status: SagaStatus = new_status("s", plan, at)
        self.last = self.send(Start(BASE))

    def send(self, event: Any) -> Decision:
        self.last = decide(self.plan, self.status, event)
        self.status = self.last.status
        return self.last

    def ok(self, index: int) -> Decision:
        s = self.status.steps[index]
        return self.send(StepSucceeded(index, s.attempt, Action.FORWARD, self.now, {"i": index}))

    def fail(self, index: int, error: ErrorInfo = BOOM) -> Decision:
        s = self.status.steps[index]
        return self.send(StepFailed(index, s.attempt, Action.FORWARD, self.now, error))

    def wake(self, seconds: float) -> Decision:
        self.now += timedelta(seconds=seconds)
        return self.send(Wake(self.now))

    def kinds(self) -> list[HistoryKind]:
        return [h.kind for h in self.last.history]

    def states(self) -> list[str]:
        return [s.state.value for s in self.status.steps]


def compensations(d: Decision) -> list[int]:
    return [c.step for c in d.commands if isinstance(c, Dispatch) and c.action is Action.COMPENSATE]


def test_a_failure_before_the_pivot_compensates_as_before() -> None:
    d = Driver(TRIP)
    d.ok(0)
    d.fail(1, DECLINED)  # the pivot itself fails: nothing has passed the point of no return
    assert compensations(d.last) == [0]
    assert d.status.state is SagaState.COMPENSATING
    assert not past_pivot(TRIP, d.status)


def test_past_the_pivot_a_failing_step_is_retried_then_parked_never_compensated() -> None:
    d = Driver(TRIP)
    d.ok(0)
    d.ok(1)
    assert HistoryKind.PIVOT_PASSED in d.kinds() and past_pivot(TRIP, d.status)
    d.fail(2)  # retried per its policy first
    assert HistoryKind.RETRY_SCHEDULED in d.kinds()
    d.wake(5)
    d.fail(2, DECLINED)
    assert d.states() == ["succeeded", "succeeded", "parked", "pending"]
    assert d.status.state is SagaState.PENDING and is_parked(d.status)
    parked = [c for c in d.last.commands if isinstance(c, Parked)]
    assert parked == [Parked(2, DECLINED, Action.FORWARD)]
    history = d.last.history[-1]
    assert history.kind is HistoryKind.STEP_PARKED
    assert history.detail == {"reason": "retries exhausted past the pivot", **DECLINED.as_json()}
    assert compensations(d.last) == []

    # An operator re-runs it; the saga goes on to the end.
    d.send(Retry(d.now, "fixed the address"))
    assert d.states()[2] == "running" and d.status.steps[2].attempt == 3
    d.ok(2)
    d.ok(3)
    assert d.status.state is SagaState.COMPLETED


def test_past_the_pivot_cancel_is_refused_and_a_deadline_only_noted() -> None:
    d = Driver(TRIP, deadline=timedelta(seconds=60))
    d.ok(0)
    d.ok(1)
    assert why_no_cancel(TRIP, d.status) == (
        "saga passed its pivot step 'charge' and only goes forward"
    )
    before = d.status
    assert not d.send(Cancel(d.now, "customer asked")).changed and d.status == before
    d.wake(61)  # the deadline passes: noted once, and the saga goes on
    noted = [h for h in d.last.history if h.kind is HistoryKind.DEADLINE_EXCEEDED]
    assert len(noted) == 1 and noted[0].detail is not None and noted[0].detail["past_pivot"]
    assert d.status.state is SagaState.PENDING and d.status.deadline_at is None
    d.wake(1)
    assert HistoryKind.DEADLINE_EXCEEDED not in d.kinds()
    d.ok(2)
    d.ok(3)
    assert d.status.state is SagaState.COMPLETED


def test_park_before_the_pivot_then_the_operator_cancels() -> None:
    plan = Plan((step("reserve"), step("charge", route=Park("call the bank"))))
    d = Driver(plan)
    d.ok(0)
    d.fail(1)
    assert d.states() == ["succeeded", "parked"] and d.status.state is SagaState.PENDING
    assert d.last.history[-1].detail == {"reason": "call the bank", **BOOM.as_json()}
    d.send(Cancel(d.now, "bank says no"))
    assert d.states() == ["compensating", "failed"]  # reported failures: no effect to undo
    assert compensations(d.last) == [0]


def test_a_parked_step_whose_attempt_timed_out_is_compensated_on_cancel() -> None:
    plan = Plan((step("reserve", route=Park()),))
    d = Driver(plan)
    d.wake(31)  # the only attempt times out: its effect is unknown
    assert d.states() == ["parked"] and d.status.steps[0].in_doubt
    d.send(Cancel(d.now, "give up"))
    assert compensations(d.last) == [0]


def test_retry_after_runs_more_rounds_then_compensates() -> None:
    plan = Plan((step("reserve"), step("ship", retry=TWICE, route=RetryAfter(3600, times=2))))
    d = Driver(plan)
    d.ok(0)
    scheduled = []
    for attempt in range(1, 7):
        assert d.status.steps[1].attempt == attempt
        d.fail(1)
        if attempt < 6:
            retry = d.last.history[-1]
            assert retry.kind is HistoryKind.RETRY_SCHEDULED
            assert retry.detail is not None
            scheduled.append((retry.detail.get("route"), retry.detail["interval"]))
            d.wake(retry.detail["interval"])
    assert scheduled == [
        (None, 1.0),
        ("retry_after", 3600.0),
        (None, 1.0),
        ("retry_after", 3600.0),
        (None, 1.0),
    ]
    assert compensations(d.last) == [0]


def test_retry_after_does_not_retry_a_permanent_error() -> None:
    plan = Plan((step("reserve"), step("ship", route=RetryAfter(60))))
    d = Driver(plan)
    d.ok(0)
    d.fail(1, DECLINED)
    assert compensations(d.last) == [0]


class P(BaseModel):
    ref: str = "r"


def _fn(ctx: Any) -> None:
    return None


def test_definition_checks() -> None:
    s = Saga("pivot_checks", payload=P, register=False)
    s.step(queue="q", compensation=_fn)(_fn)
    s.step(queue="q", compensation=_fn, pivot=True, name="charge")(_fn)
    s.step(queue="q", name="ship")(_fn)  # no compensation needed past the pivot
    with pytest.raises(DefinitionError, match="'email': comes after the pivot, so it is never"):
        s.step(queue="q", compensation=_fn, name="email")(_fn)
    with pytest.raises(DefinitionError, match="cannot route to Compensate"):
        s.step(queue="q", compensation=None, on_exhausted=Compensate(), name="email")(_fn)
    with pytest.raises(DefinitionError, match="a saga has one pivot \\('charge' is one\\)"):
        s.step(queue="q", compensation=None, pivot=True, name="again")(_fn)
    with pytest.raises(DefinitionError, match="on_exhausted must be"):
        s.step(queue="q", compensation=None, on_exhausted="park", name="bad")(_fn)  # type: ignore[arg-type]
    s.step(queue="q", on_exhausted=Park("ops"), name="email")(_fn)
    assert [st.pivot for st in s.steps] == [False, True, False, False]
    assert s.plan.pivot == 1 and s.plan.steps[2].on_exhausted == Compensate()
    assert s.shape[1] == {"step": "charge", "compensable": True, "pivot": True}
    assert s.shape[3] == {"step": "email", "compensable": False, "on_exhausted": "park"}
    with pytest.raises(DefinitionError, match="delay must be positive"):
        RetryAfter(0)
    with pytest.raises(DefinitionError, match="times must be an int >= 1"):
        RetryAfter(timedelta(minutes=5), times=0)
    assert RetryAfter(timedelta(minutes=5)).seconds == 300.0
