"""Processes dying, doubling and drifting: worker children and whole workers killed, a poison
step, two sweepers and two coordinators at once, a worker whose clock is an hour off.

Every test ends with the invariant check (``conftest._fault_test``); what each one adds is the
specific recovery path it expects.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta

import pytest

from sagas import SagaState, StepState, report
from sagas.state import HistoryKind
from tests.faults.conftest import (
    SWEEP_INTERVAL,
    TERMINAL,
    FaultCluster,
    Spec,
    faketime_env,
    poll,
)
from tests.faults.fprobe import (
    FAST_RETRY,
    HEARTBEAT,
    HEARTBEAT_TIMEOUT,
    PAGES,
    POISON_RETRY,
    POISON_TIMEOUT,
    STEP_TIMEOUT,
)

pytestmark = [pytest.mark.integration, pytest.mark.workers]

LOCAL_OFF = {"SAGAS_LOCAL_TRANSITIONS": "0"}


def kinds(history: list, kind: HistoryKind) -> list:
    return [h for h in history if h.kind == kind.value]


# -- 1. a worker child SIGKILLed mid-step -----------------------------------------------------


@pytest.mark.brokers("redis", "rabbitmq")
@pytest.mark.invariants(duplicate_runs=True)
def test_worker_child_killed_mid_step_is_redelivered_and_run_again(fc: FaultCluster) -> None:
    """``acks_late`` + ``reject_on_worker_lost``: the parent rejects the lost message with
    requeue, another child runs the same attempt again; the effect is applied once."""
    sid = fc.start("fprobe_long", {"sleep": {"l2": 1.5}})
    fc.wait_run(sid, "l2")
    killed = fc.kill_run(sid, "l2")

    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED
    runs = fc.runs(sid, "l2")
    assert [r.attempt for r in runs] == [1, 1], runs  # the same attempt, delivered again
    assert runs[0].pid == killed and runs[1].pid != killed
    assert status.steps[1].attempt == 1 and not kinds(history, HistoryKind.STEP_TIMED_OUT)
    assert fc.fx(sid) == [("l1", "forward", 1), ("l2", "forward", 1), ("l3", "forward", 1)]


@pytest.mark.invariants(duplicate_runs=True)
def test_child_killed_during_an_inline_step_is_recovered_by_its_timeout(
    fc: FaultCluster,
) -> None:
    """i2 runs inline in i1's task (same queue). Killing the child redelivers i1's message, which
    the participant skips (i1 already succeeded: not its open attempt); i2's attempt was claimed
    inline, so
    no message or outbox entry exists for it — its step timeout recovers it (attempt 2)."""
    sid = fc.start("fprobe_inline", {"sleep": {"i2": 1.5}, "sleep_attempts": {"i2": [1]}})
    fc.wait_run(sid, "i2")
    fc.kill_run(sid, "i2")

    record, status, history = fc.wait_for(sid, TERMINAL, timeout=STEP_TIMEOUT + 15)
    assert record.state is SagaState.COMPLETED
    # The redelivered i1 command is no longer i1's open attempt: skipped, not run again.
    assert [r.attempt for r in fc.runs(sid, "i1")] == [1]
    fc.wait_for_log("inventory", "stale command skipped", sid, "step=i1 attempt=1")
    assert [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_TIMED_OUT)] == [("i2", 1)]
    assert status.steps[1].attempt == 2
    assert not kinds(history, HistoryKind.REPLY_IGNORED)
    assert fc.fx(sid) == [("i1", "forward", 1), ("i2", "forward", 2), ("i3", "forward", 1)]


@pytest.mark.invariants(duplicate_runs=True)
def test_child_killed_while_parallel_branches_run(fc: FaultCluster) -> None:
    """Two branches run at once on two workers; the child running one is SIGKILLed mid-step.
    Its message is redelivered (acks_late) and the same attempt runs again; the other branch is
    unaffected; the group joins once, and each branch's effect is applied once."""
    sid = fc.start("fprobe_group", {"sleep": {"ga": 1.5, "gb": 1.5}})
    fc.wait_run(sid, "ga")
    fc.wait_run(sid, "gb")
    killed = fc.kill_run(sid, "ga")

    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED
    runs = fc.runs(sid, "ga")
    assert [r.attempt for r in runs] == [1, 1] and runs[1].pid != killed, runs
    assert [r.attempt for r in fc.runs(sid, "gb")] == [1]
    assert [h.kind for h in history].count(HistoryKind.GROUP_JOINED) == 1
    assert sorted(fc.fx(sid)) == sorted(
        [("g1", "forward", 1), ("ga", "forward", 1), ("gb", "forward", 1), ("g3", "forward", 1)]
    )


# -- 1b. a whole worker SIGKILLed and restarted ---------------------------------------------------


@pytest.mark.brokers("redis", "rabbitmq")
@pytest.mark.invariants(duplicate_runs=True, settle=45)
def test_whole_worker_killed_and_restarted(fc: FaultCluster) -> None:
    """SIGKILL the payment worker's parent (then its orphaned children: the whole node is gone)
    while f2 runs, and start a new one. RabbitMQ requeues the unacked command when the
    connection drops, so the new worker may run attempt 1 again; on Redis the message stays
    unacked until the visibility timeout (an hour), so f2's step timeout recovers it."""
    sid = fc.start("fprobe", {"sleep": {"f2": 2.0}, "sleep_attempts": {"f2": [1]}})
    fc.wait_run(sid, "f2")
    orphans = _kill_node(fc, "payment")
    fc.configure()  # a new payment worker

    record, status, history = fc.wait_for(sid, TERMINAL, timeout=STEP_TIMEOUT + 30)
    assert record.state is SagaState.COMPLETED, orphans
    runs = [r.attempt for r in fc.runs(sid, "f2")]
    timed_out = [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_TIMED_OUT)]
    if fc.broker == "redis":
        assert runs == [1, 2] and timed_out == [("f2", 1)], (runs, timed_out)
    else:
        assert runs[:2] == [1, 1] or timed_out == [("f2", 1)], (runs, timed_out)
    assert [e[0] for e in fc.fx(sid)] == ["f1", "f2", "f3"]


@pytest.mark.invariants(duplicate_runs=True, settle=45)
def test_a_dead_worker_is_found_by_its_missed_heartbeats(fc: FaultCluster) -> None:
    """b2 reports each page it did with ``ctx.heartbeat`` (1 s heartbeat interval, 2 min
    timeout). Its whole worker is SIGKILLed mid-step: on Redis the command stays unacked for
    the visibility timeout (an hour), so only the missed heartbeats can tell. Attempt 1 is
    timed out about a second later, not after two minutes, and attempt 2 resumes from the
    last page attempt 1 reported."""
    sid = fc.start("fprobe_heartbeat", {"sleep": {"b2": 8.0}, "sleep_attempts": {"b2": [1]}})
    fc.wait_run(sid, "b2")

    def page() -> int:
        snap = fc.get(sid)
        return int(((snap[1].steps[1].progress if snap else None) or {}).get("page", 0))

    assert poll(lambda: page() >= 3, 15), fc.log_tails()
    _kill_node(fc, "payment")
    killed = time.monotonic()
    reported = page()
    fc.configure()  # a new payment worker

    record, status, history = fc.wait_for(sid, TERMINAL, timeout=60)
    recovered = time.monotonic() - killed
    assert record.state is SagaState.COMPLETED
    assert recovered < HEARTBEAT_TIMEOUT / 4, recovered
    timed_out_ = kinds(history, HistoryKind.STEP_TIMED_OUT)
    assert len(timed_out_) == 1, report.timeline(record, status, history)
    [timed_out] = timed_out_
    assert (timed_out.step, timed_out.attempt) == ("b2", 1)
    assert timed_out.detail["heartbeat"] == HEARTBEAT
    assert [r.attempt for r in fc.runs(sid, "b2")] == [1, 2]
    result = status.steps[1].result
    assert result["attempt"] == 2 and result["took_effect"], result
    assert reported <= result["resumed_at"] < PAGES, (reported, result)
    assert fc.fx(sid) == [("b1", "forward", 1), ("b2", "forward", 2), ("b3", "forward", 1)]


def test_a_queued_heartbeat_step_is_not_timed_out_before_it_runs(fc: FaultCluster) -> None:
    """b2's command waits in the payment queue, with no payment worker, for three heartbeat
    intervals (a worker still booting, or a backlog). The heartbeat clock starts when a worker
    begins the attempt, not at dispatch: nothing times out, and attempt 1 runs once a worker
    is there."""
    fc.configure(payment=None)
    sid = fc.start("fprobe_heartbeat", {})
    fc.wait_for_history(
        sid,
        lambda h: any(e.kind == "step_dispatched" and e.step == "b2" for e in h),
        what="b2 dispatched",
    )
    time.sleep(3 * HEARTBEAT + 2 * SWEEP_INTERVAL)  # the wait for a worker is the scenario
    record, status, history = fc.store.get(sid)
    assert not kinds(history, HistoryKind.STEP_TIMED_OUT), report.timeline(record, status, history)
    assert status.steps[1].state is StepState.RUNNING and status.steps[1].attempt == 1
    fc.configure()
    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED, report.timeline(record, status, history)
    assert not kinds(history, HistoryKind.STEP_TIMED_OUT)
    assert [r.attempt for r in fc.runs(sid, "b2")] == [1]
    # The worker's start mark was the attempt's first sign of life.
    assert status.steps[1].heartbeat_at is not None


def _kill_node(fc: FaultCluster, name: str) -> list[int]:
    """SIGKILL a worker's parent, then its orphaned pool: the whole node is gone. Returns the
    pool's pids that outlived the parent."""
    proc = fc.procs[name]
    pool = fc.children(name)
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)
    orphans = [pid for pid in pool if poll(lambda p=pid: _alive(p), 0.3)]
    fc.stop(name)  # SIGKILL the rest of its process group (the orphaned pool)
    return orphans


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


# -- 6. a poison step that kills its worker on every run ---------------------------------------


@pytest.mark.brokers("redis", "rabbitmq")
@pytest.mark.invariants(duplicate_runs=True)
@pytest.mark.parametrize("local", ["local-transitions", "replies-by-message"])
def test_poison_step_is_bounded_by_the_attempt_cap_then_compensated(
    fc: FaultCluster, local: str
) -> None:
    """p2 SIGKILLs its own pool child on every run. The saga must give up on it after its
    attempt cap (each attempt times out: no reply ever comes) and compensate p1 — and the
    poison message must stop being run: with ``reject_on_worker_lost`` every kill requeues it,
    so unless the participant refuses a command whose attempt is no longer open (or counts
    deliveries of one attempt), it loops forever. Checked with the participant settling
    locally (the default) and replying by message (``SAGAS_LOCAL_TRANSITIONS=0``, as a service
    whose workers do not write the saga store would run)."""
    spec = Spec("poison")
    if local == "replies-by-message":
        spec = spec.with_env(**LOCAL_OFF)
    fc.configure(poison=spec)
    sid = fc.start("fprobe_poison", {"poison": ["p2"]})
    cap = POISON_RETRY.max_attempts
    try:
        record, status, history = fc.wait_for(sid, TERMINAL, timeout=30)
        assert record.state is SagaState.FAILED
        assert record.failure is not None and record.failure.type == "StepTimeout"
        assert [s.state for s in status.steps] == [StepState.COMPENSATED, StepState.TIMED_OUT]
        assert status.steps[1].attempt == cap
        at_end = len(fc.runs(sid, "p2"))
        time.sleep(3 * POISON_TIMEOUT)  # several sweeper periods and step timeouts later
        runs = fc.runs(sid, "p2")
        per_attempt = Counter(r.attempt for r in runs)
        # What the engine guarantees today: redeliveries of an attempt stop once the attempt is
        # no longer open (it timed out), and every run belongs to an attempt within the cap.
        # How many times one open attempt is redelivered before its timeout depends on the
        # broker (RabbitMQ requeues at once: several runs; Redis after its visibility timeout);
        # capping runs per attempt would need a delivery count in the store (issue 4, open).
        assert len(runs) == at_end, (
            f"the poison command keeps running after the saga gave up on it: {len(runs)} runs "
            f"of p2 ({dict(per_attempt)} per attempt; {at_end} when the saga failed), cap {cap}"
        )
        assert set(per_attempt) <= set(range(1, cap + 1)), per_attempt
    finally:
        fc.stop("poison", signal.SIGKILL)
        fc.purge("poison")


# -- 7. two sweepers and two coordinators at once ---------------------------------------------------


@pytest.mark.invariants(settle=60)
def test_two_beats_and_two_coordinators_race_safely(fc: FaultCluster) -> None:
    """Two beats (every sweep doubled) and two coordinator workers (four processes taking
    replies, wakes and starts from one queue); participants reply by message, so every
    transition is a coordinator race. Starts are sent twice at once (both coordinators insert
    the same id). Nothing may be dispatched or run twice."""
    fc.configure(
        sagas2=Spec("sagas"),
        beat2=Spec(None),
        **{q: Spec(q).with_env(**LOCAL_OFF) for q in ("inventory", "payment", "shipping")},
    )
    plans: list[tuple[str, dict, str]] = (
        [("fprobe", {"tag": f"ok{n}"}, "completed") for n in range(8)]
        + [("fprobe", {"transient": {"f2": 2}}, "completed") for _ in range(4)]
        + [("fprobe", {"fail_permanent": "f3"}, "failed") for _ in range(2)]
        + [("fprobe", {"fail_permanent": "f3", "compensation_transient": {"f1": 1}}, "failed")]
        + [("fprobe_short", {"sleep": {"t2": 1.6}, "sleep_attempts": {"t2": [1]}}, "completed")] * 3
    )
    ids = []
    for name, payload, _ in plans:
        sid = f"ft-race-{uuid.uuid4().hex}"
        for _ in range(2):
            fc.start(name, payload, saga_id=sid)
        ids.append(sid)
    for sid, (_, _, expected) in zip(ids, plans, strict=True):
        record, status, history = fc.wait_for(sid, TERMINAL, timeout=60)
        assert record.state.value == expected, report.timeline(record, status, history)
        assert len(kinds(history, HistoryKind.SAGA_STARTED)) == 1
        dispatched = Counter(
            (h.step, h.attempt, h.kind)
            for h in history
            if h.kind in (HistoryKind.STEP_DISPATCHED, HistoryKind.COMPENSATION_DISPATCHED)
        )
        assert max(dispatched.values()) == 1, dispatched
    # Both coordinators and both beats really took part.
    for name in ("sagas", "sagas2"):
        assert "sagas.step_reply[" in fc.log(name), f"{name} handled no reply"
    for name in ("beat", "beat2"):
        assert fc.log(name).count("Sending due task sagas-sweep") >= 3


# -- 9. a worker clock an hour ahead --------------------------------------------------------------


def test_skewed_worker_clock_does_not_move_deadlines(fc: FaultCluster) -> None:
    """The payment worker runs an hour ahead (libfaketime, or a sitecustomize fallback). It
    performs f2's transitions itself (local transitions): the retry time, f3's step deadline and
    every history timestamp still come from the database clock."""
    fc.configure(payment=Spec("payment").with_env(**faketime_env("+1h")))
    before = fc.db_now()
    sid = fc.start("fprobe", {"transient": {"f2": 1}})
    record, status, history = fc.wait_for(sid, TERMINAL, timeout=20)
    after = fc.db_now()
    assert record.state is SagaState.COMPLETED
    assert status.steps[1].attempt == 2

    # The worker's clock really was skewed: its log stamps f2's run about an hour ahead.
    line = next(ln for ln in fc.log("payment").splitlines() if "fprobe f2 forward" in ln)
    stamp = re.search(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)
    assert stamp is not None, line
    ahead = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S") - datetime.now()
    assert abs(ahead.total_seconds() - 3600) < 120, line

    # Everything the skewed worker decided is on the database clock.
    for h in history:
        assert before - timedelta(seconds=1) <= h.at <= after + timedelta(seconds=1), h
    [retry] = kinds(history, HistoryKind.RETRY_SCHEDULED)
    due = retry.detail["at"]
    assert 0 < (_iso(due) - retry.at).total_seconds() <= FAST_RETRY.max_interval
    f3 = status.steps[2]
    assert f3.started_at is not None and before <= f3.started_at <= after
    # The retry ran on time (the sweeper fired it from the database even if the skewed
    # worker's countdown wake carries an ETA an hour away).
    runs = fc.runs(sid, "f2")
    assert (runs[1].at - runs[0].at).total_seconds() < 5


def _iso(value: str) -> datetime:
    return datetime.fromisoformat(value)
