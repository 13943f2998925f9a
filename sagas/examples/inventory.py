"""Inventory service: reserves stock for an order and releases it, in its own database.

Reservations are rows in the service's ``reservations`` table, written in the same transaction
as the step's receipt (``sagas.receipts``): a redelivered reserve returns the same reservation
instead of reserving twice, and a release of a reservation that never committed is a no-op.
"""

from __future__ import annotations

import logging

from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, insert, update

from sagas import PermanentError, StepContext
from sagas.receipts import Receipt, Receipts

from .models import Order, ServiceDatabase

log = logging.getLogger(__name__)

STOCK_PER_SKU = 1000  # the example's stock level for every SKU

metadata = MetaData()
reservations = Table(
    "reservations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga_id", String(128), nullable=False, index=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("released", Boolean, nullable=False, default=False),
)
db = ServiceDatabase("inventory", metadata)  # INVENTORY_DATABASE_URL, default inventory.db
receipts = Receipts(db.engine)


class OutOfStock(PermanentError):
    """Not enough stock: retrying will not help."""


@receipts.exactly_once
def reserve_inventory(ctx: StepContext[Order], r: Receipt) -> dict[str, object]:
    order = ctx.payload
    for item in order.items:
        if item.quantity > STOCK_PER_SKU:
            raise OutOfStock(f"only {STOCK_PER_SKU} of {item.sku} in stock")
    r.connection.execute(
        insert(reservations),
        [{"saga_id": ctx.saga_id, "sku": i.sku, "quantity": i.quantity} for i in order.items],
    )
    log.info("reserved %d item line(s) for order %s", len(order.items), order.order_id)
    return {"reservation_id": f"res-{ctx.saga_id}", "items": len(order.items)}


@receipts.exactly_once
def release_inventory(ctx: StepContext[Order], r: Receipt) -> dict[str, object]:
    released = 0
    if r.forward_done:  # else the reservation never committed: nothing held
        released = r.connection.execute(
            update(reservations)
            .where(reservations.c.saga_id == ctx.saga_id, reservations.c.released.is_(False))
            .values(released=True)
        ).rowcount
    log.info("released reservation %s (%d line(s))", r.forward_result, released)
    return {"released": released}
