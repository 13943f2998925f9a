"""Signals: the external events a saga's wait steps wait for (an approval, a webhook).

    sagas.signal("loan-17", "approved", {"by": "ops@bank"}, signal_id="ticket-4411")

From any process that reaches the saga store (a Django view, a Flask route, ``saga signal``).
The signal is checked against the saga's own definition (the version it runs on): a saga that
does not wait for ``name`` raises ``SignalUnknown``, data failing the wait's model raises
``PayloadInvalid`` naming the field (``data.<field>``); nothing is written then. A valid signal
is kept in ``saga_signal`` (idempotent on ``signal_id``: a repeated send is one signal), then
delivered if the saga waits for it now, or when it reaches the wait (a signal may come first).
A send cut short between keeping and delivering is finished by the next send of the same
``signal_id``, or by the sweeper.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from . import coordinator
from .definition import get_orchestrated
from .errors import PayloadInvalid, SignalUnknown
from .machine import Signal
from .payload import check_saga_id, validate_payload
from .runtime import Runtime, get_runtime
from .state import SagaKind


@dataclass(frozen=True, slots=True)
class SignalSent:
    """What became of a signal: ``delivered`` (the wait took it), ``kept`` (the saga has not
    reached the wait yet), ``duplicate`` (this ``signal_id`` was sent before) or ``ignored``
    (the wait had ended: timed out, or another signal came first)."""

    saga_id: str
    name: str
    signal_id: str
    outcome: str


def signal(
    saga_id: str,
    name: str,
    data: Any = None,
    *,
    signal_id: str | None = None,
    rt: Runtime | None = None,
) -> SignalSent:
    """Send signal ``name`` with ``data`` to the saga ``saga_id`` (see the module docstring)."""
    rt = rt or get_runtime()
    sid = check_saga_id(saga_id)
    key = check_saga_id(signal_id, field="signal_id") if signal_id is not None else uuid.uuid4().hex
    record = rt.store.get(sid)[0]  # SagaNotFound
    if record.kind is not SagaKind.ORCHESTRATED:
        raise SignalUnknown(
            f"saga {sid!r} is a choreography: only orchestrated sagas wait for signals",
            field="name",
        )
    saga = get_orchestrated(record.name, record.version)
    step = saga.wait_step(name)
    try:
        value = validate_payload(
            step.signal_model,
            {} if data is None else data,
            saga=saga.name,
            max_bytes=rt.settings.max_payload_bytes,
            max_depth=rt.settings.max_payload_depth,
        )
    except PayloadInvalid as exc:
        field = "data" + (exc.field or "payload").removeprefix("payload")
        message = str(exc).replace("payload for saga", f"signal {name!r} for saga", 1)
        raise type(exc)(message, field=field, saga=saga.name) from None
    if not rt.store.add_signal(sid, step.name, key, value):
        kept, stored = rt.store.kept_signal(sid, key)
        if not kept:
            return SignalSent(sid, step.name, key, "duplicate")
        value = stored  # sent before but not delivered yet (the first send was cut short)
    index = step.index
    applied = coordinator.apply(sid, lambda now, _saga: Signal(index, now, value, key), rt=rt)
    outcome = coordinator.signal_outcome(applied.decision if applied else None)
    if outcome != "kept":
        rt.store.consume_signal(sid, key, outcome)
    return SignalSent(sid, step.name, key, outcome)
