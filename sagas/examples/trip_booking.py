"""The trip booking example: flight, hotel and car booked in parallel, then the card is charged
(the pivot: money moved, no way back), then the itinerary is sent.

- all three booked: charged, itinerary sent;
- the hotel is full: the flight and the car (booked meanwhile) are cancelled, nothing charged;
- the itinerary cannot be sent after the charge: retried, then parked for an operator; the trip
  is never unbooked for it.
"""

from __future__ import annotations

from pydantic import BaseModel

from sagas import PermanentError, RetryPolicy, Saga, StepContext, TransientError


class Trip(BaseModel):
    trip_id: str
    traveller: str
    full: list[str] = []  # which of flight, hotel, car has no room (for the example)
    mail_down: bool = False  # the itinerary mailer is down (for the example)


BOOKED: dict[str, set[str]] = {}  # trip id -> what is booked (the example's suppliers)

trip_booking = Saga("trip_booking", payload=Trip)


def _book(kind: str) -> object:
    def book(ctx: StepContext[Trip]) -> dict[str, str]:
        if kind in ctx.payload.full:
            raise PermanentError(f"no {kind} available")
        BOOKED.setdefault(ctx.payload.trip_id, set()).add(kind)  # idempotent per trip
        return {kind: f"{kind[:2].upper()}-{ctx.idempotency_key[:6]}"}

    def cancel(ctx: StepContext[Trip]) -> None:
        BOOKED.get(ctx.payload.trip_id, set()).discard(kind)

    book.__name__, cancel.__name__ = f"book_{kind}", f"cancel_{kind}"
    trip_booking.step(queue=f"{kind}s", compensation=cancel, name=f"book_{kind}")(book)
    return book


with trip_booking.parallel("bookings"):
    for _kind in ("flight", "hotel", "car"):
        _book(_kind)


@trip_booking.step(queue="payments", compensation=None, pivot=True)
def charge_card(ctx: StepContext[Trip]) -> dict[str, object]:
    booked = {k: v for r in ctx.results.values() for k, v in r.items()}
    return {"charged_for": sorted(booked)}


@trip_booking.step(
    queue="mail", compensation=None, retry=RetryPolicy(max_attempts=3, initial=60, backoff=2)
)
def send_itinerary(ctx: StepContext[Trip]) -> dict[str, str]:
    if ctx.payload.mail_down:
        raise TransientError("mailer unavailable")
    return {"sent_to": ctx.payload.traveller}
