"""sagas.receipts on SQLite and PostgreSQL: a step's effect happens once per (saga, step, action).

Each test drives the helper the way a participant does - a StepContext per delivery - and counts
rows in the service's own ``effects`` table, written on the receipt's connection.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import insert

from sagas import Action, PayloadNotJSON, PermanentError, StepContext, TransientError
from sagas.receipts import AlreadyCompensated, Receipt, ReceiptNotRecorded
from tests.receipts.conftest import ServiceDb, effects


class Payload(BaseModel):
    amount: int = 10


def ctx(saga_id: str, action: Action = Action.FORWARD, attempt: int = 1) -> StepContext[Any]:
    key = f"{saga_id}:charge" + (":compensate" if action is Action.COMPENSATE else "")
    return StepContext(
        saga_id=saga_id,
        saga_name="receipts_test",
        step="charge",
        action=action,
        attempt=attempt,
        payload=Payload(),
        results={},
        idempotency_key=key,
        correlation_id="corr",
        deadline_at=None,
    )


def sid() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


class Service:
    """A step and its compensation using the decorator; counts how often each body runs."""

    def __init__(self, db: ServiceDb, *, pause: float = 0.0) -> None:
        self.calls: list[str] = []
        self.pause = pause
        self._lock = threading.Lock()

        @db.receipts.exactly_once
        def charge(c: StepContext[Any], r: Receipt) -> dict[str, Any]:
            with self._lock:
                self.calls.append("charge")
            r.connection.execute(insert(effects).values(saga_id=c.saga_id, kind="charge"))
            time.sleep(self.pause)  # hold the transaction open: duplicates arrive meanwhile
            return {"charge_id": f"ch-{uuid.uuid4().hex[:8]}", "attempt": c.attempt}

        @db.receipts.exactly_once
        def refund(c: StepContext[Any], r: Receipt) -> dict[str, Any]:
            with self._lock:
                self.calls.append("refund")
            if not r.forward_done:
                return {"refunded": None}
            r.connection.execute(insert(effects).values(saga_id=c.saga_id, kind="refund"))
            return {"refunded": r.forward_result["charge_id"]}

        self.charge, self.refund = charge, refund


def test_same_command_twice_applies_the_effect_once(db: ServiceDb) -> None:
    s, saga_id = Service(db), sid()
    first = s.charge(ctx(saga_id))
    again = s.charge(ctx(saga_id))  # redelivery of the same command
    retry = s.charge(ctx(saga_id, attempt=2))  # a retry after a lost reply: same key
    assert again == first and retry == first
    assert first["attempt"] == 1
    assert s.calls == ["charge"]
    assert db.effects(saga_id) == 1
    row = db.receipts.get(saga_id, "charge")
    assert row is not None and row.state == "done" and row.result == first


def test_context_manager_spelling(db: ServiceDb) -> None:
    saga_id, runs = sid(), []
    for _ in range(2):
        with db.receipts.once(ctx(saga_id)) as r:
            if r.done:
                runs.append(("done", r.result))
                continue
            r.connection.execute(insert(effects).values(saga_id=saga_id, kind="charge"))
            runs.append(("applied", r.record({"n": 1})))
    assert runs == [("applied", {"n": 1}), ("done", {"n": 1})]
    assert db.effects(saga_id) == 1


def test_concurrent_duplicates_apply_the_effect_once(db: ServiceDb) -> None:
    s, saga_id = Service(db, pause=0.3), sid()
    results: list[Any] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def worker() -> None:
        gate.wait()
        try:
            results.append(s.charge(ctx(saga_id)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(results) == 4 and all(r == results[0] for r in results)
    assert s.calls == ["charge"]  # the others waited on the key, then saw the receipt
    assert db.effects(saga_id) == 1


def test_an_effect_that_raises_records_nothing_and_a_retry_applies_it(db: ServiceDb) -> None:
    saga_id, attempts = sid(), []

    @db.receipts.exactly_once
    def flaky(c: StepContext[Any], r: Receipt) -> dict[str, int]:
        attempts.append(c.attempt)
        r.connection.execute(insert(effects).values(saga_id=c.saga_id, kind="charge"))
        if c.attempt == 1:
            raise TransientError("gateway timeout")
        return {"attempt": c.attempt}

    with pytest.raises(TransientError):
        flaky(ctx(saga_id, attempt=1))
    assert db.effects(saga_id) == 0 and db.receipt_rows(saga_id) == 0
    assert flaky(ctx(saga_id, attempt=2)) == {"attempt": 2}
    assert flaky(ctx(saga_id, attempt=3)) == {"attempt": 2}
    assert attempts == [1, 2]
    assert db.effects(saga_id) == 1


def test_compensation_after_a_forward_that_never_happened_has_nothing_to_undo(
    db: ServiceDb,
) -> None:
    s, saga_id = Service(db), sid()
    assert s.refund(ctx(saga_id, Action.COMPENSATE)) == {"refunded": None}
    assert db.effects(saga_id) == 0
    forward = db.receipts.get(saga_id, "charge", Action.FORWARD)
    assert forward is not None and forward.state == "voided"  # the tombstone


def test_compensation_after_a_committed_forward_sees_it_and_runs_once(db: ServiceDb) -> None:
    s, saga_id = Service(db), sid()
    charged = s.charge(ctx(saga_id))
    # The coordinator may only know the step timed out (ctx.result None): the receipt knows.
    assert s.refund(ctx(saga_id, Action.COMPENSATE)) == {"refunded": charged["charge_id"]}
    assert s.refund(ctx(saga_id, Action.COMPENSATE, attempt=2)) == {
        "refunded": charged["charge_id"]
    }
    assert s.calls == ["charge", "refund"]
    assert db.effects(saga_id, "refund") == 1
    forward = db.receipts.get(saga_id, "charge")
    assert forward is not None and forward.state == "compensated"


@pytest.mark.parametrize("forward_ran", [False, True])
def test_a_late_forward_after_its_compensation_is_not_applied(
    db: ServiceDb, forward_ran: bool
) -> None:
    s, saga_id = Service(db), sid()
    if forward_ran:
        s.charge(ctx(saga_id))
    s.refund(ctx(saga_id, Action.COMPENSATE))
    before = db.effects(saga_id, "charge")
    with pytest.raises(AlreadyCompensated) as info:
        s.charge(ctx(saga_id, attempt=2))  # the timed-out command finally delivered
    assert isinstance(info.value, PermanentError)
    assert "compensation already ran" in str(info.value)
    assert db.effects(saga_id, "charge") == before == (1 if forward_ran else 0)
    assert s.calls.count("charge") == before


def test_a_compensation_arriving_while_the_forward_runs_waits_and_sees_it(
    db: ServiceDb,
) -> None:
    s, saga_id = Service(db, pause=0.5), sid()
    out: dict[str, Any] = {}
    forward = threading.Thread(target=lambda: out.update(charge=s.charge(ctx(saga_id))))
    forward.start()
    time.sleep(0.15)  # the forward holds its uncommitted receipt
    out["refund"] = s.refund(ctx(saga_id, Action.COMPENSATE))
    forward.join(10)
    assert out["refund"] == {"refunded": out["charge"]["charge_id"]}
    assert db.effects(saga_id, "refund") == 1


@pytest.mark.parametrize(
    "result",
    [
        {"amount": float("nan")},
        {1: "int key"},
        {"tags": {"a", "b"}},
        {"blob": b"bytes"},
        {"text": "nul\x00"},
    ],
    ids=["nan", "int-key", "set", "bytes", "nul"],
)
def test_a_non_json_result_is_rejected_and_nothing_is_written(db: ServiceDb, result: Any) -> None:
    saga_id = sid()

    @db.receipts.exactly_once
    def bad(c: StepContext[Any], r: Receipt) -> Any:
        r.connection.execute(insert(effects).values(saga_id=c.saga_id, kind="charge"))
        return result

    with pytest.raises(PayloadNotJSON) as info:
        bad(ctx(saga_id))
    assert info.value.field is not None and info.value.field.startswith("charge result")
    assert db.effects(saga_id) == 0 and db.receipt_rows(saga_id) == 0


def test_a_deeply_nested_result_is_rejected_without_recursion_error(db: ServiceDb) -> None:
    saga_id = sid()
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(PayloadNotJSON):
        with db.receipts.once(ctx(saga_id)) as r:
            r.record({"deep": deep})
    assert db.receipt_rows(saga_id) == 0


def test_leaving_the_block_without_recording_rolls_the_effect_back(db: ServiceDb) -> None:
    saga_id = sid()
    with pytest.raises(ReceiptNotRecorded):
        with db.receipts.once(ctx(saga_id)) as r:
            r.connection.execute(insert(effects).values(saga_id=saga_id, kind="charge"))
    assert db.effects(saga_id) == 0 and db.receipt_rows(saga_id) == 0


def test_a_late_forward_is_reported_by_the_participant_as_a_permanent_error(
    db: ServiceDb,
) -> None:
    """Through the real participant runner: the reply the coordinator gets is clear."""
    from sagas import Saga
    from sagas.messages import StepCommand
    from sagas.participant import run_step

    name = f"receipts_probe_{db.backend}"
    saga: Saga[Payload] = Saga(name, payload=Payload, register=False)
    s, saga_id = Service(db), sid()
    saga.step(queue="payment", compensation=s.refund, name="charge")(s.charge)
    s.refund(ctx(saga_id, Action.COMPENSATE))
    command = StepCommand(
        saga_id=saga_id,
        saga=name,
        version=1,
        step="charge",
        action=Action.FORWARD,
        attempt=1,
        correlation_id="corr",
        payload={"amount": 10},
    )
    reply = run_step(saga, saga.step_def("charge"), s.charge, command)
    assert not reply.ok and reply.retryable is False
    assert reply.error_type == "AlreadyCompensated"
    assert db.effects(saga_id, "charge") == 0


def test_a_remote_steps_celery_task_can_use_its_saga_keyword_dict(db: ServiceDb) -> None:
    """A plain Celery task named by string receives ``saga=<dict>``; that dict is enough."""
    from sagas import Saga
    from sagas.messages import StepCommand
    from sagas.transport import remote_arguments

    saga: Saga[Payload] = Saga(f"receipts_remote_{db.backend}", payload=Payload, register=False)
    step = saga.remote_step("notify", task="mail.send", queue="mail", compensation="mail.recall")
    saga_id = sid()

    def kwargs(action: Action, attempt: int) -> dict[str, Any]:
        command = StepCommand(
            saga_id=saga_id,
            saga=saga.name,
            version=1,
            step="notify",
            action=action,
            attempt=attempt,
            correlation_id="corr",
            payload={"amount": 10},
        )
        return remote_arguments(step, command, Payload, "sagas")

    def send(payload: dict[str, Any], saga: dict[str, Any]) -> Any:  # the remote task's body
        with db.receipts.once(saga) as r:
            if r.done:
                return r.result
            r.connection.execute(insert(effects).values(saga_id=saga["saga_id"], kind="mail"))
            return r.record({"sent": True, "attempt": saga["attempt"]})

    assert send(**kwargs(Action.FORWARD, 1)) == {"sent": True, "attempt": 1}
    assert send(**kwargs(Action.FORWARD, 2)) == {"sent": True, "attempt": 1}
    assert db.effects(saga_id, "mail") == 1
    with db.receipts.once(kwargs(Action.COMPENSATE, 1)["saga"]) as r:
        assert r.forward_done is True and r.forward_result == {"sent": True, "attempt": 1}
        r.record(None)
    with pytest.raises(AlreadyCompensated):
        send(**kwargs(Action.FORWARD, 3))
