"""Wait steps in the pure core, and their definition checks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagas import Continue, DefinitionError, Saga
from sagas.machine import (
    AwaitSignal,
    Dispatch,
    Plan,
    Signal,
    Start,
    StepPlan,
    StepSucceeded,
    Wake,
    decide,
    new_status,
    why_no_signal,
)
from sagas.retry import RetryPolicy
from sagas.state import Action, HistoryKind, SagaState, StepState
from tests.unit.properties import BASE

ONCE = RetryPolicy(max_attempts=1)
PLAN = Plan(
    (
        StepPlan("reserve", 30.0, ONCE, True, 30.0, ONCE),
        StepPlan("approval", 3600.0, ONCE, False, 30.0, ONCE, wait=True),
        StepPlan("disburse", 30.0, ONCE, False, 30.0, ONCE),
    )
)


def started() -> Any:
    d = decide(PLAN, new_status("l", PLAN, None), Start(BASE))
    return decide(PLAN, d.status, StepSucceeded(0, 1, Action.FORWARD, BASE, {"r": 1}))


def test_reaching_a_wait_sends_nothing_and_holds_a_timer() -> None:
    d = started()
    assert [type(c) for c in d.commands] == [AwaitSignal]
    assert d.status.steps[1].state is StepState.RUNNING
    assert d.status.steps[1].deadline_at == BASE + timedelta(hours=1)
    wait = [h for h in d.history if h.kind is HistoryKind.WAITING_FOR_SIGNAL]
    assert wait and wait[0].detail == {"signal": "approval", "until": "2030-01-01T13:00:00+00:00"}


def test_a_signal_is_taken_only_while_the_saga_waits() -> None:
    fresh = decide(PLAN, new_status("l", PLAN, None), Start(BASE))
    assert why_no_signal(PLAN, fresh.status, 1) == "not yet"
    early = decide(PLAN, fresh.status, Signal(1, BASE, {"ok": True}, "s1"))
    assert not early.changed and early.status == fresh.status
    assert why_no_signal(PLAN, fresh.status, 0) == "no such wait"
    waiting = started()
    d = decide(PLAN, waiting.status, Signal(1, BASE, {"ok": True}, "s1"))
    assert d.status.steps[1].state is StepState.SUCCEEDED
    assert d.status.steps[1].result == {"ok": True}
    assert [c for c in d.commands if isinstance(c, Dispatch)] == [
        Dispatch(2, 1, Action.FORWARD, BASE + timedelta(seconds=30))
    ]
    again = decide(PLAN, d.status, Signal(1, BASE, {"ok": False}, "s2"))
    assert [h.kind for h in again.history] == [HistoryKind.SIGNAL_IGNORED]
    assert again.status == d.status


def test_a_timed_out_wait_fails_or_continues() -> None:
    waiting = started()
    failed = decide(PLAN, waiting.status, Wake(BASE + timedelta(hours=1)))
    assert failed.status.state is SagaState.COMPENSATING
    assert failed.status.steps[1].state is StepState.FAILED  # a wait takes no effect
    cont = Plan(
        (
            PLAN.steps[0],
            StepPlan("approval", 3600.0, ONCE, False, 30.0, ONCE, wait=True, wait_fails=False,
                     wait_default={"by": "auto"}),
            PLAN.steps[2],
        )
    )  # fmt: skip
    d = decide(cont, waiting.status, Wake(BASE + timedelta(hours=1)))
    assert d.status.steps[1].state is StepState.SUCCEEDED
    assert d.status.steps[1].result == {"by": "auto"}
    assert [h.detail for h in d.history if h.kind is HistoryKind.WAIT_TIMED_OUT] == [
        {"outcome": "continue"}
    ]


class P(BaseModel):
    ref: str = "r"


class A(BaseModel):
    by: str


def test_wait_definition_checks() -> None:
    s = Saga("wait_checks", payload=P, register=False)
    with pytest.raises(DefinitionError, match="wait 'approval': timeout is required"):
        s.wait_for("approval", model=A)
    with pytest.raises(DefinitionError, match="model must be a pydantic model class"):
        s.wait_for("approval", model=dict, timeout=60)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match='on_timeout must be "fail" or Continue'):
        s.wait_for("approval", model=A, timeout=60, on_timeout="skip")
    with pytest.raises(DefinitionError, match="on_timeout.default"):
        s.wait_for("approval", model=A, timeout=60, on_timeout=Continue({1, 2}))
    step = s.wait_for("approval", model=A, timeout=timedelta(days=2))
    assert step.is_wait and not step.compensable and step.timeout == 172800.0
    assert s.shape == [{"step": "approval", "compensable": False, "wait": True}]
    assert s.plan.steps[0].wait and s.plan.steps[0].wait_fails
