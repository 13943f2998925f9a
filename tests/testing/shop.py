"""A user's small saga module, as the kit's tests see it: two steps and fake services.

``charge_card`` uses the idempotency key (charging twice with one key charges once), as a
payment gateway does; ``book_table`` reserves in a fake booking service by key too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from pydantic import BaseModel

from sagas import PermanentError, RetryPolicy, Saga, StepContext, TransientError


class Booking(BaseModel):
    guest: str
    seats: int = 2
    card: str = "4242"


class CardDeclined(PermanentError):
    """The card was refused."""


class Ledger:
    """A fake service's books: effects by idempotency key, and every call made."""

    def __init__(self) -> None:
        self.applied: dict[str, Any] = {}
        self.calls: list[str] = []

    def apply_once(self, key: str, value: Any) -> Any:
        self.calls.append(key)
        return self.applied.setdefault(key, value)

    def count(self, saga_id: str) -> int:
        return sum(1 for k in self.applied if saga_id in k)


tables = Ledger()  # reservations by key
charges = Ledger()  # charges by key
refunds = Ledger()
releases = Ledger()

dinner = Saga("kit_dinner", payload=Booking, deadline=timedelta(hours=1))


def release_table(ctx: StepContext[Booking]) -> None:
    releases.apply_once(ctx.idempotency_key, ctx.payload.seats)


@dinner.step(
    queue="tables",
    timeout=timedelta(seconds=30),
    retry=RetryPolicy.build(max_attempts=3, initial=1.0),
    compensation=release_table,
)
def book_table(ctx: StepContext[Booking]) -> dict[str, Any]:
    tables.apply_once(ctx.idempotency_key, ctx.payload.seats)
    return {"table": f"T-{ctx.payload.guest}"}


def refund_card(ctx: StepContext[Booking]) -> None:
    refunds.apply_once(ctx.idempotency_key, 1)


@dinner.step(
    queue="payments",
    timeout=timedelta(seconds=30),
    retry=RetryPolicy.build(max_attempts=4, initial=2.0, backoff=2.0, non_retryable=[CardDeclined]),
    compensation=refund_card,
)
def charge_card(ctx: StepContext[Booking]) -> dict[str, Any]:
    if ctx.payload.card == "0000":
        raise CardDeclined("card 0000 declined")
    charges.apply_once(ctx.idempotency_key, 4200)
    return {"charged": 4200}


app = Celery("kit-tests", set_as_current=False)
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")


# A saga whose only step keeps failing with long backoffs: only its one-hour deadline ends it.
patient = Saga("kit_patient", payload=Booking, deadline=timedelta(hours=1))


@patient.step(
    queue="tables",
    timeout=timedelta(seconds=30),
    retry=RetryPolicy.build(max_attempts=1000, initial=60.0, max_interval=600.0),
    compensation=None,
)
def wait_for_table(ctx: StepContext[Booking]) -> None:
    raise TransientError("no table free yet")
