"""The shop's order saga, tested with sagas' pytest fixtures: through the views (the saga row in
the view's transaction), with a step replaced, and attacked at every crash point."""

import pytest
from shop.models import Order
from shop.sagas import charge, shop_order

import sagas
from sagas import PermanentError
from sagas.testing import Transient, assert_compensated, assert_completed, ok


def test_checkout_reserves_then_charges(client, saga_runtime):
    response = client.post("/checkout/", {"ref": "t1", "total_cents": "1250"})
    assert response.status_code == 202
    saga_runtime.wait("order-t1")
    assert [s.result for s in assert_completed("order-t1").steps] == [
        {"reserved": "t1"},
        {"charged": 1250},
    ]
    assert Order.objects.get(ref="t1").status == "paid"


def test_a_declined_card_releases_the_reservation(client, saga_runtime):
    client.post("/checkout/", {"ref": "t2", "declined": "1"})
    saga_runtime.wait("order-t2")
    assert_compensated("order-t2", ["reserve"])
    assert Order.objects.get(ref="t2").status == "released"


def test_a_gateway_outage_is_retried(client, saga_runtime, saga_doubles):
    saga_doubles.replace(charge, [Transient, ok({"charged": 500})])
    client.post("/checkout/", {"ref": "t3"})
    saga_runtime.wait("order-t3")
    assert assert_completed("order-t3").steps[1].attempt == 2


def test_a_permanent_failure_compensates(client, saga_runtime, saga_doubles):
    saga_doubles.replace(charge, PermanentError("fraud check"))
    client.post("/checkout/", {"ref": "t4"})
    saga_runtime.wait("order-t4")
    assert_compensated("order-t4", ["reserve"])


def test_a_view_that_fails_starts_no_saga(client, saga_runtime):
    assert client.post("/checkout-then-fail/", {"ref": "t5"}).status_code == 500
    saga_runtime.run()
    with pytest.raises(sagas.SagaNotFound):
        sagas.get("order-t5")
    assert not Order.objects.filter(ref="t5").exists()


def test_every_crash_point(saga_explore):
    Order.objects.create(ref="t6", total_cents=500)
    saga_explore(shop_order, {"ref": "t6", "total_cents": 500})
