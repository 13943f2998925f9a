"""The crash-point harness over a correct saga, over the example order saga, and over
deliberately broken sagas it must catch (a harness that cannot fail is a defect)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

import sagas.examples.notification  # noqa: F401 - registers the remote step's task
from sagas.examples import inventory, payment
from sagas.examples.order_fulfillment import order_fulfillment
from sagas.testing import Exploration, Point, explore
from tests.testing import broken, shop

ORDER: dict[str, Any] = {
    "order_id": "A-1",
    "email": "ada@example.com",
    "card_number": "4242424242424242",
    "items": [{"sku": "BOOK-1", "quantity": 2, "unit_cents": 1250}],
    "ship_to": {"line1": "1 Main St", "city": "Lyon", "country": "FR"},
}


def _kinds(result: Exploration) -> set[str]:
    return {Point.parse(r.point).kind for r in result.results if r.point.count(":")}


def test_a_correct_saga_passes_every_point() -> None:
    result = explore(broken.correct, {"order_id": "o-1"}, app=shop.app, effects=broken.effects)
    assert result.ok, result.report()
    assert {"crash", "lost", "dup", "timeout", "fail", "fail_compensation"} <= _kinds(result)
    points = {r.point for r in result.results}
    assert {
        "crash:before_effect:charge",
        "crash:after_effect:charge",
        "crash:before_commit:step_succeeded:charge#1",
        "crash:after_commit:step_succeeded:charge#1",
        "crash:after_effect:charge.compensate@fail:ship",
        "messages:lost:reply:charge#1",
        "messages:dup:command:charge.compensate#1@fail:ship",
        "timeout:charge",
        "fail:ship",
        "fail_compensation:charge@fail:ship",
    } <= points
    states = {r.point: r.state for r in result.results}
    assert states["fail:ship"] == "failed" and states["crash:after_effect:charge"] == "completed"


def test_a_step_that_ignores_the_idempotency_key_is_caught() -> None:
    result = explore(
        broken.broken_charge, {"order_id": "o-2"}, app=shop.app, effects=broken.effects
    )
    assert not result.ok
    failing = {r.point for r in result.failures}
    # A redelivery after the charge ran charges again; the first clean runs do not.
    assert "crash:after_effect:charge" in failing
    assert "messages:dup:command:charge#1" in failing
    assert "clean" not in failing and "crash:before_effect:charge" not in failing
    report = result.report()
    assert "charge: effect applied 2 times" in report
    assert 'reproduce: explore(get_saga("kit_broken_charge"), payload, only="' in report


def test_a_compensation_that_is_not_idempotent_is_caught() -> None:
    result = explore(
        broken.broken_refund, {"order_id": "o-3"}, app=shop.app, effects=broken.effects
    )
    assert not result.ok
    failing = {r.point for r in result.failures}
    assert "crash:after_effect:charge.compensate@fail:ship" in failing
    assert all("compensate" in p or "@fail" in p for p in failing), failing
    assert "compensation applied 2 times" in result.report()


def test_only_replays_one_failing_point() -> None:
    point = "crash:after_effect:charge"
    result = explore(
        broken.broken_charge, {"order_id": "o-4"}, app=shop.app, effects=broken.effects, only=point
    )
    assert [r.point for r in result.results] == [point]
    assert not result.ok and "effect applied 2 times" in result.failures[0].violations[0]
    again = explore(broken.correct, {"order_id": "o-4"}, app=shop.app, only=point)
    assert again.ok and [r.point for r in again.results] == [point]


def test_the_saga_fixture_fails_the_test_with_the_report(
    saga_explore: Callable[..., Exploration],
) -> None:
    with pytest.raises(pytest.fail.Exception, match="reproduce: explore"):
        saga_explore(broken.broken_charge, {"order_id": "o-5"}, effects=broken.effects)
    assert saga_explore(broken.correct, {"order_id": "o-5"}, effects=broken.effects).ok


def _order_effects(saga_id: str) -> dict[str, int]:
    """What the example services did for one saga, from their own databases."""
    with payment.db.engine().connect() as conn:
        charges = payment.charges
        charged = conn.execute(
            select(func.count()).where(charges.c.saga_id == saga_id)
        ).scalar_one()
        refunded = conn.execute(
            select(func.count()).where(charges.c.saga_id == saga_id, charges.c.status == "refunded")
        ).scalar_one()
    with inventory.db.engine().connect() as conn:
        rows = inventory.reservations
        lines = len(ORDER["items"])
        reserved = conn.execute(select(func.count()).where(rows.c.saga_id == saga_id)).scalar_one()
        released = conn.execute(
            select(func.count()).where(rows.c.saga_id == saga_id, rows.c.released.is_(True))
        ).scalar_one()
    return {
        "reserve_inventory": reserved // lines,
        "reserve_inventory.compensate": released // lines,
        "charge_payment": charged,
        "charge_payment.compensate": refunded,
    }


def test_the_example_order_saga_passes_its_whole_matrix() -> None:
    # How long the matrix takes is a figure for the README, not an assertion: it ran 9 s on
    # a quiet machine and 63 s with four other suites on its two cores.
    result = explore(order_fulfillment, ORDER, app=shop.app, effects=_order_effects)
    assert result.ok, result.report()
    assert len(result.results) > 100
    steps = {"reserve_inventory", "charge_payment", "create_shipment", "send_confirmation"}
    crashed = {Point.parse(r.point).where.split(":")[-1] for r in result.results}
    assert steps <= crashed
