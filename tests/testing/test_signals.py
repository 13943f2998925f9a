"""Waits for signals, end to end in the test runtime (the real coordinator, store and sweeper on
a fake clock): a signal after the wait began, one sent before the saga reaches it, the wait's
timeout (failing or continuing), repeated and refused signals, and ``saga signal``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner
from pydantic import BaseModel

import sagas
from sagas import AwaitOperator, Continue, PayloadInvalid, Saga, SignalUnknown, StepContext, report
from sagas.cli import main
from sagas.state import HistoryKind, SagaState
from sagas.testing import assert_compensated, assert_completed
from sagas.testing.runtime import LocalRuntime, local_runtime


class Loan(BaseModel):
    ref: str


class Approval(BaseModel):
    by: str
    limit_cents: int = 0


RAN: list[str] = []


def _step(name: str) -> Any:
    def run(ctx: StepContext[Loan]) -> dict[str, Any]:
        RAN.append(f"{ctx.payload.ref}:{name}")
        return {"approved_by": ctx.results.get("approval", {}).get("by")}

    run.__name__ = name
    return run


def _undo(ctx: StepContext[Loan]) -> None:
    RAN.append(f"{ctx.payload.ref}:undo_reserve")


loan = Saga("kit_loan", payload=Loan)
loan.step(queue="loans", compensation=_undo)(_step("reserve"))
loan.wait_for("approval", model=Approval, timeout=timedelta(days=2))
loan.step(queue="loans", compensation=None)(_step("disburse"))

optional = Saga("kit_loan_optional", payload=Loan)
optional.step(queue="loans", compensation=None)(_step("reserve"))
optional.wait_for(
    "approval", model=Approval, timeout=timedelta(hours=1), on_timeout=Continue({"by": "auto"})
)
optional.step(queue="loans", compensation=None)(_step("disburse"))


@pytest.fixture
def rt() -> Iterator[LocalRuntime]:
    RAN.clear()
    with local_runtime(Celery("kit-signals", set_as_current=False), consume=["loans"]) as runtime:
        yield runtime


def sid() -> str:
    return f"loan-{uuid.uuid4().hex[:10]}"


def kinds(saga_id: str) -> list[str]:
    return [h.kind for h in sagas.get(saga_id).history]


def test_a_signal_ends_the_wait_and_its_data_is_the_steps_result(rt: LocalRuntime) -> None:
    saga_id = rt.start(loan, {"ref": "a"}, saga_id=sid())
    shown = report.timeline(*rt.store.get(saga_id)).splitlines()
    assert shown[2].startswith("waiting for signal 'approval' since 2030-01-01 00:00:00, until ")
    info = sagas.get(saga_id)
    assert [s.state.value for s in info.steps] == ["succeeded", "running", "pending"]
    assert HistoryKind.WAITING_FOR_SIGNAL in kinds(saga_id)
    sent = sagas.signal(saga_id, "approval", {"by": "ops"}, signal_id="t-1")
    assert sent.outcome == "delivered"
    rt.run()
    done = assert_completed(saga_id)
    assert done.steps[1].result == {"by": "ops", "limit_cents": 0}
    assert done.steps[2].result == {"approved_by": "ops"}
    again = sagas.signal(saga_id, "approval", {"by": "ops"}, signal_id="t-1")
    assert again.outcome == "duplicate"
    late = sagas.signal(saga_id, "approval", {"by": "someone else"})
    assert late.outcome == "ignored"
    assert kinds(saga_id).count(HistoryKind.SIGNAL_RECEIVED) == 1


def test_a_signal_sent_before_the_wait_is_kept_for_it(rt: LocalRuntime) -> None:
    saga_id = rt.start(loan, {"ref": "b"}, saga_id=sid(), run=False)  # reserve not run yet
    sent = sagas.signal(saga_id, "approval", {"by": "early bird"})
    assert sent.outcome == "kept"
    rt.run()  # reserve runs, the wait begins and takes the kept signal at once
    done = assert_completed(saga_id)
    assert done.steps[1].result["by"] == "early bird"
    assert RAN == ["b:reserve", "b:disburse"]


def test_no_signal_before_the_timeout_compensates(rt: LocalRuntime) -> None:
    saga_id = rt.start(loan, {"ref": "c"}, saga_id=sid())
    rt.advance(timedelta(days=1))
    assert sagas.get(saga_id).state is SagaState.PENDING  # still waiting, no worker held
    rt.advance(timedelta(days=1, seconds=1))
    assert_compensated(saga_id, ["reserve"])
    assert HistoryKind.WAIT_TIMED_OUT in kinds(saga_id)
    assert RAN == ["c:reserve", "c:undo_reserve"]


def test_a_wait_may_continue_with_a_default_on_timeout(rt: LocalRuntime) -> None:
    saga_id = rt.start(optional, {"ref": "d"}, saga_id=sid())
    rt.wait(saga_id)  # skips the hour
    done = assert_completed(saga_id)
    assert done.steps[1].result == {"by": "auto"}
    assert done.steps[2].result == {"approved_by": "auto"}


def test_bad_signals_are_refused_and_write_nothing(rt: LocalRuntime) -> None:
    saga_id = rt.start(loan, {"ref": "e"}, saga_id=sid())
    with pytest.raises(SignalUnknown) as unknown:
        sagas.signal(saga_id, "approved", {"by": "x"})
    assert unknown.value.field == "name"
    assert "waits for no signal 'approved' (it waits for: ['approval'])" in str(unknown.value)
    with pytest.raises(PayloadInvalid) as invalid:
        sagas.signal(saga_id, "approval", {"by": "x", "limit_cents": "lots"})
    assert invalid.value.field == "data.limit_cents"
    assert str(invalid.value).startswith("signal 'approval' for saga 'kit_loan'")
    with pytest.raises(sagas.SagaNotFound):
        sagas.signal("no-such-loan", "approval", {"by": "x"})
    assert rt.store.signals(saga_id) == []
    assert sagas.get(saga_id).steps[1].state.value == "running"


def test_saga_signal_from_the_command_line(rt: LocalRuntime, monkeypatch: Any) -> None:
    saga_id = rt.start(loan, {"ref": "f"}, saga_id=sid())
    monkeypatch.setenv("SAGAS_CELERY_APP", "tests.testing.test_signals:APP")
    monkeypatch.setattr("tests.testing.test_signals.APP", rt.app, raising=False)
    runner = CliRunner()
    bad = runner.invoke(main, ["signal", saga_id, "approval", "--data", "{not json"])
    assert bad.exit_code == 1 and "--data is not JSON" in bad.output
    ok = runner.invoke(
        main, ["signal", saga_id, "approval", "--data", '{"by": "cli"}', "--signal-id", "c-1"]
    )
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == f"signal approval for saga {saga_id}: delivered (id c-1)"
    rt.run()
    assert assert_completed(saga_id).steps[1].result["by"] == "cli"


def test_saga_demo_example_loan_runs_two_days_at_once() -> None:
    result = CliRunner().invoke(main, ["demo", "--example", "loan"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "officer_decision sent before the wait: kept" in out
    assert "officer_decision one day later: delivered" in out
    states = [line.split()[2] for line in out.splitlines() if line.startswith("loan-")]
    assert states[-3:] == ["completed", "completed", "failed"]
    assert "wait_timed_out" in out and "pivot_passed" in out
    assert "saga_escalated" not in out  # a saga waiting for its signal is not stuck


def test_a_send_cut_short_is_finished_by_the_next_send_or_the_sweeper(rt: LocalRuntime) -> None:
    # What a sender that died right after keeping its signal leaves: a kept signal, not taken.
    first = rt.start(loan, {"ref": "g"}, saga_id=sid())
    assert rt.store.add_signal(first, "approval", "cut-1", {"by": "gone", "limit_cents": 0})
    assert sagas.get(first).steps[1].state.value == "running"
    again = sagas.signal(
        first, "approval", {"by": "ignored, the kept data wins"}, signal_id="cut-1"
    )
    assert again.outcome == "delivered"
    rt.run()
    assert assert_completed(first).steps[1].result["by"] == "gone"

    second = rt.start(loan, {"ref": "h"}, saga_id=sid())
    assert rt.store.add_signal(second, "approval", "cut-2", {"by": "swept", "limit_cents": 0})
    rt.advance(timedelta(seconds=rt.settings.outbox_grace + 2 * rt.settings.sweep_interval))
    rt.run()
    assert assert_completed(second).steps[1].result["by"] == "swept"
    assert [s["outcome"] for s in rt.store.signals(second)] == ["delivered"]


# A step whose failure route waits for an operator's go-ahead (``AwaitOperator``).
FLAKY = {"fail": True}


def _ship(ctx: StepContext[Loan]) -> dict[str, Any]:
    RAN.append(f"{ctx.payload.ref}:ship#{ctx.attempt}")
    if FLAKY["fail"]:
        raise sagas.TransientError("carrier down")
    return {"shipped": ctx.attempt}


guarded = Saga("kit_guarded", payload=Loan)
guarded.step(queue="loans", compensation=_undo)(_step("reserve"))
guarded.step(
    queue="loans",
    compensation=None,
    retry=sagas.RetryPolicy(max_attempts=2, initial=1.0, backoff=1.0, jitter=0.0),
    on_exhausted=AwaitOperator(timedelta(hours=1)),
    name="ship",
)(_ship)


def test_await_operator_parks_until_a_go_ahead_or_its_timeout(rt: LocalRuntime) -> None:
    FLAKY["fail"] = True
    first = rt.start(guarded, {"ref": "p"}, saga_id=sid())
    rt.advance(timedelta(seconds=5))  # the second attempt fails too: parked, waiting
    info = sagas.get(first)
    assert (info.state, info.steps[1].state.value, info.parked) == (
        SagaState.PENDING,
        "parked",
        True,
    )
    parked = [h for h in info.history if h.kind == HistoryKind.STEP_PARKED]
    assert parked[0].detail["reason"] == "waiting for signal 'ship' (an operator's go-ahead)"
    FLAKY["fail"] = False
    sent = sagas.signal(first, "ship", {"ticket": "OPS-7", "note": "carrier is back"})
    assert sent.outcome == "delivered"
    rt.run()
    done = assert_completed(first)
    assert done.steps[1].attempt == 3 and not sagas.get(first).parked

    FLAKY["fail"] = True
    second = rt.start(guarded, {"ref": "q"}, saga_id=sid())
    rt.wait(second, parked=False)  # nobody answers: an hour later the saga compensates
    assert_compensated(second, ["reserve"])
    assert [
        h.detail for h in sagas.get(second).history if h.kind == HistoryKind.WAIT_TIMED_OUT
    ] == [{"outcome": "fail"}]


def test_saga_demo_example_trip_books_in_parallel_and_keeps_the_pivot() -> None:
    result = CliRunner().invoke(main, ["demo", "--example", "trip"])
    assert result.exit_code == 0, result.output
    out = result.output
    states = [line.split()[2] for line in out.splitlines() if line.startswith("trip-")]
    assert states[-3:] == ["completed", "failed", "pending"]
    assert "group_joined" in out and "no hotel available" in out
    assert "step_compensated         book_car" in out and "step_parked      send_itinerary" in out
