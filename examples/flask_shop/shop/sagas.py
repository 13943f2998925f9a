"""The order saga: reserve the item (released if a later step fails), then charge the card.

Steps and compensations run inside the app context: ``db.session`` and ``current_app`` work as
in a view.
"""

import os

from celery import current_task
from flask import current_app
from pydantic import BaseModel, Field

from sagas import PermanentError, RetryPolicy, Saga, StepContext, TransientError

from . import db
from .models import Charge, Order


class OrderPayload(BaseModel):
    order_id: str
    item: str
    quantity: int = Field(1, gt=0)
    declined: bool = False  # the card is declined: reserve is compensated
    # The card processor answers "later" (the step is retried) until the file
    # instance/go-<order_id> exists, or an operator cancels with `flask saga cancel`.
    hold: bool = False


shop_order = Saga("shop_order", payload=OrderPayload)


def _set_status(order_id: str, status: str) -> None:
    order = db.session.get(Order, order_id)
    order.status = status
    db.session.commit()


def release(ctx: StepContext[OrderPayload]) -> None:
    _set_status(ctx.payload.order_id, f"released by {current_app.name}")


@shop_order.step(queue="shop", timeout=20, compensation=release)
def reserve(ctx: StepContext[OrderPayload]) -> dict:
    _set_status(ctx.payload.order_id, "reserved")
    return {"reserved": ctx.payload.item, "task": current_task.name}


@shop_order.step(
    queue="shop",
    timeout=20,
    compensation=None,
    retry=RetryPolicy.build(max_attempts=5, initial=120, backoff=1, max_interval=120),
)
def charge(ctx: StepContext[OrderPayload]) -> dict:
    order_id = ctx.payload.order_id
    if ctx.payload.declined:
        raise PermanentError("card declined")
    go = os.path.join(current_app.instance_path, "go-" + order_id)
    if ctx.payload.hold and not os.path.exists(go):
        raise TransientError("card processor says later")
    db = current_app.extensions["sqlalchemy"]  # the app context's Flask-SQLAlchemy
    if db.session.get(Charge, order_id) is None:  # run twice (a redelivery): charged once
        db.session.add(Charge(order_id=order_id, charged_by=current_app.name))
    db.session.get(Order, order_id).status = "paid"
    db.session.commit()
    return {"charged": order_id, "by": current_app.name, "task": current_task.name}
