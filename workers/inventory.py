"""Inventory service: reserves stock for an order and releases it.

Steps are idempotent by ``ctx.idempotency_key``: a redelivered reserve returns the same
reservation instead of reserving twice; releasing an unknown reservation is a no-op.
"""

from __future__ import annotations

import logging
import threading

from sagas import PermanentError, StepContext

from .models import Order

log = logging.getLogger(__name__)

# The example keeps its stock in memory; a real service uses its own database and records the
# reservation in the same transaction as the stock change.
_lock = threading.Lock()
_reservations: dict[str, dict[str, int]] = {}


class OutOfStock(PermanentError):
    """Not enough stock: retrying will not help."""


def reserve_inventory(ctx: StepContext[Order]) -> dict[str, object]:
    order = ctx.payload
    with _lock:
        if ctx.idempotency_key not in _reservations:
            for item in order.items:
                if item.quantity > 1000:
                    raise OutOfStock(f"only 1000 of {item.sku} in stock")
            _reservations[ctx.idempotency_key] = {i.sku: i.quantity for i in order.items}
    log.info("reserved %s for order %s", _reservations[ctx.idempotency_key], order.order_id)
    return {"reservation_id": f"res-{ctx.saga_id}", "items": len(order.items)}


def release_inventory(ctx: StepContext[Order]) -> None:
    with _lock:
        released = _reservations.pop(ctx.idempotency_key.removesuffix(":compensate"), None)
    log.info("released reservation %s (%s)", ctx.result, "done" if released else "nothing held")
