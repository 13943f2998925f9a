"""Shipping service: books a shipment with the carrier and cancels it."""

from __future__ import annotations

import logging

from sagas import PermanentError, StepContext, TransientError

from .models import Order

log = logging.getLogger(__name__)


class CarrierUnavailable(TransientError):
    """The carrier's API is down for a moment: retry with backoff."""


class Undeliverable(PermanentError):
    """The carrier refuses the address: retrying will not help."""


def create_shipment(ctx: StepContext[Order]) -> dict[str, object]:
    order = ctx.payload
    if order.simulate.undeliverable:
        raise Undeliverable(f"carrier cannot deliver to {order.ship_to.city}")
    # The example simulates a flaky carrier: its first `carrier_outages` calls fail.
    if ctx.attempt <= order.simulate.carrier_outages:
        raise CarrierUnavailable(f"carrier API unavailable (attempt {ctx.attempt})")
    log.info("shipment booked for order %s to %s", order.order_id, order.ship_to.country)
    return {"tracking": f"TRK-{ctx.saga_id[:12].upper()}"}


def cancel_shipment(ctx: StepContext[Order]) -> None:
    log.info("shipment %s cancelled", (ctx.result or {}).get("tracking"))
