"""Parallel groups in the pure core, rule by rule, and their definition checks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagas import DefinitionError, Park, Saga
from sagas.machine import (
    Cancel,
    Decision,
    Dispatch,
    ErrorInfo,
    Plan,
    Start,
    StepFailed,
    StepPlan,
    StepSucceeded,
    Wake,
    decide,
    new_status,
)
from sagas.retry import RetryPolicy
from sagas.state import Action, HistoryKind, SagaState
from tests.unit.properties import BASE

ONCE = RetryPolicy(max_attempts=1)
TWICE = RetryPolicy(max_attempts=2, initial=1.0, backoff=1.0, jitter=0.0)
DOWN = ErrorInfo("Down", "no rooms", False)


def plan(reverse: bool = False) -> Plan:
    def branch(name: str, retry: RetryPolicy = ONCE) -> StepPlan:
        return StepPlan(name, 30.0, retry, True, 30.0, ONCE, group="book", group_reverse=reverse)

    return Plan(
        (
            StepPlan("quote", 30.0, ONCE, True, 30.0, ONCE),
            branch("flight"),
            branch("hotel", TWICE),
            branch("car"),
            StepPlan("charge", 30.0, ONCE, True, 30.0, ONCE, pivot=True),
        )
    )


class Driver:
    def __init__(self, p: Plan) -> None:
        self.plan = p
        self.status = new_status("t", p, None)
        self.last = self.send(Start(BASE))

    def send(self, event: Any) -> Decision:
        self.last = decide(self.plan, self.status, event)
        self.status = self.last.status
        return self.last

    def ok(self, i: int, action: Action = Action.FORWARD) -> Decision:
        s = self.status.steps[i]
        n = s.attempt if action is Action.FORWARD else s.compensation_attempt
        return self.send(StepSucceeded(i, n, action, BASE, {"i": i}))

    def fail(self, i: int, error: ErrorInfo = DOWN) -> Decision:
        s = self.status.steps[i]
        return self.send(StepFailed(i, s.attempt, Action.FORWARD, BASE, error))

    def sent(self, action: Action) -> list[int]:
        return [
            c.step for c in self.last.commands if isinstance(c, Dispatch) and c.action is action
        ]

    def states(self) -> list[str]:
        return [s.state.value for s in self.status.steps]


def test_branches_start_together_and_join_when_all_succeeded() -> None:
    d = Driver(plan())
    d.ok(0)
    assert d.sent(Action.FORWARD) == [1, 2, 3]
    d.ok(2)
    d.ok(1)
    assert d.sent(Action.FORWARD) == []  # car still running
    d.ok(3)
    assert d.sent(Action.FORWARD) == [4]
    assert HistoryKind.GROUP_JOINED in [h.kind for h in d.last.history]
    d.ok(4)
    assert d.status.state is SagaState.COMPLETED


def test_a_failed_branch_lets_its_siblings_finish_then_compensates_in_parallel() -> None:
    d = Driver(plan())
    d.ok(0)
    d.fail(1)  # flight fails for good; hotel and car still run
    assert d.sent(Action.COMPENSATE) == [] and d.status.state is SagaState.PENDING
    failed = [h for h in d.last.history if h.kind is HistoryKind.GROUP_FAILED]
    assert failed[0].detail == {"group": "book", "waiting_for": ["hotel", "car"]}
    d.ok(3)  # car took effect
    assert d.sent(Action.COMPENSATE) == []
    d.fail(2, ErrorInfo("Busy", "retry later", True))  # not retried: its group failed
    assert d.states()[:4] == ["succeeded", "failed", "failed", "compensating"]
    assert d.sent(Action.COMPENSATE) == [3]  # only the branch that took effect
    d.ok(3, Action.COMPENSATE)
    assert d.sent(Action.COMPENSATE) == [0]  # then the steps before the group
    d.ok(0, Action.COMPENSATE)
    assert d.status.state is SagaState.FAILED
    assert d.status.failure == DOWN


def test_branches_that_took_effect_are_compensated_together_or_in_reverse() -> None:
    for reverse, first in ((False, [3, 2]), (True, [3])):
        d = Driver(plan(reverse))
        d.ok(0)
        d.ok(2)
        d.ok(3)
        d.fail(1)
        assert d.sent(Action.COMPENSATE) == first
        if reverse:
            d.ok(3, Action.COMPENSATE)
            assert d.sent(Action.COMPENSATE) == [2]
            d.ok(2, Action.COMPENSATE)
        else:
            d.ok(2, Action.COMPENSATE)
            assert d.sent(Action.COMPENSATE) == []  # car's compensation still runs
            d.ok(3, Action.COMPENSATE)
        assert d.sent(Action.COMPENSATE) == [0]


def test_a_sibling_timing_out_is_compensated_too() -> None:
    d = Driver(plan())
    d.ok(0)
    d.ok(2)
    d.fail(1)
    d.send(Wake(BASE + timedelta(seconds=31)))  # car never answered: it may have booked
    assert d.states()[1:4] == ["failed", "compensating", "compensating"]
    assert sorted(d.sent(Action.COMPENSATE)) == [2, 3]
    assert d.status.steps[3].in_doubt or d.last.history[0].kind is HistoryKind.STEP_TIMED_OUT


def test_a_cancel_during_the_group_compensates_the_running_branches() -> None:
    d = Driver(plan())
    d.ok(0)
    d.ok(1)
    d.send(Cancel(BASE, "changed plans"))
    assert d.states()[1:4] == ["compensating", "compensating", "compensating"]
    assert sorted(d.sent(Action.COMPENSATE)) == [1, 2, 3]


class P(BaseModel):
    ref: str = "r"


def _fn(ctx: Any) -> None:
    return None


def test_group_definition_checks() -> None:
    s = Saga("group_checks", payload=P, register=False)
    s.step(queue="q", compensation=_fn, name="quote")(_fn)
    with s.parallel("book"):
        s.step(queue="flights", compensation=_fn, name="flight")(_fn)
        s.step(queue="hotels", compensation=_fn, name="hotel")(_fn)
    with pytest.raises(DefinitionError, match="needs two or more steps, got \\['car'\\]"):
        with s.parallel("rent"):
            s.step(queue="cars", compensation=_fn, name="car")(_fn)
    with pytest.raises(DefinitionError, match="duplicate group name"):
        with s.parallel("book"):
            pass
    assert [st.group for st in s.steps] == [None, "book", "book", "rent"]
    assert s.plan.members(2) == range(1, 3)
    assert s.shape[1] == {"step": "flight", "compensable": True, "group": "book"}
    other = Saga("group_checks2", payload=P, register=False)
    with pytest.raises(DefinitionError, match="must be able to compensate"):
        with other.parallel("g"):
            other.step(queue="q", compensation=_fn, on_exhausted=Park(), name="a")(_fn)
    with pytest.raises(DefinitionError, match="groups do not nest"):
        with other.parallel("outer"):
            with other.parallel("inner"):
                pass
    with pytest.raises(DefinitionError, match='compensate must be "parallel" or "reverse"'):
        with other.parallel("x", compensate="sideways"):
            pass
