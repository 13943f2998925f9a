"""The shop's order saga, tested with sagas' pytest fixtures: through the views, with a step
replaced, and attacked at every crash point."""

import pytest
from shop import db
from shop.models import Order
from shop.sagas import charge, shop_order

import sagas
from sagas.testing import Transient, assert_compensated, assert_completed, ok


def status(app, order_id):
    with app.app_context():
        return db.session.get(Order, order_id).status


def test_an_order_is_reserved_then_charged(app, client, saga_runtime):
    response = client.post("/orders", json={"order_id": "o1", "item": "book"})
    assert response.status_code == 202
    saga_runtime.wait("order-o1")
    assert [s.name for s in assert_completed("order-o1").steps] == ["reserve", "charge"]
    assert status(app, "o1") == "paid"


def test_a_declined_card_releases_the_reservation(app, client, saga_runtime):
    client.post("/orders", json={"order_id": "o2", "item": "lamp", "declined": True})
    saga_runtime.wait("order-o2")
    assert_compensated("order-o2", ["reserve"])
    assert status(app, "o2") == "released by shop"


def test_a_processor_outage_is_retried_on_the_fake_clock(app, client, saga_runtime, saga_doubles):
    # charge waits two minutes between attempts: the fake clock skips them.
    saga_doubles.replace(charge, [Transient, Transient, ok({"charged": "o3"})])
    client.post("/orders", json={"order_id": "o3", "item": "pen"})
    saga_runtime.wait("order-o3")
    assert assert_completed("order-o3").steps[1].attempt == 3


def test_a_request_that_fails_starts_no_saga(app, client, saga_runtime):
    response = client.post("/orders-broken", json={"order_id": "o4", "item": "pen"})
    assert response.status_code == 500
    saga_runtime.run()
    with pytest.raises(sagas.SagaNotFound):
        sagas.get("order-o4")


def test_every_crash_point(app, saga_explore):
    with app.app_context():
        db.session.add(Order(id="o5", item="book"))
        db.session.commit()
    saga_explore(shop_order, {"order_id": "o5", "item": "book"})
