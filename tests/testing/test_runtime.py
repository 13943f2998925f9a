"""The kit's test runtime: the real engine in the test's thread, a fresh store, a fake clock.

Through the plugin's fixtures (``saga_runtime``, ``saga_clock``, ``saga_doubles``), the way a
user's test uses them.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from sagas import ConfigurationError, PermanentError, SagaState, StepState
from sagas.clock import FakeClock
from sagas.store import Store
from sagas.testing import (
    LocalRuntime,
    SagaStuck,
    StepDoubles,
    Transient,
    assert_compensated,
    assert_completed,
    assert_failed,
    local_runtime,
    ok,
)
from tests.testing import shop


def test_a_saga_runs_to_completion_without_time_passing(saga_runtime: LocalRuntime) -> None:
    began = saga_runtime.clock.now()
    saga_id = saga_runtime.start(shop.dinner, {"guest": "ada"})
    status = assert_completed(saga_id)
    assert [s.result for s in status.steps] == [{"table": "T-ada"}, {"charged": 4200}]
    assert saga_runtime.clock.now() == began  # nothing waited: no time was skipped


def test_a_permanent_failure_compensates_newest_first(saga_runtime: LocalRuntime) -> None:
    saga_id = saga_runtime.start(shop.dinner, {"guest": "bob", "card": "0000"})
    assert_failed(saga_id, error="CardDeclined")
    assert_compensated(saga_id, ["book_table"])


def test_assertions_fail_with_the_timeline(saga_runtime: LocalRuntime) -> None:
    saga_id = saga_runtime.start(shop.dinner, {"guest": "cy", "card": "0000"})
    with pytest.raises(AssertionError, match="is failed .*expected completed") as info:
        assert_completed(saga_id)
    assert "step_compensated" in str(info.value) and "book_table" in str(info.value)
    with pytest.raises(AssertionError, match=r"compensated \['book_table'\]"):
        assert_compensated(saga_id, ["charge_card", "book_table"])
    with pytest.raises(AssertionError, match="failed with CardDeclined, expected Boom"):
        assert_failed(saga_id, error="Boom")
    with pytest.raises(AssertionError, match="no saga 'nope'"):
        assert_completed("nope")


def test_retry_backoff_waits_for_the_fake_clock(
    saga_runtime: LocalRuntime, saga_doubles: StepDoubles
) -> None:
    double = saga_doubles.replace(shop.charge_card, [Transient, Transient, ok({"charged": 1})])
    saga_id = saga_runtime.start(shop.dinner, {"guest": "dee"})
    assert saga_runtime.store.get(saga_id)[1].steps[1].attempt == 1  # waiting for its backoff
    saga_runtime.advance(timedelta(seconds=0.5))  # less than the 2 s (±10%) first backoff
    assert double.call_count == 1
    saga_runtime.advance(timedelta(minutes=1))  # through both backoffs
    status = assert_completed(saga_id)
    assert double.call_count == 3 and status.steps[1].attempt == 3
    assert status.steps[1].result == {"charged": 1}


def test_retries_run_out_in_fake_time(
    saga_runtime: LocalRuntime, saga_doubles: StepDoubles
) -> None:
    saga_doubles.replace(shop.book_table, Transient)  # never succeeds
    began = saga_runtime.clock.now()
    saga_id = saga_runtime.start(shop.dinner, {"guest": "eve"})
    saga_runtime.wait(saga_id)
    status = assert_failed(saga_id, error="TransientError")
    assert status.steps[0].attempt == 3  # its policy's max_attempts
    # Two backoffs of 1 s and 2 s (±10%): seconds of fake time, nothing like a real wait.
    assert timedelta(seconds=2) < saga_runtime.clock.now() - began < timedelta(seconds=4)


def test_a_one_hour_deadline_takes_milliseconds(saga_runtime: LocalRuntime) -> None:
    began, wall = saga_runtime.clock.now(), time.perf_counter()
    saga_id = saga_runtime.start(shop.patient, {"guest": "fay"})
    saga_runtime.wait(saga_id)
    record = saga_runtime.store.get(saga_id)[0]
    assert_failed(saga_id, error="SagaDeadlineExceeded")
    assert "deadline_exceeded" in [h.kind for h in saga_runtime.store.get(saga_id)[2]]
    # Fired by the first sweeper pass at or after the deadline (a 5 s period).
    assert timedelta(hours=1) <= record.finished_at - began <= timedelta(hours=1, seconds=5)
    assert time.perf_counter() - wall < 3


def test_a_slow_step_times_out_and_its_late_reply_is_ignored(
    saga_runtime: LocalRuntime, saga_doubles: StepDoubles
) -> None:
    calls = []

    def slow_once(ctx: object) -> dict[str, str]:
        calls.append(ctx)
        if len(calls) == 1:
            saga_runtime.advance(timedelta(seconds=40))  # past the 30 s timeout
        return {"table": "late"}

    saga_doubles.replace(shop.book_table, slow_once)
    saga_id = saga_runtime.start(shop.dinner, {"guest": "gus"})
    saga_runtime.wait(saga_id)
    status = assert_completed(saga_id)
    history = [h.kind for h in saga_runtime.store.get(saga_id)[2]]
    assert "step_timed_out" in history and "reply_ignored" in history
    assert status.steps[0].attempt == 2 and len(calls) == 2


def test_a_lost_command_is_recovered_by_the_sweeper_on_its_period(
    saga_runtime: LocalRuntime,
) -> None:
    lost = []

    def lose_first_charge(message):  # type: ignore[no-untyped-def]
        if message.name == "saga.kit_dinner.charge_card" and not lost:
            lost.append(message)
            return []
        return [message]

    saga_runtime.broker.on_publish = lose_first_charge
    began = saga_runtime.clock.now()
    saga_id = saga_runtime.start(shop.dinner, {"guest": "hal"})
    assert saga_runtime.store.get(saga_id)[0].state is SagaState.PENDING
    saga_runtime.wait(saga_id)
    status = assert_completed(saga_id)
    assert lost and status.steps[1].attempt == 2
    history = saga_runtime.store.get(saga_id)[2]
    timed_out = next(h.at for h in history if h.kind == "step_timed_out")
    # Timed out by the first sweeper pass (every 5 s) at or after its 30 s deadline, then
    # retried after the policy's first backoff (2 s ±10%).
    assert (timed_out - began).total_seconds() == 30.0 and saga_runtime.sweeps >= 1
    assert 31.8 <= (saga_runtime.clock.now() - began).total_seconds() <= 32.2


def test_wait_reports_a_saga_that_cannot_finish(
    saga_runtime: LocalRuntime, saga_doubles: StepDoubles
) -> None:
    saga_runtime.broker.on_publish = lambda m: [] if "compensate" in m.name else [m]
    saga_doubles.replace(shop.charge_card, PermanentError("declined"))
    saga_id = saga_runtime.start(shop.dinner, {"guest": "ivy"})
    with pytest.raises(SagaStuck, match="did not reach"):
        saga_runtime.wait(saga_id, parked=False, horizon=timedelta(minutes=5))


def test_a_fake_clock_is_refused_on_postgresql() -> None:
    url = "postgresql+psycopg://user:secret@127.0.0.1:1/nowhere"  # never connected to
    with pytest.raises(ConfigurationError, match="fake clock .* SQLite") as info:
        Store(url, clock=FakeClock())
    assert "secret" not in str(info.value)
    Store(url).dispose()  # the real clock is fine (the database's is used)
    with pytest.raises(ConfigurationError, match="SQLite only"):
        with local_runtime(shop.app, database_url="postgresql://u@127.0.0.1:1/x"):
            pass


def test_each_runtime_starts_from_an_empty_store() -> None:
    with local_runtime(shop.app) as first:
        saga_id = first.start(shop.dinner, {"guest": "jo"})
        assert_completed(saga_id)
    with local_runtime(shop.app) as second:
        assert second.store.list() == []


def test_steps_doubled_are_restored(saga_doubles: StepDoubles) -> None:
    original = shop.dinner.step_def("charge_card").fn
    saga_doubles.replace(shop.charge_card, ok({}))
    assert shop.dinner.step_def("charge_card").fn is not original
    saga_doubles.restore()
    assert shop.dinner.step_def("charge_card").fn is original


def test_a_compensation_double_by_name(
    saga_runtime: LocalRuntime, saga_doubles: StepDoubles
) -> None:
    undo = saga_doubles.replace(
        "kit_dinner.book_table.compensate", [Transient, Transient, ok(None)]
    )
    saga_id = saga_runtime.start(shop.dinner, {"guest": "kim", "card": "0000"})
    saga_runtime.wait(saga_id)
    status = assert_compensated(saga_id, ["book_table"])
    assert undo.call_count == 3 and status.steps[0].compensation_attempt == 3
    assert undo.calls[0].result == {"table": "T-kim"}  # the compensation sees the step's result


def test_step_states_after_compensation(saga_runtime: LocalRuntime) -> None:
    saga_id = saga_runtime.start(shop.dinner, {"guest": "lee", "card": "0000"})
    steps = saga_runtime.store.get(saga_id)[1].steps
    assert [s.state for s in steps] == [StepState.COMPENSATED, StepState.FAILED]


def test_one_worker_for_every_queue_runs_the_steps_inline() -> None:
    with local_runtime(shop.app, consume=["tables", "payments"]) as rt:
        saga_id = rt.start(shop.dinner, {"guest": "max"})
        assert_completed(saga_id)
        assert [d.message.name for d in rt.broker.log] == ["saga.kit_dinner.book_table"]
    with local_runtime(shop.app) as rt:  # one worker per service: a message per step
        saga_id = rt.start(shop.dinner, {"guest": "max"})
        assert [d.message.name for d in rt.broker.log] == [
            "saga.kit_dinner.book_table",
            "saga.kit_dinner.charge_card",
        ]
