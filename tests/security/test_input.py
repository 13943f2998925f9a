"""Bad start requests: payloads that are not objects, hostile nesting, a reused saga id.

Each is tried where a caller meets the engine: ``Saga.start`` (a process with the store),
``start_saga.delay`` (a web app with the definition: validated in the caller) and
``send_task("sagas.start_saga")`` (a client without it: the coordinator must reject it).
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sagas import (
    PayloadInvalid,
    PayloadNotJSON,
    SagaConflict,
    SagaNotFound,
    SagaState,
    get_saga,
    start_saga,
    starter,
)
from sagas.observability import metrics
from sagas.payload import check_json, validate_payload
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.store import Store, migrate
from sagas.testing import wait_for
from tests.security.conftest import eventually, sid
from tests.security.probe import Probe
from tests.services import scratch_database
from workers.app import app

LIMITS: dict[str, Any] = {"saga": "security_probe", "max_bytes": 10**9}
NOT_OBJECTS: list[Any] = [[], [{"text": "x"}], "text", "", None, 42, 4.2, True]


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def nested_dicts(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("payload", NOT_OBJECTS, ids=[repr(p)[:12] for p in NOT_OBJECTS])
def test_a_payload_that_is_not_an_object_is_rejected_naming_payload(
    rt: Runtime, payload: Any
) -> None:
    saga_id = sid()
    with pytest.raises(PayloadInvalid) as info:
        get_saga("security_probe").start(payload, saga_id=saga_id)
    assert info.value.field == "payload" and "JSON object" in str(info.value)
    with pytest.raises(PayloadInvalid) as info:
        start_saga.delay("security_probe", payload, saga_id=saga_id)
    assert info.value.field == "payload"
    with pytest.raises(SagaNotFound):
        rt.store.get(saga_id)


def test_the_coordinator_rejects_non_object_payloads_sent_by_name(rt: Runtime) -> None:
    before = metrics.get("sagas_start_rejected_total", reason="PayloadInvalid")
    ids = [sid() for _ in NOT_OBJECTS]
    for saga_id, payload in zip(ids, NOT_OBJECTS, strict=True):
        app.send_task(
            "sagas.start_saga", args=["security_probe", payload], kwargs={"saga_id": saga_id}
        )
    target = before + len(NOT_OBJECTS)
    eventually(
        lambda: metrics.get("sagas_start_rejected_total", reason="PayloadInvalid") >= target,
        what="every rejection to be counted",
    )
    for saga_id in ids:
        with pytest.raises(SagaNotFound):
            rt.store.get(saga_id)


@pytest.mark.parametrize("depth", [10_000, 1_000_000])
def test_deep_nesting_is_a_clear_error_never_a_recursion_error(rt: Runtime, depth: int) -> None:
    deep = nested_lists(depth)
    saga_id = sid()
    for start in (
        lambda p: get_saga("security_probe").start(p, saga_id=saga_id),
        lambda p: start_saga.delay("security_probe", p, saga_id=saga_id),
    ):
        with pytest.raises(PayloadNotJSON) as info:
            start({"text": "x", "mode": "ok", "extra": deep})
        assert "nested deeper than" in str(info.value)
        assert info.value.field is not None and info.value.field.startswith("payload.extra[0]")
        # Not an object at all, however deep: the type check comes first.
        with pytest.raises(PayloadInvalid):
            start(deep)
    # The depth limit cannot be configured past what json.dumps and pydantic can nest (a limit
    # of 100_000 once let a 2_000-deep payload through to a RecursionError in the encoder).
    with pytest.raises(ValidationError):
        Settings(max_payload_depth=100_000)
    top = Settings.model_fields["max_payload_depth"].metadata
    limit = max(getattr(m, "le", 0) or 0 for m in top)
    assert validate_payload(Probe, {"extra": nested_lists(limit - 2)}, **LIMITS, max_depth=limit)
    with pytest.raises(PayloadNotJSON):
        validate_payload(Probe, {"extra": deep}, **LIMITS, max_depth=limit)
    if depth <= 10_000:
        with pytest.raises(PayloadNotJSON):
            check_json(nested_dicts(depth))
    with pytest.raises(SagaNotFound):
        rt.store.get(saga_id)


def test_a_deeply_nested_step_result_fails_the_step_cleanly(rt: Runtime) -> None:
    saga_id = get_saga("security_probe").start({"mode": "deep"}, saga_id=sid())
    record = wait_for(rt.store, saga_id, timeout=10)
    assert record.state is SagaState.FAILED
    assert record.failure is not None and record.failure.type == "StepResultNotJSON"
    assert "nested deeper than" in record.failure.message


def _snapshot(store: Store, saga_id: str) -> Any:
    record, status, history = store.get(saga_id)
    return record, status, [(h.id, h.kind, h.step, h.attempt, h.detail) for h in history]


def test_the_same_saga_id_with_another_payload_or_saga_is_a_conflict(rt: Runtime) -> None:
    saga_id = get_saga("security_probe").start({"text": "original"}, saga_id=sid())
    wait_for(rt.store, saga_id, timeout=10)
    before = _snapshot(rt.store, saga_id)
    # The same request again is idempotent: the same id, nothing new.
    assert get_saga("security_probe").start({"text": "original"}, saga_id=saga_id) == saga_id
    for name, payload in (("security_probe", {"text": "other"}), ("security_lost", {})):
        with pytest.raises(SagaConflict) as info:
            get_saga(name).start(payload, saga_id=saga_id)
        assert info.value.field == "saga_id" and saga_id in str(info.value)
    # A client without the definition: the coordinator finds the conflict and counts it.
    counted = metrics.get("sagas_start_rejected_total", reason="SagaConflict")
    app.send_task(
        "sagas.start_saga", args=["security_probe", {"text": "x"}], kwargs={"saga_id": saga_id}
    )
    eventually(
        lambda: metrics.get("sagas_start_rejected_total", reason="SagaConflict") > counted,
        what="the coordinator's conflict",
    )
    assert _snapshot(rt.store, saga_id) == before


class _NoBroker:
    """Stands in for the Celery app: records what would have been published."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.sent.append(name)


def test_a_conflicting_start_on_postgresql_leaves_the_original_untouched() -> None:
    with scratch_database("sagas_security") as url:
        store = Store(url)
        migrate.upgrade(store.engine)
        broker = _NoBroker()
        pg = Runtime(settings=Settings(database_url=url), store=store, app=broker)
        try:
            saga_id = starter.start("security_probe", {"text": "original"}, saga_id=sid(), rt=pg)
            before = _snapshot(store, saga_id)
            assert broker.sent == ["saga.security_probe.echo"]
            with pytest.raises(SagaConflict) as info:
                starter.start("security_probe", {"text": "other"}, saga_id=saga_id, rt=pg)
            assert info.value.field == "saga_id"
            with pytest.raises(SagaConflict):
                starter.start("security_lost", {"text": "original"}, saga_id=saga_id, rt=pg)
            assert _snapshot(store, saga_id) == before
            assert broker.sent == ["saga.security_probe.echo"]  # nothing published either
        finally:
            store.dispose()
