"""Crashes at commit/publish boundaries and services going away.

- The coordinator killed right after committing a transition (``coordinator.after_commit``) or
  right after publishing it (``coordinator.after_publish``), with participants replying by
  message so the coordinator makes the transition: the outbox and the sweeper recover.
- A participant killed after running a step and before replying (``participant.before_reply``).
- Redis, RabbitMQ and PostgreSQL restarted while sagas run; the broker down when a saga starts.

The fault-armed process runs with ``-P solo``: a fault point's ``:1`` counts per process, and a
prefork pool forks every replacement child from a parent that never fired it, so a ``kill:1``
would fire again in every new child (forever, as the killed message is redelivered). With the
solo pool the first firing kills the worker itself, as a crash would; the test then starts a
healthy one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kombu.exceptions import OperationalError

import sagas
from sagas import SagaState, report
from sagas.state import HistoryKind
from tests.faults.conftest import (
    OUTBOX_GRACE,
    SWEEP_INTERVAL,
    TERMINAL,
    FaultCluster,
    Spec,
    outage,
    poll,
    restart_service,
)
from tests.faults.fprobe import STEP_TIMEOUT, fprobe

pytestmark = [pytest.mark.integration, pytest.mark.workers]

LOCAL_OFF = {"SAGAS_LOCAL_TRANSITIONS": "0"}
FX = [("f1", "forward", 1), ("f2", "forward", 1), ("f3", "forward", 1)]


def kinds(history: list, kind: HistoryKind) -> list:
    return [h for h in history if h.kind == kind.value]


def crashing(queue: str, fault: str) -> Spec:
    return Spec(queue, pool="solo").with_env(SAGAS_FAULTS=fault, **LOCAL_OFF)


# -- 2. the coordinator crashes between commit and publish ----------------------------------------


@pytest.mark.brokers("redis", "rabbitmq")
@pytest.mark.parametrize(
    "point, step", [("coordinator.after_commit", 1), ("coordinator.start_after_commit", 0)]
)
def test_coordinator_crash_after_commit_is_republished_from_the_outbox(
    fc: FaultCluster, point: str, step: int
) -> None:
    """The coordinator commits a transition and dies before publishing: either f1's reply
    (arriving by message) — "f1 succeeded, dispatch f2" — or a new saga's start — "dispatch
    f1" (started by message). A second coordinator (started beforehand, not consuming until the crash, so its
    start-up time does not count) re-publishes the outbox from its sweeper within the outbox
    grace + one sweeper period, and the step runs once."""
    name = ("f1", "f2", "f3")[step]
    fc.configure(
        sagas=crashing("sagas", f"{point}=kill:1"),
        sagas2=Spec("sagas"),
        inventory=Spec("inventory").with_env(**LOCAL_OFF),
    )
    standby = [fc.procs["sagas2"].nodename]
    fc.app.control.cancel_consumer("sagas", destination=standby, reply=True, timeout=5)
    # A start in the caller never reaches the coordinator: the start point needs the message.
    sid = (fc.send_start if point == "coordinator.start_after_commit" else fc.start)("fprobe", {})
    assert poll(lambda: not fc.procs["sagas"].alive(), 30), fc.log_tails()
    record, status, _ = fc.store.get(sid)
    assert record.outbox and record.outbox_at is not None, record
    # The crashed transition's dispatch is last. Before it may stand the start's dispatch of
    # f1: published, but its "sent" mark was still queued in the killed process (marks are
    # written within SAGAS_OUTBOX_CLEAR_DELAY), so this transition appended to it. The
    # sweeper re-publishes only what is still wanted: f1 has run, so that is one command.
    assert all(c["type"] == "dispatch" for c in record.outbox), record.outbox
    assert [c["step"] for c in record.outbox] in ([step], list(range(step + 1))), record.outbox
    assert fc.runs(sid, name) == []
    committed = record.outbox_at

    fc.app.control.add_consumer("sagas", destination=standby, reply=True, timeout=5)
    resumed = fc.db_now()
    record, status, history = fc.wait_for(sid, TERMINAL)
    assert record.state is SagaState.COMPLETED
    republished_ = kinds(history, HistoryKind.COMMANDS_REPUBLISHED)
    assert len(republished_) == 1, report.timeline(record, status, history)
    [republished] = republished_
    assert republished.detail == {"count": 1}
    bound = max(committed.timestamp() + OUTBOX_GRACE, resumed.timestamp()) + 2 * SWEEP_INTERVAL
    assert republished.at.timestamp() <= bound + 0.5, (committed, resumed, republished.at)
    assert len([h for h in kinds(history, HistoryKind.STEP_DISPATCHED) if h.step == name]) == 1
    assert [r.attempt for r in fc.runs(sid, name)] == [1]
    assert len(kinds(history, HistoryKind.SAGA_STARTED)) == 1
    assert fc.fx(sid) == FX


def test_coordinator_crash_after_publish_leaves_nothing_to_resend(fc: FaultCluster) -> None:
    """The coordinator publishes "dispatch f2" and dies before clearing the outbox. f2 runs and
    the saga completes without it; the stale outbox entry is cleared and never re-sent (f2 is no
    longer the open attempt), so nothing runs twice."""
    fc.configure(
        sagas=crashing("sagas", "coordinator.after_publish=kill:1"),
        inventory=Spec("inventory").with_env(**LOCAL_OFF),
    )
    sid = fc.start("fprobe", {})
    assert poll(lambda: not fc.procs["sagas"].alive(), 30), fc.log_tails()
    record, status, history = fc.wait_for(sid, TERMINAL)  # f2, f3 settle locally
    assert record.state is SagaState.COMPLETED
    fc.configure(inventory=Spec("inventory").with_env(**LOCAL_OFF))
    time.sleep(OUTBOX_GRACE + 2 * SWEEP_INTERVAL)
    record, status, history = fc.store.get(sid)
    assert record.outbox_at is None
    assert not kinds(history, HistoryKind.COMMANDS_REPUBLISHED)
    assert [len(fc.runs(sid, s)) for s in ("f1", "f2", "f3")] == [1, 1, 1]
    assert fc.fx(sid) == FX


# -- 4f. a lost reply --------------------------------------------------------------------------------


@pytest.mark.brokers("redis", "rabbitmq")
@pytest.mark.invariants(duplicate_runs=True, settle=45)
def test_lost_reply(fc: FaultCluster) -> None:
    """The payment worker runs f2 and exits before sending its reply (local transitions off:
    the reply is its only report). A new payment worker is started. On Redis the unacked command
    stays hidden (visibility timeout) and f2's timeout recovers it with attempt 2; RabbitMQ
    requeues it when the connection drops, so attempt 1 may simply run again. Either way f2
    takes effect once and the saga completes."""
    fc.configure(payment=crashing("payment", "participant.before_reply=exit:1"))
    sid = fc.start("fprobe", {})
    assert poll(lambda: not fc.procs["payment"].alive(), 30), fc.log_tails()
    assert [r.attempt for r in fc.runs(sid, "f2")] == [1]
    fc.configure()
    record, status, history = fc.wait_for(sid, TERMINAL, timeout=STEP_TIMEOUT + 30)
    assert record.state is SagaState.COMPLETED
    runs = [r.attempt for r in fc.runs(sid, "f2")]
    timed_out = [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_TIMED_OUT)]
    if fc.broker == "redis":
        assert runs == [1, 2] and timed_out == [("f2", 1)], (runs, timed_out)
    else:
        assert runs[:2] == [1, 1] or timed_out == [("f2", 1)], (runs, timed_out)
    assert [e[0] for e in fc.fx(sid)] == ["f1", "f2", "f3"]


# -- 3. services restarted mid-run -------------------------------------------------------------------


def _many(fc: FaultCluster, n: int) -> list[str]:
    ids = [fc.start("fprobe", {"sleep": {"f2": 0.3, "f3": 0.3}, "tag": str(i)}) for i in range(n)]
    # every start message consumed: the rows exist (a start still in the broker is the caller's)
    assert poll(lambda: fc.saga_rows(*ids) == n, 30)
    assert poll(lambda: fc.scalar("SELECT count(*) FROM fault_run") > 0, 10)
    return ids


def _all_completed(fc: FaultCluster, ids: list[str], timeout: float = 60) -> list[Any]:
    # Some Celery/kombu versions end a worker on a broker restart (kombu's Redis transport:
    # "Unrecoverable error: AttributeError(... 'hostname')" while restoring unacked messages on
    # a dead connection). A supervisor restarts it; so does the test, and says so.
    fc.supervise = True
    done = [fc.wait_for(sid, TERMINAL, timeout=timeout) for sid in ids]
    if fc.revived:
        print(f"[{fc.broker}] restarted after the outage (died by themselves): {fc.revived}")
    assert [d[0].state for d in done] == [SagaState.COMPLETED] * len(ids)
    return done


@pytest.mark.invariants(duplicate_runs=True, settle=60)
def test_redis_restarted_mid_run(fc: FaultCluster) -> None:
    """Redis restarts with no persistence: every queued and unacked message is gone. Timers
    and step timeouts in PostgreSQL re-drive every saga."""
    ids = _many(fc, 8)
    restart_service("redis", down_for=1.0)
    _all_completed(fc, ids)


@pytest.mark.brokers("rabbitmq")
@pytest.mark.invariants(duplicate_runs=True, settle=60)
def test_rabbitmq_restarted_mid_run(fc: FaultCluster) -> None:
    """RabbitMQ's app stops and starts (durable queues and persistent messages survive); the
    workers reconnect and every saga completes."""
    ids = _many(fc, 8)
    restart_service("rabbitmq")
    _all_completed(fc, ids)


@pytest.mark.invariants(duplicate_runs=True, settle=60)
def test_postgresql_restarted_mid_run(fc: FaultCluster) -> None:
    """PostgreSQL restarts while steps run and transitions commit: transitions that cannot
    reach the store are retried (coordinator tasks) or reported by message (participants), the
    probe's own writes fail and are retried per policy, and every saga completes."""
    ids = _many(fc, 8)
    restart_service("postgresql", down_for=1.0)
    _all_completed(fc, ids)


def _signal(saga_id: str, signal_id: str) -> str:
    """``sagas.signal`` as a caller would send it, riding out a store that is restarting."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return sagas.signal(saga_id, "go", {"by": "ops"}, signal_id=signal_id).outcome
        except sagas.StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.invariants(settle=60)
def test_postgresql_restarted_during_a_wait(fc: FaultCluster) -> None:
    """Sagas wait for a signal (a durable timer, no worker held) while PostgreSQL restarts;
    each signal, sent twice with one id, is delivered once, and every saga completes."""
    ids = [fc.start("fprobe_wait", {"tag": str(i)}) for i in range(4)]

    def waiting() -> bool:
        snaps = [fc.get(sid) for sid in ids]
        return all(s is not None and s[1].steps[1].state.value == "running" for s in snaps)

    assert poll(waiting, 30)
    restart_service("postgresql", down_for=1.0)
    outcomes = [(_signal(sid, f"go-{sid}"), _signal(sid, f"go-{sid}")) for sid in ids]
    assert outcomes == [("delivered", "duplicate")] * len(ids)
    done = _all_completed(fc, ids)
    for _record, status, history in done:
        assert status.steps[1].result == {"by": "ops"}
        assert [h.kind for h in history].count(HistoryKind.SIGNAL_RECEIVED) == 1


# -- 3b. the broker down when a saga is started ---------------------------------------------------


@pytest.mark.brokers("redis", "rabbitmq")
@pytest.mark.invariants(settle=60)
def test_broker_down_when_a_saga_is_started(fc: FaultCluster, capsys: Any) -> None:
    """With the broker down:

    - ``start_saga.delay(...)`` from a process with the store (the default: the start is
      recorded in the caller) and ``fprobe.start(...)`` in-process both commit the saga row
      (first command in its outbox) and then cannot publish. What each caller sees is recorded
      below; the sagas are recovered by the sweeper re-publishing the outbox once the broker
      is back.
    - A start by message (a client without the saga's definition or the store) raises
      ``kombu.exceptions.OperationalError`` once kombu's publish retries are spent: nothing was
      written, the web request fails and its retry (same ``saga_id``) starts the saga once.
    """
    by_delay, in_process = f"ft-delay-{uuid.uuid4().hex}", f"ft-inproc-{uuid.uuid4().hex}"
    by_message = f"ft-message-{uuid.uuid4().hex}"
    fc.started += [by_delay, in_process, by_message]
    seen: dict[str, Any] = {}
    starts: list[tuple[str, str, Callable[[str], Any]]] = [
        ("delay", by_delay, lambda sid: sagas.start_saga.delay("fprobe", DELAY, saga_id=sid)),
        ("start", in_process, lambda sid: fprobe.start({"tag": "inproc"}, saga_id=sid)),
    ]
    with outage(fc.broker):
        for label, saga_id, call in starts:
            t0 = time.monotonic()
            try:
                seen[label] = ("returned", type(call(saga_id)).__name__)
            except Exception as exc:  # noqa: BLE001 - recording what the caller sees
                seen[label] = ("raised", type(exc).__name__, str(exc)[:120])
            seen[f"{label}_seconds"] = round(time.monotonic() - t0, 1)
            record = fc.store.get(saga_id)[0]  # committed although nothing was published
            assert record.outbox and record.outbox_at is not None
        t0 = time.monotonic()
        with pytest.raises(OperationalError) as raised:
            fc.app.send_task(
                "sagas.start_saga", args=["fprobe", DELAY], kwargs={"saga_id": by_message}
            )
        seen["message"] = (type(raised.value).__name__, round(time.monotonic() - t0, 1))
        assert fc.saga_rows(by_message) == 0
    with capsys.disabled():
        print(f"\n[{fc.broker}] broker down at start: {seen}")
    fc.supervise = True  # see _all_completed

    for saga_id in (in_process, by_delay):
        record, status, history = fc.wait_for(saga_id, TERMINAL, timeout=60)
        assert record.state is SagaState.COMPLETED
        # The sweeper re-publishes the outbox — or, when the workers took longer to reconnect
        # than f1's step timeout, fires the timeout first and retries (the entry is then stale).
        republished = kinds(history, HistoryKind.COMMANDS_REPUBLISHED)
        timed_out = [(h.step, h.attempt) for h in kinds(history, HistoryKind.STEP_TIMED_OUT)]
        assert len(republished) == 1 or timed_out == [("f1", 1)], report.timeline(
            record, status, history
        )
        assert [r.attempt for r in fc.runs(saga_id, "f1")] == [status.steps[0].attempt]
    fc.start("fprobe", DELAY, saga_id=by_message)  # the web request's retry
    record, _, _ = fc.wait_for(by_message, TERMINAL, timeout=60)
    assert record.state is SagaState.COMPLETED
    # Both callers got the id, not an error, for a saga that was committed and will run: an
    # error would be a trap for a caller without its own saga_id (it cannot know the id).
    assert seen["delay"] == ("returned", "EagerResult"), seen
    assert seen["start"] == ("returned", "SagaHandle"), seen


DELAY = {"tag": "delay"}
