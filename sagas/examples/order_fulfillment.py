"""The order-fulfillment saga: reserve stock, charge, ship, confirm.

Each step lives on its service's queue. If charging or shipping fails for good, the steps already
done are undone newest first (refund, then release). The confirmation email is a remote step: a
plain Celery task in the notification service, named by string, needing no compensation.
"""

from __future__ import annotations

from datetime import timedelta

from sagas import RetryPolicy, Saga

from .inventory import OutOfStock, release_inventory, reserve_inventory
from .models import Order
from .payment import CardDeclined, charge_payment, refund_payment
from .shipping import cancel_shipment, create_shipment

order_fulfillment = Saga("order_fulfillment", payload=Order, version=1, deadline=timedelta(hours=1))

order_fulfillment.step(
    queue="inventory",
    timeout=timedelta(seconds=30),
    retry=RetryPolicy.build(max_attempts=5, initial=0.5, non_retryable=[OutOfStock]),
    compensation=release_inventory,
)(reserve_inventory)

order_fulfillment.step(
    queue="payment",
    timeout=timedelta(seconds=30),
    retry=RetryPolicy.build(max_attempts=3, initial=0.5, non_retryable=[CardDeclined]),
    compensation=refund_payment,
)(charge_payment)

order_fulfillment.step(
    queue="shipping",
    timeout=timedelta(seconds=30),
    retry=RetryPolicy.build(max_attempts=5, initial=0.5, backoff=2.0, max_interval=10),
    compensation=cancel_shipment,
)(create_shipment)

order_fulfillment.remote_step(
    "send_confirmation",
    task="notification.send_confirmation",
    queue="notification",
    timeout=timedelta(seconds=30),
    compensation=None,  # an email cannot be unsent; it is the last step, so nothing follows it
)
