"""Sagas through real ``celery worker`` processes (Procfile topology), PostgreSQL and a broker.

Every test asserts on the saga store (state, steps, history) and on ``probe_effect``, the rows
the probe's steps and compensations write when they actually run. Every test runs once per
broker (Redis, then RabbitMQ) against one set of workers per broker; ``-k redis`` or
``-k rabbitmq`` picks one.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from sagas import Action, SagaConflict, SagaState, StepState, coordinator, start_saga
from sagas.messages import StepReply
from sagas.state import HistoryKind
from sagas.store import HistoryEntry
from tests.integration.conftest import Cluster, Effect, poll
from tests.integration.probe import FAST_RETRY, SAGA_DEADLINE, STEP_QUEUES, STEP_TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.workers]

STEPS = tuple(STEP_QUEUES)  # s1..s4
TERMINAL = (SagaState.COMPLETED, SagaState.FAILED)
# Much slower than the step timeout plus one sweeper period (0.5 s), so no late reply can reach
# the coordinator before the timer fires (a reply that does is accepted: the outcome is known).
SLOW = STEP_TIMEOUT + 2.5


def order_payload(order_id: str, **changes: Any) -> dict[str, Any]:
    """The example saga's payload, as ``workers/demo.py`` sends it."""
    return {
        "order_id": order_id,
        "email": "ada@example.com",
        "card_number": "4242424242424242",
        "items": [{"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250}],
        "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
        **changes,
    }


def runs(effects: list[Effect]) -> list[tuple[str, str, int]]:
    return [(e.step, e.action, e.attempt) for e in effects]


def assert_in_order(effects: list[Effect]) -> None:
    """Each effect happened strictly after the previous one (ids and database clock)."""
    for before, after in zip(effects, effects[1:], strict=False):
        assert before.id < after.id
        assert before.at < after.at, (before, after)


def kinds(history: list[HistoryEntry], kind: HistoryKind) -> list[HistoryEntry]:
    return [h for h in history if h.kind == kind.value]


def states(status: Any) -> list[StepState]:
    return [s.state for s in status.steps]


# -- 1. happy path --------------------------------------------------------------------------


def test_happy_path(cluster: Cluster) -> None:
    saga_id = cluster.start("probe", {"tag": "happy"})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)

    assert record.state is SagaState.COMPLETED
    assert record.finished_at is not None and record.failure is None
    assert [(s.name, s.state, s.attempt, s.compensation_attempt) for s in status.steps] == [
        (name, StepState.SUCCEEDED, 1, 0) for name in STEPS
    ]
    assert [s.result for s in status.steps] == [{"step": n, "attempt": 1} for n in STEPS]
    assert [h.step for h in kinds(history, HistoryKind.STEP_SUCCEEDED)] == list(STEPS)
    assert len(kinds(history, HistoryKind.SAGA_COMPLETED)) == 1
    assert not [h for h in history if h.kind.startswith("compensation")]

    effects = cluster.effects(saga_id)
    assert runs(effects) == [(name, "forward", 1) for name in STEPS]
    assert_in_order(effects)


def test_start_routed_to_the_first_steps_queue(cluster: Cluster) -> None:
    """A web process with SAGAS_START_ON_STEP_QUEUE sends start_saga to s1's queue. The worker
    there records the start (these workers run without the setting, so they take the ordinary
    path: publish s1 to their own queue) and the saga completes as usual."""
    from sagas.runtime import get_runtime

    rt = get_runtime()
    before = rt.settings
    rt.settings = before.model_copy(update={"start_on_step_queue": True})
    try:
        saga_id = cluster.start("probe", {"tag": "routed"})
    finally:
        rt.settings = before
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert [h.kind for h in history][:2] == ["saga_started", "step_dispatched"]
    # the start was recorded by s1's worker, not by the coordinator
    cluster.wait_for_log(STEP_QUEUES[STEPS[0]], "saga started", saga_id)
    assert not [
        ln for ln in cluster.log("sagas").splitlines() if "saga started" in ln and saga_id in ln
    ]


def test_order_fulfillment_example(cluster: Cluster) -> None:
    run = uuid.uuid4().hex[:8]
    ok = cluster.start("order_fulfillment", order_payload(f"A-{run}"))
    declined = cluster.start(
        "order_fulfillment", order_payload(f"B-{run}", card_number="4000000000000002")
    )
    flaky = cluster.start(
        "order_fulfillment", order_payload(f"C-{run}", simulate={"carrier_outages": 2})
    )

    record, status, _ = cluster.wait_for(ok, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert states(status) == [StepState.SUCCEEDED] * 4
    # The last step is a plain Celery task named by string in the notification service.
    assert status.steps[3].name == "send_confirmation"
    assert status.steps[3].result == {"sent_to": "ada@example.com"}

    record, status, _ = cluster.wait_for(declined, TERMINAL)
    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "CardDeclined"
    assert states(status) == [
        StepState.COMPENSATED,
        StepState.FAILED,
        StepState.SKIPPED,
        StepState.SKIPPED,
    ]

    record, status, history = cluster.wait_for(flaky, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert status.steps[2].name == "create_shipment" and status.steps[2].attempt == 3
    assert [h.step for h in kinds(history, HistoryKind.RETRY_SCHEDULED)] == ["create_shipment"] * 2


# -- 2. a permanent failure at each step ------------------------------------------------------


@pytest.mark.parametrize("failing", STEPS)
def test_permanent_failure_compensates_earlier_steps_newest_first(
    cluster: Cluster, failing: str
) -> None:
    k = STEPS.index(failing)
    saga_id = cluster.start("probe", {"fail_permanent": failing})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)

    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "PermanentError"
    assert states(status) == (
        [StepState.COMPENSATED] * k + [StepState.FAILED] + [StepState.SKIPPED] * (3 - k)
    )
    assert status.steps[k].attempt == 1  # a permanent error is not retried
    assert status.steps[k].compensation_attempt == 0
    done_before = list(STEPS[:k])
    assert [h.step for h in kinds(history, HistoryKind.COMPENSATION_DISPATCHED)] == list(
        reversed(done_before)
    )
    assert len(kinds(history, HistoryKind.SAGA_FAILED)) == 1

    effects = cluster.effects(saga_id)
    assert runs(effects) == [(name, "forward", 1) for name in STEPS[: k + 1]] + [
        (name, "compensate", 1) for name in reversed(done_before)
    ]
    assert_in_order(effects)


# -- 3. transient failures: retried with growing intervals ------------------------------------


def test_transient_failures_are_retried_with_growing_intervals(cluster: Cluster) -> None:
    saga_id = cluster.start("probe", {"transient": {"s2": 2}})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)

    assert record.state is SagaState.COMPLETED
    assert states(status) == [StepState.SUCCEEDED] * 4
    assert status.steps[1].attempt == 3
    assert status.steps[1].result == {"step": "s2", "attempt": 3}

    retries = kinds(history, HistoryKind.RETRY_SCHEDULED)
    assert [(h.step, h.attempt) for h in retries] == [("s2", 2), ("s2", 3)]
    intervals = [float((h.detail or {})["interval"]) for h in retries]
    assert intervals[0] < intervals[1]
    # The policy's backoff, within its ±jitter.
    for n, interval in enumerate(intervals, start=1):
        base = FAST_RETRY.initial * FAST_RETRY.backoff ** (n - 1)
        assert base * (1 - FAST_RETRY.jitter) <= interval <= base * (1 + FAST_RETRY.jitter)

    # Each retry was dispatched no earlier than scheduled (history, database clock)...
    dispatched = {
        h.attempt: h for h in kinds(history, HistoryKind.STEP_DISPATCHED) if h.step == "s2"
    }
    for retry, interval in zip(retries, intervals, strict=True):
        assert retry.attempt is not None
        gap = (dispatched[retry.attempt].at - retry.at).total_seconds()
        assert gap >= interval - 1e-6, (retry, gap)
    # ... and the attempts actually ran at least that far apart (the steps' own clock readings).
    attempts = [e for e in cluster.effects(saga_id) if e.step == "s2"]
    assert [e.attempt for e in attempts] == [1, 2, 3]
    for (before, after), interval in zip(
        zip(attempts, attempts[1:], strict=False), intervals, strict=True
    ):
        assert (after.at - before.at) >= timedelta(seconds=interval - 1e-6)
    assert runs(cluster.effects(saga_id)) == [
        ("s1", "forward", 1),
        ("s2", "forward", 1),
        ("s2", "forward", 2),
        ("s2", "forward", 3),
        ("s3", "forward", 1),
        ("s4", "forward", 1),
    ]


# -- 4. retries exhausted -----------------------------------------------------------------------


def test_exhausted_retries_compensate_earlier_steps(cluster: Cluster) -> None:
    saga_id = cluster.start("probe", {"transient": {"s3": FAST_RETRY.max_attempts}})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)

    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "TransientError"
    assert states(status) == [
        StepState.COMPENSATED,
        StepState.COMPENSATED,
        StepState.FAILED,  # known to have failed: not compensated
        StepState.SKIPPED,
    ]
    assert status.steps[2].attempt == FAST_RETRY.max_attempts
    assert [h.attempt for h in kinds(history, HistoryKind.STEP_FAILED)] == [1, 2, 3]
    assert len(kinds(history, HistoryKind.RETRY_SCHEDULED)) == FAST_RETRY.max_attempts - 1

    effects = cluster.effects(saga_id)
    assert runs(effects) == [
        ("s1", "forward", 1),
        ("s2", "forward", 1),
        ("s3", "forward", 1),
        ("s3", "forward", 2),
        ("s3", "forward", 3),
        ("s2", "compensate", 1),
        ("s1", "compensate", 1),
    ]
    assert_in_order(effects)


def test_failing_compensation_is_retried_until_it_succeeds(cluster: Cluster) -> None:
    saga_id = cluster.start("probe", {"fail_permanent": "s3", "compensation_transient": {"s1": 2}})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)

    assert record.state is SagaState.FAILED
    assert not record.parked
    assert states(status)[:2] == [StepState.COMPENSATED, StepState.COMPENSATED]
    assert status.steps[0].compensation_attempt == 3
    assert [h.attempt for h in kinds(history, HistoryKind.COMPENSATION_FAILED)] == [1, 2]
    assert [
        (h.step, h.attempt, (h.detail or {}).get("action"))
        for h in kinds(history, HistoryKind.RETRY_SCHEDULED)
    ] == [("s1", 2, "compensate"), ("s1", 3, "compensate")]
    effects = cluster.effects(saga_id)
    assert runs(effects)[-4:] == [
        ("s2", "compensate", 1),
        ("s1", "compensate", 1),
        ("s1", "compensate", 2),
        ("s1", "compensate", 3),
    ]
    assert_in_order(effects)


# -- 5. a step timeout ----------------------------------------------------------------------------


def test_step_timeout_compensates_the_timed_out_step_too(cluster: Cluster) -> None:
    saga_id = cluster.start("probe", {"sleep": {"s3": SLOW}})
    record, status, history = cluster.wait_for(saga_id, TERMINAL, timeout=60)

    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "StepTimeout"
    # s3's outcome is unknown (it timed out on every attempt), so it is compensated as well.
    assert states(status) == [StepState.COMPENSATED] * 3 + [StepState.SKIPPED]
    assert status.steps[2].attempt == FAST_RETRY.max_attempts
    timed_out = kinds(history, HistoryKind.STEP_TIMED_OUT)
    assert [(h.step, h.attempt) for h in timed_out] == [("s3", 1), ("s3", 2), ("s3", 3)]
    assert [h.step for h in kinds(history, HistoryKind.COMPENSATION_DISPATCHED)] == [
        "s3",
        "s2",
        "s1",
    ]

    effects = cluster.effects(saga_id)
    assert runs(effects) == [
        ("s1", "forward", 1),
        ("s2", "forward", 1),
        ("s3", "forward", 1),
        ("s3", "forward", 2),
        ("s3", "forward", 3),
        ("s3", "compensate", 1),
        ("s2", "compensate", 1),
        ("s1", "compensate", 1),
    ]
    assert_in_order(effects)

    # The slow attempts still finish and reply; every such late reply is ignored.
    _, after, history = cluster.wait_for_history(
        saga_id,
        lambda h: len([e for e in kinds(h, HistoryKind.REPLY_IGNORED) if e.step == "s3"]) == 3,
        what="three late s3 replies ignored",
    )
    assert after == status


# -- 6. the saga deadline -------------------------------------------------------------------------


def test_saga_deadline_compensates(cluster: Cluster) -> None:
    saga_id = cluster.start("probe_deadline", {"sleep": {"d2": SAGA_DEADLINE + 2.5}})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)

    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "SagaDeadlineExceeded"
    assert record.deadline_at is not None
    assert len(kinds(history, HistoryKind.DEADLINE_EXCEEDED)) == 1
    # d2 was still running when the deadline passed: its outcome is unknown, so it is undone.
    assert states(status) == [StepState.COMPENSATED, StepState.COMPENSATED]
    assert [h.step for h in kinds(history, HistoryKind.COMPENSATION_DISPATCHED)] == ["d2", "d1"]
    deadline = kinds(history, HistoryKind.DEADLINE_EXCEEDED)[0]
    assert deadline.at >= record.deadline_at

    effects = cluster.effects(saga_id)
    assert runs(effects) == [
        ("d1", "forward", 1),
        ("d2", "forward", 1),
        ("d2", "compensate", 1),
        ("d1", "compensate", 1),
    ]
    assert_in_order(effects)
    # d2's forward attempt finishes later; its reply changes nothing.
    _, after, _ = cluster.wait_for_history(
        saga_id,
        lambda h: any(e.step == "d2" for e in kinds(h, HistoryKind.REPLY_IGNORED)),
        what="late d2 reply ignored",
    )
    assert after == status


# -- 7. a duplicate reply -------------------------------------------------------------------------


def test_duplicate_reply_is_recorded_and_ignored(cluster: Cluster) -> None:
    saga_id = cluster.start("probe", {"tag": "duplicate"})
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    effects_before = cluster.effects(saga_id)

    # Exactly what s4's step task sent (sagas.transport.send_reply), sent again by name.
    reply = {
        "saga_id": saga_id,
        "step": "s4",
        "action": "forward",
        "attempt": 1,
        "ok": True,
        "result": {"step": "s4", "attempt": 1},
        "error_type": None,
        "error_message": None,
        "retryable": True,
    }
    cluster.app.send_task("sagas.step_reply", args=[reply], queue="sagas")
    # A stale failure for an earlier step must not start compensation either.
    failure = {**reply, "step": "s2", "ok": False, "result": None, "error_type": "Boom"}
    cluster.app.send_task("sagas.step_reply", args=[failure], queue="sagas")

    after, status_after, history_after = cluster.wait_for_history(
        saga_id,
        lambda h: len(kinds(h, HistoryKind.REPLY_IGNORED)) == 2,
        what="two replies ignored",
    )
    ignored = kinds(history_after, HistoryKind.REPLY_IGNORED)
    # The coordinator runs two processes: the replies may be handled in either order.
    assert sorted((h.step, h.attempt) for h in ignored) == [("s2", 1), ("s4", 1)]
    assert all("completed" in str((h.detail or {}).get("why")) for h in ignored)
    assert history_after[: len(history)] == history
    assert len(history_after) == len(history) + 2
    assert after.state is SagaState.COMPLETED
    assert status_after == status
    assert cluster.effects(saga_id) == effects_before


# -- 8. idempotent start ---------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["caller", "message"])
def test_start_is_idempotent_on_saga_id(cluster: Cluster, via: str) -> None:
    """The same start twice is one saga; the same id with another payload or saga is refused
    and changes nothing, whether the caller records the start (the default with a configured
    store) or the coordinator does (a client without the definition, or the fallback)."""
    start = cluster.start if via == "caller" else cluster.send_start
    saga_id = f"idem-{uuid.uuid4().hex}"
    payload = {"tag": "idempotent"}
    start("probe", payload, saga_id=saga_id)
    start("probe", payload, saga_id=saga_id)
    record, status, history = cluster.wait_for(saga_id, TERMINAL)
    if via == "message":
        cluster.wait_for_log("sagas", "start is a duplicate", saga_id)

    assert record.state is SagaState.COMPLETED
    assert len(kinds(history, HistoryKind.SAGA_STARTED)) == 1
    assert [s.attempt for s in status.steps] == [1, 1, 1, 1]
    effects = cluster.effects(saga_id)
    assert runs(effects) == [(name, "forward", 1) for name in STEPS]

    # The same id with another payload, or for another saga: rejected, nothing changes.
    correlation_id = f"corr-{saga_id}"
    other = {"tag": "something else"}
    if via == "caller":
        results = [
            start_saga.delay("probe", other, saga_id=saga_id, correlation_id=correlation_id),
            start_saga.delay(
                "probe_deadline", payload, saga_id=saga_id, correlation_id=correlation_id
            ),
        ]
        for result in results:  # what the start task's result would hold
            assert result.state == "FAILURE" and isinstance(result.result, SagaConflict)
            assert result.result.field == "saga_id" and "already exists" in str(result.result)
    else:
        start("probe", other, saga_id=saga_id, correlation_id=correlation_id)
        start("probe_deadline", payload, saga_id=saga_id, correlation_id=correlation_id)
        rejected = _wait_for_lines(cluster, "sagas", 2, "start rejected", saga_id)
        assert all("already exists" in line and "(field saga_id)" in line for line in rejected)
        assert all(f"correlation_id={correlation_id}" in line for line in rejected)
        # Celery's own failure line names the exception type.
        cluster.wait_for_log("sagas", "SagaConflict", saga_id)

    record2, status2, history2 = cluster.store.get(saga_id)
    assert record2.name == "probe" and record2.payload == record.payload
    assert record2.payload["tag"] == "idempotent"
    assert (record2.state, status2, history2) == (record.state, status, history)
    assert cluster.effects(saga_id) == effects


def _wait_for_lines(cluster: Cluster, log: str, count: int, *needles: str) -> list[str]:
    lines: list[str] = []

    def check() -> bool:
        nonlocal lines
        lines = [ln for ln in cluster.log(log).splitlines() if all(n in ln for n in needles)]
        return len(lines) >= count

    assert poll(check, 30), f"fewer than {count} lines with {needles} in the {log} log: {lines}"
    return lines


# -- 9. bad input reaching the coordinator ----------------------------------------------------------


def test_bad_start_requests_write_nothing_and_are_logged(cluster: Cluster) -> None:
    marker = uuid.uuid4().hex
    unknown_id, invalid_id, malformed_id = (
        f"unknown-{marker}",
        f"invalid-{marker}",
        f"bad id {marker}!",
    )
    correlation_id = f"corr-{marker}"
    send = cluster.app.send_task  # by name: no client-side validation
    for name, payload, saga_id in (
        ("no_such_saga", {}, unknown_id),
        ("probe", {"fail_permanent": 5}, invalid_id),
        ("probe", {}, malformed_id),
    ):
        send(
            "sagas.start_saga",
            args=[name, payload],
            kwargs={"saga_id": saga_id, "correlation_id": correlation_id},
        )

    [line] = cluster.wait_for_log("sagas", "start rejected", unknown_id)
    assert "unknown saga 'no_such_saga'" in line and "(field name)" in line
    [line] = cluster.wait_for_log("sagas", "start rejected", invalid_id)
    assert "field 'fail_permanent'" in line and "(field payload.fail_permanent)" in line
    assert "saga=probe" in line
    [line] = cluster.wait_for_log("sagas", "start rejected", marker, "(field saga_id)")
    assert "saga_id must be" in line
    # The caller's correlation id is on each rejection, so a web request can be traced to it.
    rejected = [ln for ln in cluster.log("sagas").splitlines() if "start rejected" in ln]
    assert len([ln for ln in rejected if f"correlation_id={correlation_id}" in ln]) == 3

    assert cluster.saga_rows(unknown_id, invalid_id, malformed_id) == 0
    for saga_id in (unknown_id, invalid_id, malformed_id):
        assert cluster.effects(saga_id) == []


# -- 10. correlation id ---------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["caller", "message"])
def test_correlation_id_reaches_every_step_log_and_the_saga_row(cluster: Cluster, via: str) -> None:
    correlation_id = f"corr-{uuid.uuid4().hex}"
    start = cluster.start if via == "caller" else cluster.send_start
    saga_id = start("probe", {"tag": "correlated"}, correlation_id=correlation_id)
    record, _, _ = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert record.correlation_id == correlation_id
    assert cluster.store.list(name="probe", limit=500)  # and the list view has the saga
    assert [
        r.correlation_id for r in cluster.store.list(name="probe", limit=500) if r.id == saga_id
    ] == [correlation_id]

    for step, queue in STEP_QUEUES.items():
        # The engine's own line for the step, tagged [saga=... saga_id=... correlation_id=...].
        [running] = cluster.wait_for_log(queue, f"id={saga_id} step={step} attempt=1", "running")
        assert f"correlation_id={correlation_id}" in running
        # The step's own plain logging line: the worker's format shows it via SagaContextFilter.
        [own] = cluster.wait_for_log(queue, f"probe {step} forward attempt 1", correlation_id)
        assert f"{{corr={correlation_id}}}" in own
    if via == "message":  # the coordinator's lines for this saga carry it too
        assert cluster.wait_for_log("sagas", "saga started", saga_id, correlation_id)


# -- 11. the outbox: published commands are cleared even if another transition commits first ----

# Holds every ``Store.clear_outbox`` UPDATE (the only saga UPDATE whose WHERE tests outbox_at)
# while ``probe_hold`` has a row. A statement-level trigger runs before any row is locked, so
# other transitions proceed meanwhile: this only makes a slow clear slow.
HOLD_CLEARS = """
CREATE TABLE IF NOT EXISTS probe_hold (held integer);
CREATE OR REPLACE FUNCTION probe_hold_clears() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_query() LIKE '%%AND saga.outbox_at = %%' THEN
        WHILE EXISTS (SELECT 1 FROM probe_hold) LOOP PERFORM pg_sleep(0.02); END LOOP;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER probe_hold_clears BEFORE UPDATE ON saga
    FOR EACH STATEMENT EXECUTE FUNCTION probe_hold_clears();
INSERT INTO probe_hold VALUES (1);
"""


def release_clears(cluster: Cluster) -> None:
    # Two transactions: DROP TRIGGER waits for the held UPDATEs, which wait for the DELETE.
    with cluster.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM probe_hold")
    with cluster.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS probe_hold_clears ON saga")


def test_published_commands_leave_the_outbox_when_a_later_transition_commits_first(
    cluster: Cluster,
) -> None:
    """Transition A commits "dispatch s2" to the outbox and publishes it; before A clears the
    outbox, transition B (an ignored duplicate reply: no commands) commits. A's clear must
    still take effect: the command was published. Otherwise the sweeper re-publishes it after
    ``outbox_grace`` as if A had crashed, and s2 runs twice (observed with
    SAGAS_OUTBOX_GRACE=0.5: a second "s2 forward attempt 1" effect and commands_republished)."""
    with cluster.engine.begin() as conn:
        conn.exec_driver_sql(HOLD_CLEARS)
    saga_id = cluster.start("probe", {"tag": "outbox", "sleep": {"s2": 1.5}})
    try:
        # s2 runs: transition A (s1 succeeded -> dispatch s2) is committed and published.
        assert poll(lambda: any(e.step == "s2" for e in cluster.effects(saga_id)), 15)
        duplicate = StepReply(
            saga_id=saga_id,
            step="s1",
            action=Action.FORWARD,
            attempt=1,
            ok=True,
            result={"step": "s1", "attempt": 1},
        )
        applied = coordinator.handle_reply(duplicate)  # transition B, in this process

        decision = applied.decision if applied is not None else None
        assert decision is not None and not decision.commands
    finally:
        release_clears(cluster)

    def outbox() -> tuple[Any, ...]:
        with cluster.engine.connect() as conn:
            return tuple(
                conn.execute(
                    text("SELECT lock_version, outbox_at, outbox FROM saga WHERE id = :id"),
                    {"id": saga_id},
                ).one()
            )

    # s2 is still running (1.5 s): nothing but the held clears can touch the outbox now.
    cleared = poll(lambda: outbox()[1] is None, 0.8)
    left = outbox()
    record, _, _ = cluster.wait_for(saga_id, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert cleared, (
        f"published commands left in the outbox (lock_version, outbox_at, outbox): {left}"
    )


# -- last, per broker: nothing went wrong that no test looked at ---------------------------------

# The only errors the tests provoke on purpose: rejected starts (tests 8 and 9), the malformed
# events test_choreography_workers.py publishes, and the sweeper escalating the sagas some tests
# park on purpose (a dead-lettered compensation, a choreography flagged stuck).
EXPECTED_ERRORS = (
    "start rejected: ",
    "malformed event dropped: ",
    "saga escalated to an operator: ",
    "saga parked for an operator",  # probe_pivot: a step past the pivot out of retries
)
EXPECTED_TASK_FAILURES = ("SagaConflict(", "UnknownSaga(", "PayloadInvalid(", "InvalidSagaId(")


def test_worker_logs_show_no_unexpected_errors(cluster: Cluster) -> None:
    problems = []
    for name in cluster.logs:
        text = cluster.log(name)
        lines = text.splitlines()
        expected_tracebacks = 0
        for line in lines:
            if not any(f"{level}/" in line for level in ("ERROR", "CRITICAL")):
                continue
            if any(e in line for e in EXPECTED_ERRORS):
                continue
            if "raised unexpected: " in line and any(e in line for e in EXPECTED_TASK_FAILURES):
                expected_tracebacks += 1
                continue
            problems.append(f"{name}: {line}")
        tracebacks = text.count("Traceback (most recent call last)")
        if tracebacks != expected_tracebacks:
            problems.append(f"{name}: {tracebacks} tracebacks, {expected_tracebacks} expected")
        if "--- Logging error ---" in text:
            problems.append(f"{name}: a log record failed to format")
    assert not problems, "\n".join(problems)
