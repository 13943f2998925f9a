"""Deliberately broken sagas the crash-point harness must catch.

- ``kit_broken_charge``: its charge ignores the idempotency key (every run charges again);
- ``kit_broken_refund``: its refund is not idempotent (every run refunds again).

Each records its effects in a fake bank (``bank``), which the tests give ``explore`` as
``effects``.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from sagas import PermanentError, RetryPolicy, Saga, StepContext


class Order(BaseModel):
    order_id: str
    fail_shipping: bool = False


bank: Counter[tuple[str, str]] = Counter()  # (saga id, what) -> times it happened
seen_keys: set[str] = set()


def effects(saga_id: str) -> dict[str, int]:
    return {
        "charge": bank[(saga_id, "charge")],
        "charge.compensate": bank[(saga_id, "refund")],
        "ship": bank[(saga_id, "ship")],
    }


def _once(ctx: StepContext[Any], what: str) -> None:
    """A correct effect: keyed on the idempotency key."""
    if ctx.idempotency_key not in seen_keys:
        seen_keys.add(ctx.idempotency_key)
        bank[(ctx.saga_id, what)] += 1


def _ship(ctx: StepContext[Order]) -> dict[str, Any]:
    if ctx.payload.fail_shipping:
        raise PermanentError("no carrier")
    _once(ctx, "ship")
    return {"shipped": True}


def _declare(name: str, charge: Any, refund: Any) -> Saga[Order]:
    saga = Saga(name, payload=Order, deadline=timedelta(hours=1))
    saga.step(
        queue="bank",
        name="charge",
        timeout=timedelta(seconds=30),
        retry=RetryPolicy.build(max_attempts=3, initial=1.0),
        compensation=refund,
    )(charge)
    saga.step(queue="shipping", name="ship", timeout=timedelta(seconds=30), compensation=None)(
        _ship
    )
    return saga


def charge_ignoring_key(ctx: StepContext[Order]) -> dict[str, Any]:
    bank[(ctx.saga_id, "charge")] += 1  # BUG: a redelivered command charges again
    return {"charged": True}


def charge_once(ctx: StepContext[Order]) -> dict[str, Any]:
    _once(ctx, "charge")
    return {"charged": True}


def refund_every_time(ctx: StepContext[Order]) -> None:
    bank[(ctx.saga_id, "refund")] += 1  # BUG: a redelivered compensation refunds again


def refund_once(ctx: StepContext[Order]) -> None:
    _once(ctx, "refund")


broken_charge = _declare("kit_broken_charge", charge_ignoring_key, refund_once)
broken_refund = _declare("kit_broken_refund", charge_once, refund_every_time)
correct = _declare("kit_correct", charge_once, refund_once)
