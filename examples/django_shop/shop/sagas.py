"""Imported by ``sagas.contrib.django`` once Django's apps are ready, so it may use the models."""

from pydantic import BaseModel, Field

from sagas import PermanentError, Saga, StepContext

from .models import Order


class OrderPayload(BaseModel):
    ref: str
    total_cents: int = Field(gt=0)
    declined: bool = False


shop_order = Saga("shop_order", payload=OrderPayload)
shop_approval = Saga("shop_approval", payload=OrderPayload)


def set_status(ctx: StepContext[OrderPayload], status: str) -> None:
    Order.objects.filter(ref=ctx.payload.ref).update(status=status)


def release(ctx: StepContext[OrderPayload]) -> None:
    set_status(ctx, "released")


def reserve(ctx: StepContext[OrderPayload]) -> dict:
    set_status(ctx, "reserved")
    return {"reserved": ctx.payload.ref}


# reserve is a step of both sagas below, so it is registered by calling the decorator.
shop_order.step(queue="shop", timeout=30, compensation=release)(reserve)


@shop_order.step(queue="shop", timeout=30, compensation=None)
def charge(ctx: StepContext[OrderPayload]) -> dict:
    if ctx.payload.declined:
        raise PermanentError("card declined")  # reserve is compensated: status "released"
    set_status(ctx, "paid")
    return {"charged": ctx.payload.total_cents}


# The same reservation, then a back-office approval on its own queue: run
# `celery -A proj worker -Q approvals` to approve; with no one there the step times out after
# five minutes (or an operator cancels it in the admin) and the reservation is released.
shop_approval.step(queue="shop", timeout=30, compensation=release)(reserve)


@shop_approval.step(queue="approvals", timeout=300, compensation=None)
def approve(ctx: StepContext[OrderPayload]) -> dict:
    set_status(ctx, "approved")
    return {"approved": ctx.payload.ref}
