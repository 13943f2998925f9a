"""Order fulfillment as a choreography: the same services, reacting to each other's events.

    order.created -> [inventory] -> inventory.reserved -> [payment] -> payment.processed
      -> [shipping] -> shipment.created -> [notification] -> order.fulfilled

    payment.failed  -> inventory releases its reservation
    shipment.failed -> payment refunds, then inventory releases (newest first)

No coordinator: each service's worker consumes its own event queue. The saga tables record every
event, so `saga list` / `saga show` show it like the orchestrated version.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sagas import RetryPolicy, StepContext
from sagas.choreography import Choreography, Handler

from .inventory import release_inventory, reserve_inventory
from .models import Order
from .payment import CardDeclined, charge_payment, refund_payment
from .shipping import create_shipment

log = logging.getLogger(__name__)


def confirm_order(ctx: StepContext[Order]) -> dict[str, str]:
    log.info("order %s confirmed to %s", ctx.payload.order_id, ctx.payload.email)
    return {"sent_to": ctx.payload.email}


order_choreography = Choreography(
    "order_choreography",
    payload=Order,
    starts_on="order.created",
    completes_on="order.fulfilled",
    handlers=[
        Handler(
            "reserve_inventory",
            service="inventory",
            on="order.created",
            emits="inventory.reserved",
            fails_with="inventory.failed",
            fn=reserve_inventory,
            compensation=release_inventory,
            compensate_on=("payment.failed", "shipment.failed"),
            timeout=timedelta(seconds=30),
        ),
        Handler(
            "charge_payment",
            service="payment",
            on="inventory.reserved",
            emits="payment.processed",
            fails_with="payment.failed",
            fn=charge_payment,
            compensation=refund_payment,
            compensate_on=("shipment.failed",),
            retry=RetryPolicy.build(max_attempts=3, initial=0.5, non_retryable=[CardDeclined]),
        ),
        Handler(
            "create_shipment",
            service="shipping",
            on="payment.processed",
            emits="shipment.created",
            fails_with="shipment.failed",
            fn=create_shipment,
            compensation=None,  # nothing after it can fail
            retry=RetryPolicy.build(max_attempts=5, initial=0.5, max_interval=10),
            fail_on_timeout=True,
        ),
        Handler(
            "confirm_order",
            service="notification",
            on="shipment.created",
            emits="order.fulfilled",
            fn=confirm_order,
        ),
    ],
)
