"""Probe sagas for the security tests, registered at collection time (like a worker's imports).

``security_probe``'s step does what its payload says and records every run in ``CALLS``, so a
test can prove a message was (or was never) executed. ``security_lost``'s step lives on a queue
the security harness does not consume: its real command is never delivered, and only a forged
copy sent to a consumed queue could run it.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel

from sagas import PermanentError, RetryPolicy, Saga, StepContext

LOST_QUEUE = "security_lost"
CALLS: list[tuple[str, str, str]] = []  # (saga_id, step, action) of every run
_lock = threading.Lock()


class Probe(BaseModel):
    text: str = ""
    mode: Literal["ok", "permanent", "crash", "deep"] = "ok"


def _ran(ctx: StepContext[Any]) -> None:
    with _lock:
        CALLS.append((ctx.saga_id, ctx.step, ctx.action.value))


def runs(saga_id: str) -> list[tuple[str, str, str]]:
    with _lock:
        return [c for c in CALLS if c[0] == saga_id]


def undo_echo(ctx: StepContext[Probe]) -> None:
    _ran(ctx)


def echo(ctx: StepContext[Probe]) -> Any:
    _ran(ctx)
    mode, text = ctx.payload.mode, ctx.payload.text
    if mode == "permanent":
        raise PermanentError(f"refused: {text}")
    if mode == "crash":
        raise ValueError(f"crashed: {text}")
    if mode == "deep":
        deep: list[Any] = []
        for _ in range(10_000):
            deep = [deep]
        return {"deep": deep}
    return {"text": text}


def finish(ctx: StepContext[Probe]) -> dict[str, bool]:
    _ran(ctx)
    return {"done": True}


probe = Saga("security_probe", payload=Probe, deadline=timedelta(seconds=60))
probe.step(
    queue="security",
    timeout=5,
    retry=RetryPolicy.build(max_attempts=1),
    compensation=undo_echo,
)(echo)
probe.step(queue="security", timeout=5, compensation=None)(finish)


def lost_step(ctx: StepContext[Probe]) -> dict[str, bool]:
    _ran(ctx)
    return {"ran": True}


lost = Saga("security_lost", payload=Probe, deadline=timedelta(seconds=60))
lost.step(
    queue=LOST_QUEUE,
    timeout=1.0,
    retry=RetryPolicy.build(max_attempts=1),
    compensation=None,
)(lost_step)
