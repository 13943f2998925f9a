from flask import Blueprint, request

from sagas import SagaInputError
from sagas.contrib.flask import start_saga_after_commit

from . import db
from .models import Order
from .sagas import shop_order

bp = Blueprint("shop", __name__)


def _order_and_saga() -> str:
    body = request.get_json()
    db.session.add(Order(id=body["order_id"], item=body["item"]))
    # The session has written in this request's transaction, so the saga row is written in it
    # too: the saga exists if and only if the order commits, and its first step is sent after
    # the commit. A bad payload raises here (a 400 below) and nothing is written.
    return shop_order.start(
        body,
        saga_id="order-" + body["order_id"],
        correlation_id=request.headers.get("X-Request-ID"),
    )


@bp.post("/orders")
def create_order():
    saga_id = _order_and_saga()
    db.session.commit()
    return {"saga_id": saga_id}, 202


@bp.post("/orders-broken")
def create_order_then_fail():
    """A request that fails after starting the saga: its session rolls back, taking the order
    and the saga row with it; nothing is sent."""
    _order_and_saga()
    raise RuntimeError("the request fails after the saga was started")


@bp.post("/orders/by-message")
def create_order_by_message():
    """The same order, started by a ``start_saga`` message sent after the commit (the way to
    start a saga whose definition lives in another codebase)."""
    body = request.get_json()
    db.session.add(Order(id=body["order_id"], item=body["item"]))
    saga_id = start_saga_after_commit(
        "shop_order",
        body,
        saga_id="order-" + body["order_id"],
        correlation_id=request.headers.get("X-Request-ID"),
    )
    db.session.commit()
    return {"saga_id": saga_id}, 202


@bp.errorhandler(SagaInputError)  # PayloadInvalid, InvalidSagaId, UnknownSaga, ...
def bad_start(exc: SagaInputError):
    return {"error": type(exc).__name__, "field": exc.field}, 400
