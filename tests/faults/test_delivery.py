"""Messages duplicated, stale, late or lost; compensations that fail; a countdown longer than
Redis's visibility timeout.

Duplicates and stale replies are the real messages the engine sends, rebuilt from the store
(``commands.build_command``) or written as ``transport.send_reply`` writes them, and sent by
name. Every test ends with the invariant check (``conftest._fault_test``).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import pytest

from sagas import Action, SagaState, StepState
from sagas.catalog import get_saga
from sagas.commands import build_command
from sagas.machine import Dispatch
from sagas.state import HistoryKind
from sagas.transport import send_step
from tests.faults.conftest import SWEEP_INTERVAL, TERMINAL, FaultCluster, Spec, poll
from tests.faults.fprobe import COMPENSATION_RETRY, SHORT_RETRY, SLOW_RETRY_INTERVAL, STEP_TIMEOUT

pytestmark = [pytest.mark.integration, pytest.mark.workers]


def kinds(history: list, kind: HistoryKind) -> list:
    return [h for h in history if h.kind == kind.value]


def send_reply(fc: FaultCluster, saga_id: str, step: str, attempt: int, **fields: Any) -> None:
    """A step reply exactly as ``sagas.transport.send_reply`` writes it."""
    reply = {
        "saga_id": saga_id,
        "step": step,
        "action": "forward",
        "attempt": attempt,
        "ok": True,
        "result": {"step": step, "attempt": attempt, "took_effect": True},
        "error_type": None,
        "error_message": None,
        "retryable": True,
        **fields,
    }
    fc.app.send_task("sagas.step_reply", args=[reply], queue="sagas")


def resend_command(fc: FaultCluster, saga_id: str, step: int, attempt: int) -> None:
    """The command the coordinator sent for ``step``/``attempt``, sent again."""
    record, status, _ = fc.store.get(saga_id)
    saga = get_saga(record.name)
    deadline = status.steps[step].deadline_at or record.created_at
    command = build_command(saga, record, status, Dispatch(step, attempt, Action.FORWARD, deadline))
    send_step(fc.app, saga.steps[step], command, "sagas", saga.payload_model)


def ignored(history: list) -> list[tuple[str, int, str]]:
    return [(h.step, h.attempt, h.detail["why"]) for h in kinds(history, HistoryKind.REPLY_IGNORED)]


# -- 4. duplicates, stale and late messages ---------------------------------------------------------


@pytest.mark.invariants(duplicate_runs=True)
def test_command_delivered_twice(fc: FaultCluster) -> None:
    """A second copy of f2's command while attempt 1 runs, and a third after the saga finished.
    The copy that arrives while attempt 1 is still open runs the step function again (same
    attempt, same idempotency key: the probe's keyed effect is applied once) and its reply is
    ignored; the late copy is refused by the participant (no longer the open attempt) and does
    not run at all. The saga moves on exactly once."""
    sid = fc.start("fprobe", {"sleep": {"f2": 1.0}})
    fc.wait_run(sid, "f2")
    resend_command(fc, sid, 1, 1)
    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED
    fc.wait_run(sid, "f2", n=2)
    _, after, history = wait_history(fc, sid, lambda h: len(ignored(h)) == 1)
    assert [(s, a) for s, a, _ in ignored(history)] == [("f2", 1)]

    resend_command(fc, sid, 1, 1)  # late: the saga is already completed
    fc.wait_for_log("payment", "stale command skipped", sid, "step=f2 attempt=1")
    assert [r.attempt for r in fc.runs(sid, "f2")] == [1, 1]
    assert fc.store.get(sid)[1:] == (after, history)
    assert after == status
    assert len([h for h in kinds(history, HistoryKind.STEP_DISPATCHED) if h.step == "f3"]) == 1
    assert fc.fx(sid) == [("f1", "forward", 1), ("f2", "forward", 1), ("f3", "forward", 1)]


def test_reply_delivered_twice(fc: FaultCluster) -> None:
    """f1's success reply twice while f2 runs, and f3's twice after the saga completed: all four
    are ignored; f2 and f3 are dispatched and run once."""
    sid = fc.start("fprobe", {"sleep": {"f2": 1.0}})
    fc.wait_run(sid, "f2")
    send_reply(fc, sid, "f1", 1)
    send_reply(fc, sid, "f1", 1)
    record, status, _ = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED
    send_reply(fc, sid, "f3", 1)
    send_reply(fc, sid, "f3", 1, ok=False, result=None, error_type="Boom", retryable=False)
    _, after, history = wait_history(fc, sid, lambda h: len(ignored(h)) == 4)
    assert sorted((s, a) for s, a, _ in ignored(history)) == [("f1", 1)] * 2 + [("f3", 1)] * 2
    assert after == status
    assert Counter(h.step for h in kinds(history, HistoryKind.STEP_DISPATCHED)) == {
        "f1": 1, "f2": 1, "f3": 1,
    }  # fmt: skip
    assert [len(fc.runs(sid, s)) for s in ("f1", "f2", "f3")] == [1, 1, 1]


def test_stale_reply_from_an_earlier_attempt(fc: FaultCluster) -> None:
    """f2 attempt 1 fails (retried); while attempt 2 runs, a success and a permanent failure
    claiming to be attempt 1 arrive. Both are ignored as stale; attempt 2 decides."""
    sid = fc.start(
        "fprobe", {"transient": {"f2": 1}, "sleep": {"f2": 1.0}, "sleep_attempts": {"f2": [2]}}
    )
    fc.wait_run(sid, "f2", n=2)
    send_reply(fc, sid, "f2", 1)
    send_reply(fc, sid, "f2", 1, ok=False, result=None, error_type="Boom", retryable=False)
    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert status.steps[1].result == {"step": "f2", "attempt": 2, "took_effect": True}
    stale = [i for i in ignored(history) if i[:2] == ("f2", 1)]
    assert len(stale) == 2 and all("stale attempt 1 (current 2)" in why for *_, why in stale)
    assert fc.fx(sid) == [("f1", "forward", 1), ("f2", "forward", 2), ("f3", "forward", 1)]


def test_late_success_after_the_step_timed_out(fc: FaultCluster) -> None:
    """t2 attempt 1 outlives its 1.5 s timeout; attempt 2 succeeds first. Attempt 1's late success
    is ignored (stale) and takes no second effect (the key is already used)."""
    sid = fc.start("fprobe_short", {"sleep": {"t2": 3.0}, "sleep_attempts": {"t2": [1]}})
    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED
    assert [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_TIMED_OUT)] == [("t2", 1)]
    assert status.steps[1].attempt == 2
    _, after, history = wait_history(fc, sid, lambda h: ("t2", 1) in [i[:2] for i in ignored(h)])
    assert after == status
    assert fc.fx(sid) == [("t1", "forward", 1), ("t2", "forward", 2), ("t3", "forward", 1)]


@pytest.mark.invariants(settle=40)
def test_late_success_after_the_last_attempt_timed_out(fc: FaultCluster) -> None:
    """Every t2 attempt outlives its timeout: t2 ends timed_out (outcome unknown) and is
    compensated along with t1. Whichever lands first — the late forward effect or its
    compensation (a tombstone for the key) — nothing is left applied (invariant check)."""
    sid = fc.start("fprobe_short", {"sleep": {"t2": 3.0}})
    record, status, history = fc.wait_for(sid, TERMINAL, timeout=30)
    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "StepTimeout"
    assert [s.state for s in status.steps] == [
        StepState.COMPENSATED,
        StepState.COMPENSATED,
        StepState.SKIPPED,
    ]
    assert status.steps[1].attempt == SHORT_RETRY.max_attempts
    # both late successes arrive and are ignored
    wait_history(
        fc, sid, lambda h: Counter(i[:2] for i in ignored(h)) == {("t2", 1): 1, ("t2", 2): 1}
    )


def test_late_success_of_a_timed_out_attempt_after_a_later_attempt_failed(
    fc: FaultCluster,
) -> None:
    """t2 attempt 1 times out (its outcome is unknown: it is still running) and attempt 2 fails
    permanently. The step's outcome stays in doubt (``saga_step.in_doubt``), so t2 ends
    ``timed_out`` and is compensated too, before t1 — not ``failed`` (known never to have taken
    effect) from the last attempt's error alone. Attempt 1 then finishes: its reply is ignored,
    and its effect finds t2's compensation tombstone and takes none (issue 4, bug A)."""
    sid = fc.start(
        "fprobe_short",
        {"sleep": {"t2": 3.0}, "sleep_attempts": {"t2": [1]}, "permanent_on": {"t2": [2]}},
    )
    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.FAILED
    assert [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_TIMED_OUT)] == [("t2", 1)]
    assert [s.state for s in status.steps[:2]] == [StepState.COMPENSATED, StepState.COMPENSATED]
    undone = [h.step for h in kinds(history, HistoryKind.STEP_COMPENSATED)]
    assert undone == ["t2", "t1"]
    # attempt 1's late reply reaches the engine and changes nothing
    _, _, history = wait_history(fc, sid, lambda h: ("t2", 1) in [i[:2] for i in ignored(h)])
    assert [r.attempt for r in fc.runs(sid, "t2")] == [1, 2]
    effects = fc.fx(sid)
    assert ("t2", "compensate", 1) in effects
    assert ("t2", "forward", 1) not in effects  # refused: compensated before it landed


def test_lost_command_is_recovered_by_the_step_timeout(fc: FaultCluster) -> None:
    """f3's command is purged from the shipping queue before any worker takes it (the shipping
    worker stopped consuming for the moment): the attempt times out and attempt 2 runs."""
    node = fc.procs["shipping"].nodename
    fc.app.control.cancel_consumer("shipping", destination=[node], reply=True, timeout=5)
    try:
        sid = fc.start("fprobe", {})
        wait_history(
            fc, sid, lambda h: any(x.step == "f3" for x in kinds(h, HistoryKind.STEP_DISPATCHED))
        )
        time.sleep(0.2)  # the publish follows the commit
        assert fc.purge("shipping") == 1
    finally:
        fc.app.control.add_consumer("shipping", destination=[node], reply=True, timeout=5)
    record, status, history = fc.wait_for(sid, TERMINAL, timeout=STEP_TIMEOUT + 15)
    assert record.state is SagaState.COMPLETED
    assert [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_TIMED_OUT)] == [("f3", 1)]
    assert [r.attempt for r in fc.runs(sid, "f3")] == [2]
    assert fc.fx(sid) == [("f1", "forward", 1), ("f2", "forward", 1), ("f3", "forward", 2)]


# -- 5. failing compensations ----------------------------------------------------------------------


def test_compensation_failing_transiently_then_succeeding(fc: FaultCluster) -> None:
    sid = fc.start("fprobe", {"fail_permanent": "f3", "compensation_transient": {"f1": 2}})
    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.FAILED and not record.parked
    assert [s.state for s in status.steps] == [
        StepState.COMPENSATED,
        StepState.COMPENSATED,
        StepState.FAILED,
    ]
    assert status.steps[0].compensation_attempt == 3
    assert [r.attempt for r in fc.runs(sid, "f1", "compensate")] == [1, 2, 3]
    assert [(h.step, h.attempt) for h in kinds(history, HistoryKind.COMPENSATION_FAILED)] == [
        ("f1", 1),
        ("f1", 2),
    ]


def test_compensation_failing_permanently_is_parked_and_nothing_loops(fc: FaultCluster) -> None:
    sid = fc.start("fprobe", {"fail_permanent": "f3", "compensation_always_fails": ["f1"]})

    def parked() -> bool:
        snapshot = fc.get(sid)
        return snapshot is not None and snapshot[0].parked

    assert poll(parked, 30), fc.log_tails()
    record, status, history = fc.store.get(sid)
    assert record.state is SagaState.COMPENSATING and record.wake_at is None
    assert [s.state for s in status.steps] == [
        StepState.COMPENSATION_FAILED,
        StepState.COMPENSATED,
        StepState.FAILED,
    ]
    assert status.steps[0].compensation_attempt == COMPENSATION_RETRY.max_attempts
    assert [(r.id, s.name) for r, s in fc.store.dead_letters() if r.id == sid] == [(sid, "f1")]
    assert [why for r, why in fc.store.stuck(older_than=3600) if r.id == sid] == [
        "compensation exhausted (dead-lettered)"
    ]
    assert len(kinds(history, HistoryKind.COMPENSATION_PARKED)) == 1

    runs = fc.runs(sid, "f1", "compensate")
    time.sleep(6 * SWEEP_INTERVAL)  # several sweeper passes later: nothing more happens
    assert fc.runs(sid, "f1", "compensate") == runs
    assert len(runs) == COMPENSATION_RETRY.max_attempts
    # ... except that the sweeper escalated it to an operator, once
    after = fc.store.get(sid)[2]
    escalated = kinds(after, HistoryKind.SAGA_ESCALATED)
    assert [h.detail for h in escalated] == [{"reason": "compensation exhausted (dead-lettered)"}]
    assert [h for h in after if h not in escalated] == [h for h in history if h not in escalated]


# -- 8. a retry countdown longer than Redis's visibility timeout ------------------------------------


def test_retry_countdown_longer_than_the_visibility_timeout_runs_the_step_once(
    fc: FaultCluster,
) -> None:
    """The coordinator's Redis visibility timeout is 2 s; v1's retry waits 4 s, sent as a
    countdown ``sagas.wake``. Redis hands the unacked countdown message out again after 2 s, so
    the wake arrives twice — attempt 2 is still dispatched and run once (the timer is in the
    database; the second wake finds nothing due)."""
    fc.configure(sagas=Spec("sagas").with_env(SAGAS_FT_VISIBILITY="2"))
    sid = fc.start("fprobe_slow_retry", {"transient": {"v1": 1}})
    record, status, history = fc.wait_for(sid, TERMINAL, timeout=30)
    assert record.state is SagaState.COMPLETED
    [retry] = kinds(history, HistoryKind.RETRY_SCHEDULED)
    assert retry.detail["interval"] == SLOW_RETRY_INTERVAL
    assert [r.attempt for r in fc.runs(sid, "v1")] == [1, 2]
    assert len([h for h in kinds(history, HistoryKind.STEP_DISPATCHED) if h.step == "v1"]) == 2
    # The countdown wake really was delivered more than once.
    received = Counter(re.findall(r"Task sagas\.wake\[([0-9a-f-]+)\] received", fc.log("sagas")))
    assert received and max(received.values()) >= 2, received


# -- helpers ----------------------------------------------------------------------------------------


def wait_history(fc: FaultCluster, saga_id: str, predicate: Any, timeout: float = 20.0) -> Any:
    last = None

    def check() -> bool:
        nonlocal last
        last = fc.get(saga_id) or last
        return last is not None and bool(predicate(last[2]))

    assert poll(check, timeout), f"history condition not met for {saga_id}: {last}"
    return last
