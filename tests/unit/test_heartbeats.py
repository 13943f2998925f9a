"""Heartbeats in the pure core: the deadline moves with each heartbeat, never past the hard
one; a silent attempt times out at its heartbeat deadline; a fenced attempt's heartbeat
changes nothing; the last details reach the next attempt."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from pydantic import BaseModel

from sagas import DefinitionError, Saga
from sagas.machine import (
    Dispatch,
    Heartbeat,
    Plan,
    SagaStatus,
    Start,
    StepFailed,
    StepPlan,
    Wake,
    decide,
    new_status,
)
from sagas.retry import RetryPolicy
from sagas.state import Action, HistoryKind, SagaState, StepState
from tests.unit.properties import BASE

RETRY = RetryPolicy(max_attempts=3, initial=1.0, backoff=1.0, jitter=0.0)


def plan(heartbeat: float | None = 10.0) -> Plan:
    step = StepPlan(
        name="render",
        timeout=300.0,
        retry=RETRY,
        compensable=True,
        compensation_timeout=30.0,
        compensation_retry=RETRY,
        heartbeat=heartbeat,
    )
    return Plan((step,))


def at(seconds: float):  # type: ignore[no-untyped-def]
    return BASE + timedelta(seconds=seconds)


def started(p: Plan) -> SagaStatus:
    return decide(p, new_status("s-1", p, None), Start(BASE)).status


def test_dispatch_keeps_the_hard_deadline_until_the_attempt_shows_life() -> None:
    p = plan()
    d = decide(p, new_status("s-1", p, None), Start(BASE))
    step = d.status.steps[0]
    assert step.deadline_at == at(300) and step.timeout_at == at(300)
    (dispatch,) = [c for c in d.commands if isinstance(c, Dispatch)]
    assert dispatch.deadline_at == at(300)  # what the step is told: its hard deadline
    # Still queued (no worker has it yet) long past one heartbeat interval: nothing is due.
    assert decide(p, d.status, Wake(at(60))).history == ()


def test_the_start_mark_starts_the_heartbeat_clock_and_keeps_the_earlier_progress() -> None:
    p, status = plan(), started(plan())
    status = decide(p, status, Heartbeat(0, 1, at(5), {"page": 3})).status
    timed_out = decide(p, status, Wake(at(15))).status
    retried = decide(p, timed_out, Wake(timed_out.steps[0].next_attempt_at or at(0))).status
    assert retried.steps[0].attempt == 2 and retried.steps[0].deadline_at == at(316)
    # Attempt 2 waits 40 s in the queue; its worker marks the start: the clock runs from there.
    d = decide(p, retried, Heartbeat(0, 2, at(56), None, started=True))
    assert d.changed and d.touched and d.history == ()
    step = d.status.steps[0]
    assert step.deadline_at == at(66) and step.heartbeat_at == at(56)
    assert step.progress == {"page": 3}  # what attempt 2 resumes from is not wiped
    d = decide(p, d.status, Wake(at(66)))
    (timed_out_2,) = [h for h in d.history if h.kind is HistoryKind.STEP_TIMED_OUT]
    assert timed_out_2.attempt == 2 and timed_out_2.detail["heartbeat"] == 10.0


def test_each_heartbeat_moves_the_deadline_up_to_the_hard_one() -> None:
    p, status = plan(), started(plan())
    for t in (8, 16, 24):
        d = decide(p, status, Heartbeat(0, 1, at(t), {"page": t}))
        assert d.changed and d.touched and d.history == () and d.commands == ()
        status = d.status
        assert status.steps[0].deadline_at == at(t + 10)
        assert status.steps[0].heartbeat_at == at(t) and status.steps[0].progress == {"page": t}
    assert decide(p, status, Wake(at(33))).history == ()  # alive: nothing is due
    late = decide(p, status, Heartbeat(0, 1, at(295), None)).status
    assert late.steps[0].deadline_at == at(300)  # capped: heartbeats never outlive the timeout
    d = decide(p, late, Wake(at(300)))
    (timed_out,) = [h for h in d.history if h.kind is HistoryKind.STEP_TIMED_OUT]
    assert timed_out.detail is None  # the hard timeout, not a lost heartbeat


def test_a_silent_attempt_times_out_at_its_heartbeat_deadline_and_the_next_gets_the_progress() -> (
    None
):
    p, status = plan(), started(plan())
    status = decide(p, status, Heartbeat(0, 1, at(5), {"page": 3})).status
    d = decide(p, status, Wake(at(15)))
    (timed_out,) = [h for h in d.history if h.kind is HistoryKind.STEP_TIMED_OUT]
    assert timed_out.detail == {"heartbeat": 10.0, "last_heartbeat": at(5).isoformat()}
    step = d.status.steps[0]
    assert step.state is StepState.PENDING and step.in_doubt and step.error is not None
    assert step.error.message == "no heartbeat for 10s"
    retried = decide(p, d.status, Wake(step.next_attempt_at or at(0)))
    (dispatch,) = [c for c in retried.commands if isinstance(c, Dispatch)]
    nxt = retried.status.steps[0]
    assert dispatch.attempt == 2 and nxt.progress == {"page": 3} and nxt.heartbeat_at is None
    # The dead attempt's heartbeat (it was only slow) is fenced: it changes nothing.
    fenced = decide(p, retried.status, Heartbeat(0, 1, at(20), {"page": 4}))
    assert not fenced.changed and fenced.status == retried.status


def test_a_heartbeat_after_compensation_began_is_fenced() -> None:
    p, status = plan(), started(plan())
    failed = decide(p, status, StepFailed(0, 1, Action.FORWARD, at(1), error=_permanent())).status
    assert failed.state is not SagaState.PENDING
    assert not decide(p, failed, Heartbeat(0, 1, at(2), None)).changed


def test_without_an_interval_a_heartbeat_only_keeps_progress() -> None:
    p = plan(heartbeat=None)
    status = started(p)
    assert status.steps[0].deadline_at == at(300) and status.steps[0].timeout_at is None
    d = decide(p, status, Heartbeat(0, 1, at(100), [1, 2]))
    assert d.touched and d.status.steps[0].deadline_at == at(300)
    assert d.status.steps[0].progress == [1, 2]


class Job(BaseModel):
    n: int = 1


def render(ctx: object) -> None:
    return None


@pytest.mark.parametrize(
    ("heartbeat", "message"),
    [
        (300, "heartbeat (300s) must be shorter than timeout (300s)"),
        (timedelta(minutes=10), "heartbeat (600s) must be shorter than timeout"),
        (0, "heartbeat must be positive and finite"),
        ("soon", "heartbeat must be seconds or a timedelta"),
    ],
)
def test_a_bad_heartbeat_is_refused_naming_the_step(heartbeat: object, message: str) -> None:
    saga = Saga("hb_bad", payload=Job, register=False)
    with pytest.raises(DefinitionError, match=re.escape("step 'render': " + message)):
        saga.step(queue="q", timeout=300, compensation=None, heartbeat=heartbeat)(  # type: ignore[arg-type]
            render
        )
    assert saga.steps == []  # nothing half-declared


def _permanent():  # type: ignore[no-untyped-def]
    from sagas.machine import ErrorInfo

    return ErrorInfo("Boom", "no", False)


def test_a_command_without_heartbeat_fields_is_what_the_previous_release_sent() -> None:
    """Rolling deploys: a step command whose new fields are unset carries none of them, so a
    worker of the release before heartbeats (which forbids unknown fields) still takes it."""
    from sagas.definition import StepDef
    from sagas.messages import StepCommand
    from sagas.transport import send_step

    sent: list[dict[str, object]] = []

    class App:
        def send_task(self, name: str, *args: object, **options: object) -> None:
            sent.append(options)

    command = StepCommand(
        saga_id="s-1",
        saga="hb",
        version=1,
        step="render",
        action=Action.FORWARD,
        attempt=1,
        correlation_id="c",
        payload={},
    )
    step = StepDef(saga="hb", name="render", index=0, queue="q", timeout=30.0, retry=RETRY)
    send_step(App(), step, command, "sagas", Job)  # type: ignore[arg-type]
    (body,) = sent[0]["args"]  # type: ignore[misc]
    assert set(body) == {
        "saga_id", "saga", "version", "step", "action", "attempt", "correlation_id", "payload",
        "results",
    }  # fmt: skip
    assert StepCommand.model_validate(body) == command
