"""Payment service: charges the order's card and refunds it, in its own database.

Each charge is a row in the service's ``charges`` table, written in the same transaction as the
step's receipt (``sagas.receipts``): a redelivered charge command returns the recorded charge
instead of charging twice, and a refund knows whether a charge ever committed.
"""

from __future__ import annotations

import logging

from sqlalchemy import Column, Integer, MetaData, String, Table, insert, update

from sagas import PermanentError, StepContext
from sagas.receipts import Receipt, Receipts

from .models import Order, ServiceDatabase

log = logging.getLogger(__name__)

DECLINED_CARDS = {"4000000000000002"}  # the industry's conventional "declined" test card

metadata = MetaData()
charges = Table(
    "charges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga_id", String(128), nullable=False, index=True),
    Column("order_id", String(64), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # charged | refunded
)
db = ServiceDatabase("payment", metadata)  # PAYMENT_DATABASE_URL, default payment.db
receipts = Receipts(db.engine)


class CardDeclined(PermanentError):
    """The issuer declined the card: do not retry."""


@receipts.exactly_once
def charge_payment(ctx: StepContext[Order], r: Receipt) -> dict[str, object]:
    order = ctx.payload
    if order.card_number in DECLINED_CARDS:
        raise CardDeclined(f"card ending {order.card_number[-4:]} declined")
    # A real gateway call would also pass ctx.idempotency_key to the gateway.
    charge_id = r.connection.execute(
        insert(charges)
        .values(
            saga_id=ctx.saga_id,
            order_id=order.order_id,
            amount_cents=order.total_cents,
            status="charged",
        )
        .returning(charges.c.id)
    ).scalar_one()
    log.info("charged %s cents for order %s", order.total_cents, order.order_id)
    return {"charge_id": f"ch-{charge_id}", "amount_cents": order.total_cents}


@receipts.exactly_once
def refund_payment(ctx: StepContext[Order], r: Receipt) -> dict[str, object]:
    if not r.forward_done:  # the charge never committed (declined, timed out before running)
        log.info("nothing to refund for order %s", ctx.payload.order_id)
        return {"refunded": None}
    charge = (r.forward_result or {}).get("charge_id")
    r.connection.execute(
        update(charges)
        .where(charges.c.saga_id == ctx.saga_id, charges.c.status == "charged")
        .values(status="refunded")
    )
    log.info("refunded %s for order %s", charge, ctx.payload.order_id)
    return {"refunded": charge}
