"""Choreographies whose handlers do what their payload says, recording each run in ``probe_effect``.

The integration workers import this module (``worker_app.IMPORTS``), so each service worker
consumes these choreographies' events on its ``sagas.events.<service>`` queue. Every handler and
compensation that actually runs first INSERTs a row ``(saga_id, step, action, attempt,
clock_timestamp())`` into ``probe_effect`` (``probe.record_effect``), so tests count effects and
check their order on the database clock.

- ``choreo_probe``: c1 (inventory) -> c2 (payment) -> c3 (shipping) -> c4 (notification).
  c1 and c2 have compensations; c1, c2 and c3 publish a failure event when they fail for good.
  The payload can make a handler fail permanently, fail transiently for its first attempts, or
  (c3 only) wait behind a gate the test opens by inserting a row into ``probe_gate``: while
  closed, c3 raises ``TransientError`` (no effect recorded) and is retried every 0.2 s, which
  holds the saga deterministically in the middle (c1 and c2 done, the saga pending) without
  holding the saga's row lock.
- ``choreo_stall``: t1 (inventory) then t2 (payment), which never emits: it fails transiently
  and its next attempt is minutes away, so its 1 s timeout passes first. ``fail_on_timeout``: the
  sweeper publishes ``cstall.t2_failed`` and t1 is compensated.
- ``choreo_flag``: one handler that never emits, without ``fail_on_timeout``: the sweeper only
  flags the saga (parked, still pending).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from sagas import Action, PermanentError, RetryPolicy, StepContext, TransientError
from sagas.choreography import Choreography, Handler
from tests.integration.probe import _effects_engine, record_effect

log = logging.getLogger(__name__)

GATE_TABLE_DDL = "CREATE TABLE IF NOT EXISTS probe_gate (saga_id text PRIMARY KEY)"
# Retries for the handlers that may fail transiently: quick, and enough for a gate held ~20 s.
QUICK_RETRY = RetryPolicy(max_attempts=100, initial=0.2, backoff=1.0, max_interval=0.2)
# Far beyond any test: the stalled handler's next attempt never comes while the cluster runs.
NEVER = RetryPolicy(max_attempts=2, initial=280.0, backoff=1.0, max_interval=280.0, jitter=0.0)
STALL_TIMEOUT = 1.0


class ChoreoProbe(BaseModel):
    """What each handler should do. Handler names are keys (c1..c4)."""

    tag: str = ""
    fail: str | None = None  # this handler raises PermanentError (every attempt)
    transient: dict[str, int] = {}  # handler -> leading attempts that raise TransientError
    gate: bool = False  # c3 waits until the test inserts this saga's id into probe_gate


def _gate_open(saga_id: str) -> bool:
    with _effects_engine().connect() as conn:
        row = conn.execute(
            text("SELECT 1 FROM probe_gate WHERE saga_id = :s"), {"s": saga_id}
        ).first()
        return row is not None


def forward(ctx: StepContext[ChoreoProbe]) -> dict[str, Any]:
    probe = ctx.payload
    if probe.gate and ctx.step == "c3" and not _gate_open(ctx.saga_id):
        raise TransientError("probe c3: gate closed")
    record_effect(ctx)
    log.info("choreo probe %s forward attempt %d", ctx.step, ctx.attempt)
    if ctx.attempt <= probe.transient.get(ctx.step, 0):
        raise TransientError(f"probe {ctx.step}: transient failure on attempt {ctx.attempt}")
    if probe.fail == ctx.step:
        raise PermanentError(f"probe {ctx.step}: permanent failure")
    return {"step": ctx.step, "attempt": ctx.attempt}


def compensate(ctx: StepContext[Any]) -> None:
    assert ctx.action is Action.COMPENSATE
    record_effect(ctx)
    log.info("choreo probe %s compensation attempt %d", ctx.step, ctx.attempt)


def never_emits(ctx: StepContext[Any]) -> None:
    record_effect(ctx)
    log.info("choreo probe %s stalls (attempt %d)", ctx.step, ctx.attempt)
    raise TransientError(f"probe {ctx.step}: downstream is down")


HANDLER_SERVICES = {"c1": "inventory", "c2": "payment", "c3": "shipping", "c4": "notification"}

choreo_probe = Choreography(
    "choreo_probe",
    payload=ChoreoProbe,
    starts_on="cprobe.started",
    completes_on="cprobe.done",
    handlers=[
        Handler(
            "c1",
            service="inventory",
            on="cprobe.started",
            emits="cprobe.c1_done",
            fails_with="cprobe.c1_failed",
            fn=forward,
            compensation=compensate,
            compensate_on=("cprobe.c2_failed", "cprobe.c3_failed"),
            retry=QUICK_RETRY,
        ),
        Handler(
            "c2",
            service="payment",
            on="cprobe.c1_done",
            emits="cprobe.c2_done",
            fails_with="cprobe.c2_failed",
            fn=forward,
            compensation=compensate,
            compensate_on=("cprobe.c3_failed",),
            retry=QUICK_RETRY,
        ),
        Handler(
            "c3",
            service="shipping",
            on="cprobe.c2_done",
            emits="cprobe.c3_done",
            fails_with="cprobe.c3_failed",
            fn=forward,
            compensation=None,  # nothing after it can fail
            retry=QUICK_RETRY,
        ),
        Handler(
            "c4",
            service="notification",
            on="cprobe.c3_done",
            emits="cprobe.done",
            fn=forward,
            retry=QUICK_RETRY,
        ),
    ],
)

choreo_stall = Choreography(
    "choreo_stall",
    payload=ChoreoProbe,
    starts_on="cstall.started",
    completes_on="cstall.done",
    handlers=[
        Handler(
            "t1",
            service="inventory",
            on="cstall.started",
            emits="cstall.t1_done",
            fails_with="cstall.t1_failed",
            fn=forward,
            compensation=compensate,
            compensate_on=("cstall.t2_failed",),
        ),
        Handler(
            "t2",
            service="payment",
            on="cstall.t1_done",
            emits="cstall.done",
            fails_with="cstall.t2_failed",
            fn=never_emits,
            compensation=None,
            timeout=STALL_TIMEOUT,
            fail_on_timeout=True,
            retry=NEVER,
        ),
    ],
)

choreo_flag = Choreography(
    "choreo_flag",
    payload=ChoreoProbe,
    starts_on="cflag.started",
    completes_on="cflag.done",
    handlers=[
        Handler(
            "w1",
            service="shipping",
            on="cflag.started",
            emits="cflag.done",
            fn=never_emits,
            compensation=None,
            timeout=STALL_TIMEOUT,
            retry=NEVER,
        ),
    ],
)
