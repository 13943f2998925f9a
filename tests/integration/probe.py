"""A saga whose steps do what their payload says, and record each run in ``probe_effect``.

The integration workers import this module. Every step and compensation first INSERTs a row
``(saga_id, step, action, attempt, clock_timestamp())`` into ``probe_effect`` in the saga store's
PostgreSQL database (so tests can see what ran, in which order and when), logs one line, and then
behaves as the ``Probe`` payload asks: fail permanently, fail transiently for the first N
attempts, or sleep (to exceed the step's timeout or the saga's deadline).

- ``probe``: steps s1..s4 on the inventory, payment, shipping and notification queues.
- ``probe_deadline``: d1 (inventory) then d2 (payment) under a 1.5 s saga deadline; d2's own
  timeout is longer than that, so sleeping in d2 trips the saga deadline first.
- ``probe_pivot``: p1, p2 (the pivot), p3, p4 on the same four queues.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from sagas import Action, PermanentError, RetryPolicy, Saga, StepContext, TransientError
from tests.worker_harness import process_engine

log = logging.getLogger(__name__)

STEP_TIMEOUT = 2.0
FAST_RETRY = RetryPolicy(max_attempts=3, initial=0.2, backoff=2.0, max_interval=2.0)
# Long enough for a compensation queued behind a slow forward attempt on the same worker.
COMPENSATION_TIMEOUT = 8.0
SAGA_DEADLINE = 1.5

EFFECT_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS probe_effect (
    id bigserial PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    action text NOT NULL,
    attempt integer NOT NULL,
    at timestamptz NOT NULL
)
"""


class Probe(BaseModel):
    """What each step should do. Step names are keys (s1..s4, d1, d2, p1..p4)."""

    tag: str = ""
    fail_permanent: str | None = None  # this step raises PermanentError
    transient: dict[str, int] = {}  # step -> leading forward attempts that raise TransientError
    sleep: dict[str, float] = {}  # step -> seconds each forward attempt sleeps
    compensation_transient: dict[str, int] = {}  # step -> leading compensation attempts failing


# -- the effect log: one small engine per process, made on first use (after the fork) ----------

_effects_engine = process_engine


def record_effect(ctx: StepContext[Any]) -> None:
    with _effects_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO probe_effect (saga_id, step, action, attempt, at) "
                "VALUES (:saga_id, :step, :action, :attempt, clock_timestamp())"
            ),
            {
                "saga_id": ctx.saga_id,
                "step": ctx.step,
                "action": ctx.action.value,
                "attempt": ctx.attempt,
            },
        )


# -- step behaviour ----------------------------------------------------------------------------


def _forward(ctx: StepContext[Probe]) -> dict[str, Any]:
    record_effect(ctx)
    log.info("probe %s forward attempt %d", ctx.step, ctx.attempt)
    probe = ctx.payload
    if ctx.step in probe.sleep:
        time.sleep(probe.sleep[ctx.step])
    if ctx.attempt <= probe.transient.get(ctx.step, 0):
        raise TransientError(f"probe {ctx.step}: transient failure on attempt {ctx.attempt}")
    if probe.fail_permanent == ctx.step:
        raise PermanentError(f"probe {ctx.step}: permanent failure")
    return {"step": ctx.step, "attempt": ctx.attempt}


def _compensate(ctx: StepContext[Probe]) -> None:
    assert ctx.action is Action.COMPENSATE
    record_effect(ctx)
    log.info("probe %s compensation attempt %d", ctx.step, ctx.attempt)
    if ctx.attempt <= ctx.payload.compensation_transient.get(ctx.step, 0):
        raise TransientError(f"probe {ctx.step}: compensation failure on attempt {ctx.attempt}")


def _declare(saga: Saga[Probe], name: str, queue: str, *, timeout: float = STEP_TIMEOUT) -> None:
    saga.step(
        name=name,
        queue=queue,
        timeout=timeout,
        retry=FAST_RETRY,
        compensation=_compensate,
        compensation_timeout=COMPENSATION_TIMEOUT,
        compensation_retry=FAST_RETRY,
    )(_forward)


STEP_QUEUES = {"s1": "inventory", "s2": "payment", "s3": "shipping", "s4": "notification"}

probe = Saga("probe", payload=Probe, deadline=timedelta(minutes=5))
for _name, _queue in STEP_QUEUES.items():
    _declare(probe, _name, _queue)

probe_deadline = Saga("probe_deadline", payload=Probe, deadline=SAGA_DEADLINE)
_declare(probe_deadline, "d1", "inventory")
_declare(probe_deadline, "d2", "payment", timeout=10.0)

# ``probe_pivot``: p1 (inventory), p2 the pivot (payment), then p3 (shipping) and p4
# (notification), which take no compensation: past the pivot they are retried, then parked.
PIVOT_QUEUES = {"p1": "inventory", "p2": "payment", "p3": "shipping", "p4": "notification"}
probe_pivot = Saga("probe_pivot", payload=Probe, deadline=timedelta(minutes=5))
for _name, _queue in PIVOT_QUEUES.items():
    probe_pivot.step(
        name=_name,
        queue=_queue,
        timeout=STEP_TIMEOUT,
        retry=FAST_RETRY,
        compensation=_compensate if _name in ("p1", "p2") else None,
        compensation_timeout=COMPENSATION_TIMEOUT,
        compensation_retry=FAST_RETRY,
        pivot=_name == "p2",
    )(_forward)

# ``probe_wait``: w1 (inventory), a wait for the signal ``approval`` (3 s, then the saga
# compensates), w2 (payment) which returns what the signal carried.


class ProbeApproval(BaseModel):
    by: str


def _after_approval(ctx: StepContext[Probe]) -> dict[str, Any]:
    record_effect(ctx)
    return {"approved_by": ctx.results["approval"]["by"]}


WAIT_TIMEOUT = 3.0
probe_wait = Saga("probe_wait", payload=Probe, deadline=timedelta(minutes=5))
_declare(probe_wait, "w1", "inventory")
probe_wait.wait_for("approval", model=ProbeApproval, timeout=WAIT_TIMEOUT)
probe_wait.step(queue="payment", timeout=STEP_TIMEOUT, compensation=None, name="w2")(
    _after_approval
)

# ``probe_group``: g0 (inventory), then the parallel branches ga (payment), gb (shipping) and
# gc (notification), then gz (inventory), which sees every branch's result.
GROUP_BRANCHES = {"ga": "payment", "gb": "shipping", "gc": "notification"}


def _after_group(ctx: StepContext[Probe]) -> dict[str, Any]:
    record_effect(ctx)
    return {"saw": sorted(k for k in ctx.results if k in GROUP_BRANCHES)}


probe_group = Saga("probe_group", payload=Probe, deadline=timedelta(minutes=5))
_declare(probe_group, "g0", "inventory")
with probe_group.parallel("fan"):
    for _name, _queue in GROUP_BRANCHES.items():
        _declare(probe_group, _name, _queue)
probe_group.step(queue="inventory", timeout=STEP_TIMEOUT, compensation=None, name="gz")(
    _after_group
)

# ``probe_ops`` (operator recovery): o1 (inventory), o2 (payment), o3 (shipping), each tried
# once. With ``gate``, o2 runs until the test opens the gate (a row in ``probe_gate``), so an
# operator can act while it runs; ``fail`` names a step that fails for good.


class OpsProbe(BaseModel):
    gate: bool = False
    fail: str | None = None


GATE_WAIT = 25.0  # o2's longest wait for its gate (its timeout is longer)


def _gate_open(saga_id: str) -> bool:
    with _effects_engine().connect() as conn:
        found = conn.execute(text("SELECT 1 FROM probe_gate WHERE saga_id = :s"), {"s": saga_id})
        return found.first() is not None


def _ops_forward(ctx: StepContext[OpsProbe]) -> dict[str, Any]:
    record_effect(ctx)
    if ctx.payload.gate and ctx.step == "o2":
        until = time.monotonic() + GATE_WAIT
        while not _gate_open(ctx.saga_id):  # a long effect, finishing when the test says
            if time.monotonic() > until:
                raise PermanentError("probe o2: the gate never opened")
            time.sleep(0.05)
    if ctx.payload.fail == ctx.step:
        raise PermanentError(f"probe {ctx.step}: permanent failure")
    return {"step": ctx.step, "attempt": ctx.attempt}


def _ops_compensate(ctx: StepContext[OpsProbe]) -> None:
    record_effect(ctx)


probe_ops = Saga("probe_ops", payload=OpsProbe, deadline=timedelta(minutes=5))
for _name, _queue in (("o1", "inventory"), ("o2", "payment"), ("o3", "shipping")):
    probe_ops.step(
        name=_name,
        queue=_queue,
        timeout=GATE_WAIT + 10 if _name == "o2" else STEP_TIMEOUT,
        retry=RetryPolicy(max_attempts=1),
        compensation=_ops_compensate,
        compensation_timeout=COMPENSATION_TIMEOUT,
        compensation_retry=FAST_RETRY,
    )(_ops_forward)
