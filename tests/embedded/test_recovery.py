"""Operator recovery on the embedded runtime (a real coordinator, in-process worker, SQLite):
pause/resume, rerun from the failed step, fork with an edited payload, bulk actions, and every
kind of bad input refused with a typed error and nothing written."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import sagas
from sagas import PermanentError, RetryPolicy, Saga, SagaState, StepState, operations
from sagas.runtime import Runtime
from sagas.testing import embedded, wait_for
from workers.app import app


class Parcel(BaseModel):
    order_id: str
    city: str


HOLD = threading.Event()
UNSERVED: set[str] = set()
EFFECTS: Counter[tuple[str, str]] = Counter()

probe = Saga("recovery_probe", payload=Parcel)
undo_probe = Saga("recovery_undo_probe", payload=Parcel)


@probe.step(queue="rec_a", timeout=10, compensation=None)
def quote(ctx: Any) -> dict[str, Any]:
    EFFECTS[(ctx.saga_id, "quote")] += 1
    return {"price": 5, "quoted_for": ctx.saga_id}


@probe.step(queue="rec_b", timeout=10, retry=RetryPolicy(max_attempts=1), compensation=None)
def ship(ctx: Any) -> dict[str, str]:
    EFFECTS[(ctx.saga_id, "ship")] += 1
    if ctx.payload.city in UNSERVED:
        raise PermanentError(f"carrier does not serve {ctx.payload.city}")
    if ctx.payload.order_id.startswith("hold"):
        HOLD.wait(20)  # a step still running while the operator pauses the saga
    return {"label": f"{ctx.payload.city}:{ctx.idempotency_key}"}


@probe.step(queue="rec_a", timeout=10, compensation=None)
def notify(ctx: Any) -> None:
    EFFECTS[(ctx.saga_id, "notify")] += 1


def release(ctx: Any) -> None:
    EFFECTS[(ctx.saga_id, "release")] += 1


@undo_probe.step(queue="rec_a", timeout=10, compensation=release)
def reserve(ctx: Any) -> dict[str, str]:
    EFFECTS[(ctx.saga_id, "reserve")] += 1
    return {"reservation": ctx.saga_id}


@undo_probe.step(queue="rec_b", timeout=10, retry=RetryPolicy(max_attempts=1), compensation=None)
def deliver(ctx: Any) -> None:
    if ctx.payload.city in UNSERVED:
        raise PermanentError(f"carrier does not serve {ctx.payload.city}")


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("recovery") / "sagas.db"
    with embedded(app, database_url=f"sqlite:///{db}", sweep_interval=0.1) as runtime:
        yield runtime
    HOLD.set()


def _sid(prefix: str = "r") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _until(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _kinds(rt: Runtime, saga_id: str) -> list[str]:
    return [h.kind for h in rt.store.get(saga_id)[2]]


def test_pause_with_a_step_running_records_its_reply_then_resume_carries_on(rt: Runtime) -> None:
    HOLD.clear()
    sid = probe.start({"order_id": "hold-1", "city": "Paris"}, saga_id=_sid("hold"))
    _until(lambda: rt.store.get(sid)[1].steps[1].state is StepState.RUNNING)
    plan = sagas.pause(sid, reason="checking the carrier", by="ana", rt=rt)
    assert "ship is running: its reply is recorded, what follows it is held" in plan.text()
    HOLD.set()  # ship finishes while the saga is paused
    _until(lambda: "dispatch_held" in _kinds(rt, sid))
    record, status, _ = rt.store.get(sid)
    assert record.paused_at is not None and record.state is SagaState.PENDING
    assert status.steps[1].state is StepState.SUCCEEDED  # the running attempt's reply counted
    assert status.steps[2].state is StepState.PENDING and status.steps[2].attempt == 0
    assert record.wake_at is None  # the sweeper's scan does not reach it
    assert all(r.id != sid for r, _ in rt.store.stuck(older_than=0))  # not flagged stuck
    assert EFFECTS[(sid, "notify")] == 0
    info = sagas.get(sid, rt=rt)
    assert info.paused_at is not None and info.revision == record.lock_version

    resumed = sagas.resume(sid, reason="carrier fine", by="ana", revision=info.revision, rt=rt)
    assert resumed.lines[1] == "will run notify"
    assert wait_for(rt.store, sid, timeout=20).state is SagaState.COMPLETED
    kinds = _kinds(rt, sid)
    order = ["saga_paused", "dispatch_held", "saga_resumed", "saga_completed"]
    assert [k for k in kinds if k in order] == order
    history = rt.store.get(sid)[2]
    paused = next(h for h in history if h.kind == "saga_paused")
    assert paused.detail == {"by": "ana", "reason": "checking the carrier"}
    assert EFFECTS[(sid, "notify")] == 1 and EFFECTS[(sid, "ship")] == 1


def test_rerun_a_failed_saga_from_its_failed_step_in_the_same_saga(rt: Runtime) -> None:
    UNSERVED.add("Atlantis")
    sid = probe.start({"order_id": "o-2", "city": "Atlantis"}, saga_id=_sid())
    assert wait_for(rt.store, sid, timeout=20).state is SagaState.FAILED
    UNSERVED.discard("Atlantis")  # the carrier now serves it
    plan = sagas.preview(sid, "rerun", reason="carrier added Atlantis", by="ana", rt=rt)
    assert plan.refused is None and plan.reruns == ("ship",)
    assert f"with the same idempotency key {sid}:ship" in plan.text()
    assert "steps before it stand and are not run again: quote" in plan.text()
    sagas.carry_out(plan, rt=rt)
    assert wait_for(rt.store, sid, timeout=20).state is SagaState.COMPLETED
    record, status, history = rt.store.get(sid)
    assert record.finished_at is not None and record.failure is None
    assert status.steps[1].attempt == 2  # the new attempt counts on in the same saga
    ships = [(h.kind, h.attempt) for h in history if h.step == "ship"]
    assert ("step_failed", 1) in ships and ("step_succeeded", 2) in ships
    rerun = next(h for h in history if h.kind == "operator_rerun")
    assert rerun.detail is not None and rerun.detail["by"] == "ana"
    assert [h.kind for h in history].index("saga_failed") < [h.kind for h in history].index(
        "operator_rerun"
    )
    assert EFFECTS[(sid, "quote")] == 1  # not run again


def test_fork_a_failed_saga_with_an_edited_payload(rt: Runtime) -> None:
    UNSERVED.add("Atlantis")
    sid = undo_probe.start({"order_id": "o-3", "city": "Atlantis"}, saga_id=_sid())
    assert wait_for(rt.store, sid, timeout=20).state is SagaState.FAILED
    assert EFFECTS[(sid, "release")] == 1
    with pytest.raises(sagas.ActionRefused, match="'reserve' was compensated.*fork"):
        sagas.rerun(sid, reason="x", by="ana", rt=rt)
    refused = sagas.preview(sid, "fork", from_step="deliver", reason="x", by="ana", rt=rt)
    assert refused.refused is not None and "'reserve' is compensated" in refused.refused

    before = sagas.get(sid, rt=rt)
    plan = sagas.preview(
        sid,
        "fork",
        from_step="reserve",
        changes={"city": "Lyon"},
        reason="customer corrected the city (ticket 9)",
        by="ana",
        revision=before.revision,
        rt=rt,
    )
    assert plan.fork is not None and plan.fork.saga_id == f"{sid}.fork1"
    assert "payload city: 'Atlantis' -> 'Lyon'" in plan.text()
    sagas.carry_out(plan, rt=rt)
    child = plan.fork.saga_id
    assert wait_for(rt.store, child, timeout=20).state is SagaState.COMPLETED
    original, forked = sagas.get(sid, rt=rt), sagas.get(child, rt=rt)
    assert forked.forked_from == sid and original.forks == (child,)
    assert forked.payload == {"order_id": "o-3", "city": "Lyon"}
    assert forked.correlation_id == original.correlation_id
    assert original.state is SagaState.FAILED and original.payload["city"] == "Atlantis"
    link_to = next(h for h in original.history if h.kind == "forked_to")
    link_from = forked.history[0]
    assert link_from.kind == "forked_from"
    changes = {"city": {"old": "Atlantis", "new": "Lyon"}}
    for link in (link_to, link_from):
        assert link.detail is not None
        assert link.detail["by"] == "ana" and link.detail["changes"] == changes
        assert link.detail["reason"] == "customer corrected the city (ticket 9)"
    assert link_to.detail["saga_id"] == child and link_from.detail["saga_id"] == sid  # type: ignore[index]
    UNSERVED.discard("Atlantis")


def test_a_fork_reuses_the_recorded_results_before_its_step(rt: Runtime) -> None:
    sid = probe.start({"order_id": "o-4", "city": "Oslo"}, saga_id=_sid())
    assert wait_for(rt.store, sid, timeout=20).state is SagaState.COMPLETED
    plan = sagas.fork(sid, "ship", reason="relabel", by="ana", new_id=f"{sid}-again", rt=rt)
    child = plan.fork.saga_id  # type: ignore[union-attr]
    assert plan.fork.reused == ("quote",)  # type: ignore[union-attr]
    assert wait_for(rt.store, child, timeout=20).state is SagaState.COMPLETED
    info = sagas.get(child, rt=rt)
    assert EFFECTS[(child, "quote")] == 0 and EFFECTS[(child, "ship")] == 1
    assert info.step("quote").result == {"price": 5, "quoted_for": sid}
    assert info.step("ship").result == {"label": f"Oslo:{child}:ship"}  # its own key


def test_bad_input_is_a_typed_error_and_changes_nothing(rt: Runtime) -> None:
    with pytest.raises(sagas.SagaNotFound):
        sagas.preview("no-such-saga", "cancel", reason="x", by="ana", rt=rt)
    with pytest.raises(sagas.SagaNotFound):
        operations.cancel("no-such-saga", reason="x", by="ana", rt=rt)
    with pytest.raises(sagas.InvalidSagaId):
        sagas.pause("bad id!", reason="x", by="ana", rt=rt)
    sid = probe.start({"order_id": "o-5", "city": "Rome"}, saga_id=_sid())
    assert wait_for(rt.store, sid, timeout=20).state is SagaState.COMPLETED
    seen = sagas.get(sid, rt=rt)
    with pytest.raises(sagas.ActionRefused, match="nothing to resume.*not paused"):
        sagas.resume(sid, reason="x", by="ana", rt=rt)
    with pytest.raises(sagas.ActionRefused, match="nothing to cancel.*completed"):
        operations.cancel(sid, reason="x", by="ana", rt=rt)
    with pytest.raises(sagas.SagaChanged) as stale:
        sagas.fork(sid, "ship", reason="x", by="ana", revision=seen.revision - 1, rt=rt)
    assert (stale.value.expected, stale.value.actual) == (seen.revision - 1, seen.revision)
    with pytest.raises(sagas.StepUnknown) as unknown:
        sagas.fork(sid, "shipp", reason="x", by="ana", rt=rt)
    assert unknown.value.field == "from_step" and "quote, ship, notify" in str(unknown.value)
    with pytest.raises(sagas.PayloadInvalid) as wrong_type:
        sagas.fork(sid, "ship", changes={"city": 7}, reason="x", by="ana", rt=rt)
    assert wrong_type.value.field == "payload.city"
    with pytest.raises(sagas.PayloadInvalid) as no_field:
        sagas.fork(sid, "ship", changes={"cty": "Lyon"}, reason="x", by="ana", rt=rt)
    assert no_field.value.field == "payload.cty"
    with pytest.raises(sagas.SagaInputError) as no_reason:
        sagas.pause(sid, reason=" ", by="ana", rt=rt)
    assert no_reason.value.field == "reason"
    after = sagas.get(sid, rt=rt)
    assert after.revision == seen.revision and after.history == seen.history
    assert after.forks == ()


def test_a_stale_revision_refuses_a_cancel_of_a_saga_that_moved(rt: Runtime) -> None:
    HOLD.clear()
    sid = probe.start({"order_id": "hold-6", "city": "Paris"}, saga_id=_sid("hold"))
    _until(lambda: rt.store.get(sid)[1].steps[1].state is StepState.RUNNING)
    plan = sagas.preview(sid, "cancel", reason="customer called", by="ana", rt=rt)
    HOLD.set()  # the saga moves on before the operator confirms
    assert wait_for(rt.store, sid, timeout=20).state is SagaState.COMPLETED
    with pytest.raises(sagas.SagaChanged, match="changed since revision"):
        sagas.carry_out(plan, rt=rt)
    assert "cancel_requested" not in _kinds(rt, sid)


def test_bulk_resume_after_a_dry_run(rt: Runtime) -> None:
    HOLD.clear()
    ids = [
        probe.start({"order_id": f"hold-b{i}", "city": "Paris"}, saga_id=_sid("hold"))
        for i in range(3)
    ]
    for sid in ids:
        _until(lambda sid=sid: rt.store.get(sid)[1].steps[1].state is StepState.RUNNING)
        sagas.pause(sid, reason="carrier incident", by="ana", rt=rt)
    HOLD.set()
    for sid in ids:
        _until(lambda sid=sid: "dispatch_held" in _kinds(rt, sid))
    dry = sagas.bulk(
        "resume", [*ids, "no-such-saga"], reason="incident over", by="ana", dry_run=True, rt=rt
    )
    assert (dry.planned, dry.refused, dry.done) == (3, 1, 0)
    assert all(rt.store.get(sid)[0].paused_at is not None for sid in ids)  # nothing changed
    seen: list[str] = []
    done = sagas.bulk(
        "resume",
        ids,
        reason="incident over",
        by="ana",
        progress=lambda i: seen.append(i.saga_id),
        rt=rt,
    )
    assert done.done == 3 and seen == ids
    for sid in ids:
        assert wait_for(rt.store, sid, timeout=20).state is SagaState.COMPLETED
    with pytest.raises(sagas.SagaInputError) as wrong:
        sagas.bulk("fork", ids, reason="x", by="ana", rt=rt)
    assert wrong.value.field == "action"
