"""Payment service: charges the order's card and refunds it."""

from __future__ import annotations

import logging

from sagas import PermanentError, StepContext

from .models import Order

log = logging.getLogger(__name__)

DECLINED_CARDS = {"4000000000000002"}  # the industry's conventional "declined" test card


class CardDeclined(PermanentError):
    """The issuer declined the card: do not retry."""


def charge_payment(ctx: StepContext[Order]) -> dict[str, object]:
    order = ctx.payload
    if order.card_number in DECLINED_CARDS:
        raise CardDeclined(f"card ending {order.card_number[-4:]} declined")
    # A real gateway call passes ctx.idempotency_key so a retried charge is not charged twice.
    log.info("charged %s cents for order %s", order.total_cents, order.order_id)
    return {"charge_id": f"ch-{ctx.saga_id}", "amount_cents": order.total_cents}


def refund_payment(ctx: StepContext[Order]) -> None:
    charge = (ctx.result or {}).get("charge_id")
    log.info("refunded %s for order %s", charge, ctx.payload.order_id)
