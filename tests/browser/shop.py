"""The sagas the browser tests operate on: an order whose card is declined (failed and
compensated), one whose payment gateway is down (a retry waiting an hour: cancel it), and one
whose shipment fails once and parks for an operator (retry it). The card number is there to be
redacted."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sagas import Park, PermanentError, RetryPolicy, Saga, StepContext, TransientError


class Order(BaseModel):
    order_id: str
    card_number: str
    mode: str = "ok"  # ok, decline, flaky, park_once


class CardDeclined(PermanentError):
    """The card was refused."""


class GatewayDown(TransientError):
    """The payment gateway is unreachable (retried in an hour)."""


order = Saga("browser_order", payload=Order)


def release(ctx: StepContext[Order]) -> None:
    return None


@order.step(queue="browser_inventory", compensation=release)
def reserve(ctx: StepContext[Order]) -> dict[str, Any]:
    return {"reservation": f"r-{ctx.payload.order_id}"}


def refund(ctx: StepContext[Order]) -> None:
    return None


@order.step(
    queue="browser_payments",
    retry=RetryPolicy.build(
        max_attempts=3, initial=3600.0, max_interval=3600.0, non_retryable=[CardDeclined]
    ),
    compensation=refund,
)
def charge(ctx: StepContext[Order]) -> dict[str, Any]:
    if ctx.payload.mode == "decline":
        raise CardDeclined("card ending 0002 declined")
    if ctx.payload.mode == "flaky":
        raise GatewayDown("gateway timeout")
    return {"charge": f"ch-{ctx.idempotency_key[:8]}", "card_number": ctx.payload.card_number}


@order.step(queue="browser_shipping", compensation=None, on_exhausted=Park("call the carrier"))
def ship(ctx: StepContext[Order]) -> dict[str, Any]:
    if ctx.payload.mode == "park_once" and ctx.attempt == 1:
        raise PermanentError("address unknown to the carrier")
    return {"tracking": f"T-{ctx.payload.order_id}"}


QUEUES = ("sagas", "browser_inventory", "browser_payments", "browser_shipping")
