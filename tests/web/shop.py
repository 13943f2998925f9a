"""The sagas the API tests run, one per shape an operator has to find: completed, declined
(compensated), a retry waiting its backoff, a step parked for an operator, a compensation
dead-lettered, a wait for an approval, and an approved loan."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from pydantic import BaseModel

from sagas import Park, PermanentError, RetryPolicy, Saga, StepContext, TransientError

app = Celery("web_shop")


class Order(BaseModel):
    order_id: str
    mode: str = "ok"  # ok, decline, flaky, park, stuck_undo


class CardDeclined(PermanentError):
    """The card was refused."""


class CarrierDown(TransientError):
    """The payment gateway is unreachable (retried in an hour)."""


order = Saga("web_order", payload=Order)


def release(ctx: StepContext[Order]) -> None:
    if ctx.payload.mode == "stuck_undo":
        raise PermanentError("inventory ledger is read-only")


@order.step(
    queue="web_inventory",
    compensation=release,
    compensation_retry=RetryPolicy(max_attempts=1),
)
def reserve(ctx: StepContext[Order]) -> dict[str, Any]:
    return {"reservation": f"r-{ctx.payload.order_id}"}


def refund(ctx: StepContext[Order]) -> None:
    return None


@order.step(
    queue="web_payments",
    retry=RetryPolicy.build(
        max_attempts=3, initial=3600.0, max_interval=3600.0, non_retryable=[CardDeclined]
    ),
    compensation=refund,
)
def charge(ctx: StepContext[Order]) -> dict[str, Any]:
    if ctx.payload.mode in ("decline", "stuck_undo"):
        raise CardDeclined("card ending 0002 declined")
    if ctx.payload.mode == "flaky":
        raise CarrierDown("gateway timeout")
    return {"charge": f"ch-{ctx.idempotency_key[:8]}"}


@order.step(queue="web_shipping", compensation=None, on_exhausted=Park("call the carrier"))
def ship(ctx: StepContext[Order]) -> dict[str, Any]:
    if ctx.payload.mode == "park":
        raise PermanentError("address unknown to the carrier")
    return {"tracking": "T-1"}


class Loan(BaseModel):
    loan_id: str


class Approval(BaseModel):
    by: str


loan = Saga("web_loan", payload=Loan)


@loan.step(queue="web_risk", compensation=None)
def hold(ctx: StepContext[Loan]) -> dict[str, Any]:
    return {"hold": ctx.payload.loan_id}


loan.wait_for("approval", model=Approval, timeout=timedelta(days=2))


@loan.step(queue="web_ledger", compensation=None)
def disburse(ctx: StepContext[Loan]) -> dict[str, Any]:
    return {"paid": ctx.results["approval"]["by"]}


ORDER_MODES = ("ok", "decline", "flaky", "park", "stuck_undo")
# What each saga is once it settled: (state, parked).
EXPECTED = {
    "ok": ("completed", False),
    "decline": ("failed", False),
    "flaky": ("pending", False),
    "park": ("pending", True),
    "stuck_undo": ("compensating", True),
    "waiting": ("pending", False),
    "approved": ("completed", False),
}
