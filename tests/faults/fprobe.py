"""The fault suite's probe sagas: idempotent participants that log every run.

Each step and compensation behaves like a well-written participant of a real service:

- every *run* (every time the user function is entered, including runs that are killed or
  fail) is logged first, in its own committed statement, in ``fault_run`` (saga, step, action,
  attempt, pid, database clock) — raw at-least-once delivery, as the engine really produced it;
- its *effect* is one row in ``fault_effect``, keyed UNIQUE (saga_id, step, action) and written
  with ``ON CONFLICT DO NOTHING`` — the idempotency key the engine hands out
  (``ctx.idempotency_key`` is stable across retries and redeliveries). A failing run writes no
  effect (a step is a local transaction). A compensation's row is also a tombstone: a forward run
  that arrives after its compensation (a late or redelivered command) takes no effect. Both
  writes take a transaction-level advisory lock on the key, so the check and the insert are
  atomic against each other.

The payload (``FaultProbe``) says how each step misbehaves.

Sagas (queues are the example deployment's service queues, in the fault suite's own broker
namespace):

- ``fprobe``: f1 (inventory) → f2 (payment) → f3 (shipping); 4 s step timeout.
- ``fprobe_long``: l1, l2, l3 on the same queues with a 15 s step timeout (a redelivery after a
  killed child must not race the timeout: billiard notices a dead child 0-4 s late).
- ``fprobe_soak``: f1, f2, f3 with 20 s step and compensation timeouts (``bench/chaos_soak.py``).
- ``fprobe_short``: the same shape with a 1.5 s step timeout (timeouts and late replies).
- ``fprobe_inline``: i1 and i2 both on inventory (the participant runs i2 inline), i3 on payment.
- ``fprobe_poison``: p1 (inventory) → p2 on the ``poison`` queue (compensation=None: a step
  with nothing to undo), 1.5 s timeout, 2 attempts.
- ``fprobe_slow_retry``: v1 (inventory) retried after a fixed 4 s (no jitter), v2 (payment).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text

from sagas import Action, PermanentError, RetryPolicy, Saga, StepContext, TransientError
from tests.worker_harness import process_engine

log = logging.getLogger(__name__)

STEP_TIMEOUT = 4.0
SHORT_TIMEOUT = 1.5
LONG_TIMEOUT = 15.0
SOAK_TIMEOUT = 20.0
COMPENSATION_TIMEOUT = 6.0
FAST_RETRY = RetryPolicy(max_attempts=3, initial=0.2, backoff=2.0, max_interval=1.0)
COMPENSATION_RETRY = RetryPolicy(max_attempts=3, initial=0.2, backoff=2.0, max_interval=1.0)
POISON_RETRY = RetryPolicy(max_attempts=2, initial=0.2, backoff=2.0, max_interval=1.0)
SHORT_RETRY = RetryPolicy(max_attempts=2, initial=0.2, backoff=2.0, max_interval=1.0)
POISON_TIMEOUT = 1.5
SLOW_RETRY_INTERVAL = 4.0
SLOW_RETRY = RetryPolicy(
    max_attempts=2, initial=SLOW_RETRY_INTERVAL, backoff=1.0, max_interval=SLOW_RETRY_INTERVAL,
    jitter=0.0,
)  # fmt: skip

TABLES_DDL = """
CREATE TABLE IF NOT EXISTS fault_run (
    id bigserial PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    action text NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS fault_run_saga ON fault_run (saga_id);
CREATE TABLE IF NOT EXISTS fault_effect (
    id bigserial PRIMARY KEY,
    saga_id text NOT NULL,
    step text NOT NULL,
    action text NOT NULL,
    attempt integer NOT NULL,
    at timestamptz NOT NULL,
    UNIQUE (saga_id, step, action)
);
"""


class FaultProbe(BaseModel):
    """What each step should do; keys are step names."""

    tag: str = ""
    fail_permanent: str | None = None  # this step raises PermanentError
    permanent_on: dict[str, list[int]] = {}  # step -> the attempts raising PermanentError
    transient: dict[str, int] = {}  # step -> leading forward attempts raising TransientError
    sleep: dict[str, float] = {}  # step -> seconds a forward run sleeps before its effect
    sleep_attempts: dict[str, list[int]] = {}  # step -> the attempts that sleep (default: all)
    poison: list[str] = []  # these steps SIGKILL their own process on every run
    compensation_transient: dict[str, int] = {}  # step -> leading compensation attempts failing
    compensation_always_fails: list[str] = []  # these compensations fail on every attempt


# -- the effect log: one engine per process, made on first use (after the fork) ----------------

_db = process_engine


def record_run(ctx: StepContext[Any]) -> None:
    with _db().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fault_run (saga_id, step, action, attempt, pid, at) "
                "VALUES (:s, :step, :action, :attempt, :pid, clock_timestamp())"
            ),
            {
                "s": ctx.saga_id,
                "step": ctx.step,
                "action": ctx.action.value,
                "attempt": ctx.attempt,
                "pid": os.getpid(),
            },
        )


def record_effect(ctx: StepContext[Any]) -> bool:
    """The step's effect, at most once per (saga, step, action); False if it took no effect."""
    params = {
        "s": ctx.saga_id,
        "step": ctx.step,
        "action": ctx.action.value,
        "attempt": ctx.attempt,
        "key": f"{ctx.saga_id}:{ctx.step}",
    }
    tombstone = (
        " AND NOT EXISTS (SELECT 1 FROM fault_effect WHERE saga_id = :s AND step = :step"
        " AND action = 'compensate')"
        if ctx.action is Action.FORWARD
        else ""
    )
    with _db().begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), params)
        done = conn.execute(
            text(
                "INSERT INTO fault_effect (saga_id, step, action, attempt, at) "
                "SELECT :s, :step, :action, :attempt, clock_timestamp() WHERE TRUE"
                + tombstone
                + " ON CONFLICT (saga_id, step, action) DO NOTHING"
            ),
            params,
        )
        return bool(done.rowcount)


# -- step behaviour --------------------------------------------------------------------------------


def _forward(ctx: StepContext[FaultProbe]) -> dict[str, Any]:
    record_run(ctx)
    probe = ctx.payload
    log.info("fprobe %s forward attempt %d pid %d", ctx.step, ctx.attempt, os.getpid())
    if ctx.step in probe.poison:
        os.kill(os.getpid(), signal.SIGKILL)
    sleepy = probe.sleep_attempts.get(ctx.step)
    if ctx.step in probe.sleep and (sleepy is None or ctx.attempt in sleepy):
        time.sleep(probe.sleep[ctx.step])
    if ctx.attempt <= probe.transient.get(ctx.step, 0):
        raise TransientError(f"fprobe {ctx.step}: transient failure on attempt {ctx.attempt}")
    if probe.fail_permanent == ctx.step or ctx.attempt in probe.permanent_on.get(ctx.step, ()):
        raise PermanentError(f"fprobe {ctx.step}: permanent failure")
    took = record_effect(ctx)
    return {"step": ctx.step, "attempt": ctx.attempt, "took_effect": took}


def _compensate(ctx: StepContext[FaultProbe]) -> None:
    record_run(ctx)
    probe = ctx.payload
    log.info("fprobe %s compensation attempt %d pid %d", ctx.step, ctx.attempt, os.getpid())
    if ctx.step in probe.compensation_always_fails or ctx.attempt <= (
        probe.compensation_transient.get(ctx.step, 0)
    ):
        raise TransientError(f"fprobe {ctx.step}: compensation failure on attempt {ctx.attempt}")
    record_effect(ctx)


def _declare(
    saga: Saga[FaultProbe],
    name: str,
    queue: str,
    *,
    timeout: float = STEP_TIMEOUT,
    retry: RetryPolicy = FAST_RETRY,
    compensable: bool = True,
) -> None:
    saga.step(
        name=name,
        queue=queue,
        timeout=timeout,
        retry=retry,
        compensation=_compensate if compensable else None,
        compensation_timeout=COMPENSATION_TIMEOUT,
        compensation_retry=COMPENSATION_RETRY,
    )(_forward)


DEADLINE = timedelta(minutes=10)

fprobe = Saga("fprobe", payload=FaultProbe, deadline=DEADLINE)
for _name, _queue in (("f1", "inventory"), ("f2", "payment"), ("f3", "shipping")):
    _declare(fprobe, _name, _queue)

fprobe_long = Saga("fprobe_long", payload=FaultProbe, deadline=DEADLINE)
for _name, _queue in (("l1", "inventory"), ("l2", "payment"), ("l3", "shipping")):
    _declare(fprobe_long, _name, _queue, timeout=LONG_TIMEOUT)

# The chaos soak's saga: timeouts long enough that queueing on a loaded 2-CPU machine is not
# mistaken for a lost step (the soak measures recovery from faults, not from overload).
fprobe_soak = Saga("fprobe_soak", payload=FaultProbe, deadline=DEADLINE)
for _name, _queue in (("f1", "inventory"), ("f2", "payment"), ("f3", "shipping")):
    fprobe_soak.step(
        name=_name,
        queue=_queue,
        timeout=SOAK_TIMEOUT,
        retry=FAST_RETRY,
        compensation=_compensate,
        compensation_timeout=SOAK_TIMEOUT,
        compensation_retry=COMPENSATION_RETRY,
    )(_forward)

fprobe_short = Saga("fprobe_short", payload=FaultProbe, deadline=DEADLINE)
for _name, _queue in (("t1", "inventory"), ("t2", "payment"), ("t3", "shipping")):
    _declare(fprobe_short, _name, _queue, timeout=SHORT_TIMEOUT, retry=SHORT_RETRY)

fprobe_inline = Saga("fprobe_inline", payload=FaultProbe, deadline=DEADLINE)
for _name, _queue in (("i1", "inventory"), ("i2", "inventory"), ("i3", "payment")):
    _declare(fprobe_inline, _name, _queue)

fprobe_poison = Saga("fprobe_poison", payload=FaultProbe, deadline=DEADLINE)
_declare(fprobe_poison, "p1", "inventory")
_declare(
    fprobe_poison, "p2", "poison", timeout=POISON_TIMEOUT, retry=POISON_RETRY, compensable=False
)

fprobe_slow_retry = Saga("fprobe_slow_retry", payload=FaultProbe, deadline=DEADLINE)
_declare(fprobe_slow_retry, "v1", "inventory", retry=SLOW_RETRY)
_declare(fprobe_slow_retry, "v2", "payment")

SAGAS = (
    fprobe,
    fprobe_long,
    fprobe_soak,
    fprobe_short,
    fprobe_inline,
    fprobe_poison,
    fprobe_slow_retry,
)


# ``fprobe_wait``: w1 (inventory), a wait for the signal ``go`` (a minute, then compensate),
# w3 (shipping).
class Go(BaseModel):
    by: str = "test"


fprobe_wait = Saga("fprobe_wait", payload=FaultProbe, deadline=DEADLINE)
_declare(fprobe_wait, "w1", "inventory")
fprobe_wait.wait_for("go", model=Go, timeout=60.0)
_declare(fprobe_wait, "w3", "shipping")


# ``fprobe_group``: g1 (inventory), then the parallel branches ga (payment) and gb (shipping),
# then g3 (inventory). Long timeouts, so a killed branch is redelivered, not timed out.
fprobe_group = Saga("fprobe_group", payload=FaultProbe, deadline=DEADLINE)
_declare(fprobe_group, "g1", "inventory", timeout=LONG_TIMEOUT)
with fprobe_group.parallel("fan"):
    _declare(fprobe_group, "ga", "payment", timeout=LONG_TIMEOUT)
    _declare(fprobe_group, "gb", "shipping", timeout=LONG_TIMEOUT)
_declare(fprobe_group, "g3", "inventory", timeout=LONG_TIMEOUT)


# ``fprobe_heartbeat``: b1 (inventory), b2 (payment: a long step that heartbeats, 1 s
# heartbeat interval, a two-minute timeout), b3 (shipping). b2 counts pages and heartbeats
# after each one; an attempt resumes from ``ctx.progress`` (the last page the one before it
# reported), so a run after a crash does not start over.
HEARTBEAT = 1.0
HEARTBEAT_TIMEOUT = 120.0
PAGES = 40


def _pages(ctx: StepContext[FaultProbe]) -> dict[str, Any]:
    record_run(ctx)
    start = int((ctx.progress or {}).get("page", 0))
    delay = ctx.payload.sleep.get(ctx.step, 0.0) / PAGES
    sleepy = ctx.payload.sleep_attempts.get(ctx.step)
    fenced = False
    for page in range(start, PAGES):
        if sleepy is None or ctx.attempt in sleepy:
            time.sleep(delay)
        if not ctx.heartbeat({"page": page + 1}):
            fenced = True  # the saga gave this attempt up: stop, take no effect
            break
    took = not fenced and record_effect(ctx)
    return {"attempt": ctx.attempt, "resumed_at": start, "took_effect": took}


fprobe_heartbeat = Saga("fprobe_heartbeat", payload=FaultProbe, deadline=DEADLINE)
_declare(fprobe_heartbeat, "b1", "inventory")
fprobe_heartbeat.step(
    name="b2",
    queue="payment",
    timeout=HEARTBEAT_TIMEOUT,
    heartbeat=HEARTBEAT,
    retry=FAST_RETRY,
    compensation=_compensate,
    compensation_timeout=COMPENSATION_TIMEOUT,
    compensation_retry=COMPENSATION_RETRY,
)(_pages)
_declare(fprobe_heartbeat, "b3", "shipping")
