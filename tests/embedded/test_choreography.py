"""Choreographed sagas on the embedded default (in-memory broker, in-process worker, SQLite),
plus the event runner driven directly against a real SQLite store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

import sagas
from sagas import RetryPolicy, SagaState, StepState, TransientError, starter
from sagas.choreography import Choreography, Handler
from sagas.choreography.runner import deliver, event_id_for
from sagas.messages import EventMessage
from sagas.observability import metrics
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.store import Store
from sagas.store.migrate import upgrade
from sagas.testing import embedded, wait_for
from workers.app import app

ORDER: dict[str, Any] = {
    "order_id": "A-1",
    "email": "ada@example.com",
    "card_number": "4242424242424242",
    "items": [{"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250}],
    "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
}


class Tick(BaseModel):
    n: int


CALLS: list[str] = []


def first(ctx: Any) -> dict[str, int]:
    CALLS.append(f"first:{ctx.saga_id}")
    return {"n": ctx.payload.n}


def undo_first(ctx: Any) -> None:
    CALLS.append(f"undo_first:{ctx.saga_id}")


def never_answers(ctx: Any) -> None:
    raise TransientError("downstream is down")  # retried only after a minute: times out first


stall = Choreography(
    "stall_choreography",
    payload=Tick,
    starts_on="tick.started",
    completes_on="tick.done",
    handlers=[
        Handler(
            "first",
            service="svc_one",
            on="tick.started",
            emits="tick.first",
            fn=first,
            fails_with="tick.first_failed",
            compensation=undo_first,
            compensate_on=("tick.second_failed",),
        ),
        Handler(
            "second",
            service="svc_two",
            on="tick.first",
            emits="tick.done",
            fn=never_answers,
            fails_with="tick.second_failed",
            compensation=None,
            timeout=0.3,
            fail_on_timeout=True,
            retry=RetryPolicy.build(max_attempts=3, initial=60),
        ),
    ],
)

flag_only = Choreography(
    "flag_only_choreography",
    payload=Tick,
    starts_on="flag.started",
    completes_on="flag.done",
    handlers=[
        Handler(
            "waits",
            service="svc_one",
            on="flag.started",
            emits="flag.done",
            fn=never_answers,
            compensation=None,
            timeout=0.3,
            retry=RetryPolicy.build(max_attempts=3, initial=60),
        ),
    ],
)


def refuses(ctx: Any) -> None:
    from sagas import PermanentError

    raise PermanentError("no such account")


no_failure_event = Choreography(
    "no_failure_event_choreography",
    payload=Tick,
    starts_on="nofail.started",
    completes_on="nofail.done",
    handlers=[
        Handler(
            "refuses",
            service="svc_one",
            on="nofail.started",
            emits="nofail.done",
            fn=refuses,
            compensation=None,
        ),
    ],
)


def _sid() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("choreo") / "sagas.db"
    with embedded(app, database_url=f"sqlite:///{db}", sweep_interval=0.1) as runtime:
        yield runtime


def _kinds(rt: Runtime, saga_id: str) -> list[tuple[str, str | None]]:
    return [(h.kind, h.step or (h.detail or {}).get("event")) for h in rt.store.get(saga_id)[2]]


def test_happy_path_records_every_event_in_the_saga_tables(rt: Runtime) -> None:
    saga_id = sagas.get_saga("order_choreography").start(ORDER, saga_id=_sid())
    record = wait_for(rt.store, saga_id, timeout=20)
    assert record.state is SagaState.COMPLETED and record.kind == "choreographed"
    published = [e for k, e in _kinds(rt, saga_id) if k == "event_published"]
    assert published == [
        "order.created",
        "inventory.reserved",
        "payment.processed",
        "shipment.created",
        "order.fulfilled",
    ]


@pytest.mark.parametrize(
    "change, failed_step, compensated_in_order",
    [
        ({"items": [{"sku": "X", "quantity": 5000, "unit_cents": 1}]}, "reserve_inventory", []),
        ({"card_number": "4000000000000002"}, "charge_payment", ["reserve_inventory"]),
        (
            {"simulate": {"undeliverable": True}},
            "create_shipment",
            ["charge_payment", "reserve_inventory"],
        ),
    ],
)
def test_failure_at_each_stage_compensates_completed_handlers_newest_first(
    rt: Runtime, change: dict[str, Any], failed_step: str, compensated_in_order: list[str]
) -> None:
    sid = _sid()
    sagas.start_saga.delay("order_choreography", {**ORDER, **change}, saga_id=sid)
    record = wait_for(rt.store, sid, timeout=20)
    _, status, _ = rt.store.get(sid)
    assert record.state is SagaState.FAILED
    assert {s.name: s.state for s in status.steps}[failed_step] is StepState.FAILED
    order = [step for kind, step in _kinds(rt, sid) if kind == "step_compensated"]
    assert order == compensated_in_order


def test_missing_event_times_out_and_publishes_the_failure_event(rt: Runtime) -> None:
    saga_id = stall.start({"n": 1}, saga_id=_sid())
    record = wait_for(rt.store, saga_id, timeout=20)
    assert record.state is SagaState.FAILED
    kinds = _kinds(rt, saga_id)
    assert ("saga_stuck", "second") in kinds
    assert ("event_published", "tick.second_failed") in kinds
    assert ("step_compensated", "first") in kinds
    assert CALLS.count(f"undo_first:{saga_id}") == 1
    assert rt.store.get(saga_id)[1].steps[1].state is StepState.TIMED_OUT


def test_missing_event_without_a_failure_event_is_flagged_stuck(rt: Runtime) -> None:
    saga_id = flag_only.start({"n": 1}, saga_id=_sid())
    record = wait_for(rt.store, saga_id, timeout=20, parked=True)
    assert record.parked and record.state is SagaState.PENDING
    assert ("saga_stuck", "waits") in _kinds(rt, saga_id)


def test_a_handler_failing_for_good_without_a_failure_event_is_parked_at_once(
    rt: Runtime,
) -> None:
    """Nothing compensates and nothing announces the failure: the saga is parked for an
    operator now (not once the stuck threshold passed) and listed as needing attention."""
    saga_id = no_failure_event.start({"n": 1}, saga_id=_sid())
    record = wait_for(rt.store, saga_id, timeout=20, states=(), parked=True)
    assert record.state is SagaState.PENDING
    [parked] = [h for h in rt.store.get(saga_id)[2] if h.kind == "step_parked"]
    assert parked.step == "refuses" and "fails_with" in (parked.detail or {})["reason"]
    assert saga_id in [r.id for r, _ in rt.store.stuck(older_than=3600)]


# -- the runner against a real store, messages delivered by hand --------------------------------


@dataclass
class Recorder:
    sent: list[dict[str, Any]] = field(default_factory=list)

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        self.sent.append({"name": name, "args": args, "options": options})


@pytest.fixture
def direct(tmp_path: Any) -> Runtime:
    store = Store(f"sqlite:///{tmp_path / 'direct.db'}")
    upgrade(store.engine)
    return Runtime(settings=Settings(database_url="sqlite://"), store=store, app=Recorder())


def _start(direct: Runtime) -> tuple[str, dict[str, Any]]:
    saga_id = starter.start(stall, {"n": 7}, saga_id=_sid(), rt=direct)
    message = direct.app.sent[-1]["args"][0]
    assert (
        message["name"] == "tick.started"
        and direct.app.sent[-1]["options"]["routing_key"] == "tick.started"
    )
    return saga_id, message


def test_a_duplicated_event_has_no_second_effect(direct: Runtime) -> None:
    saga_id, message = _start(direct)
    deliver(message, rt=direct, consumed=["sagas.events"])
    deliver(message, rt=direct, consumed=["sagas.events"])
    assert CALLS.count(f"first:{saga_id}") == 1
    published = [m["args"][0]["name"] for m in direct.app.sent]
    assert published == ["tick.started", "tick.first"]  # the duplicate emitted nothing
    kinds = [h.kind for h in direct.store.get(saga_id)[2]]
    assert kinds.count("event_duplicate") == 1


def test_an_event_after_the_saga_ended_is_recorded_and_ignored(direct: Runtime) -> None:
    saga_id, message = _start(direct)
    with direct.store.transaction() as tx:
        from sqlalchemy import update

        from sagas.store.schema import saga_table

        tx.conn.execute(update(saga_table).where(saga_table.c.id == saga_id).values(state="failed"))
    before = direct.store.get(saga_id)[1]
    deliver(message, rt=direct, consumed=["sagas.events"])
    record, after, history = direct.store.get(saga_id)
    assert after == before and CALLS.count(f"first:{saga_id}") == 0
    assert history[-1].kind == "event_ignored"


def test_an_event_for_an_unknown_saga_is_kept_as_orphaned(direct: Runtime) -> None:
    message = EventMessage(
        name="tick.started",
        saga_id="nobody-knows",
        event_id=event_id_for("x", "y", "z"),
        choreography="stall_choreography",
        correlation_id="c1",
        data={"n": 1},
    ).model_dump(mode="json")
    deliver(message, rt=direct, consumed=["sagas.events"])
    deliver(message, rt=direct, consumed=["sagas.events"])
    orphans = direct.store.orphans()
    assert [(o["saga_id"], o["name"], o["service"]) for o in orphans] == [
        ("nobody-knows", "tick.started", "svc_one")
    ]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.pop("saga_id"),
        lambda m: m.update(name="tick.unheard_of"),
        lambda m: m.update(name="Not An Event"),
        lambda m: m.update(data={"x": float("nan")}),
        lambda m: m.update(choreography="no_such_choreography"),
        lambda m: m.update(extra_field=1),
    ],
)
def test_malformed_events_are_counted_and_change_nothing(direct: Runtime, mutate: Any) -> None:
    saga_id, message = _start(direct)
    before = direct.store.get(saga_id)
    bad = dict(message)
    mutate(bad)
    count = metrics.get("sagas_bad_events_total")
    deliver(bad, rt=direct, consumed=["sagas.events"])
    assert metrics.get("sagas_bad_events_total") == count + 1
    assert direct.store.get(saga_id) == before
    assert len(direct.app.sent) == 1
