from flask import Blueprint, request

from sagas import SagaInputError
from sagas.contrib.flask import start_saga_after_commit

from . import db
from .models import Order

bp = Blueprint("shop", __name__)


def _order_and_saga() -> str:
    body = request.get_json()
    db.session.add(Order(id=body["order_id"], item=body["item"]))
    # Checked now (a bad payload is a 400 below), sent only once this request's commit happens.
    return start_saga_after_commit(
        "shop_order",
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
    """A request that fails after asking for the saga: its session rolls back, no saga starts."""
    _order_and_saga()
    raise RuntimeError("the request fails after the saga was asked for")


@bp.errorhandler(SagaInputError)  # PayloadInvalid, InvalidSagaId, UnknownSaga, ...
def bad_start(exc: SagaInputError):
    return {"error": type(exc).__name__, "field": exc.field}, 400
