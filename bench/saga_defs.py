"""The bench sagas: 4 no-op steps, no compensation, a one-field payload.

``bench_spread``: every step on its own queue (4 service workers + the coordinator).
``bench_inline``: all 4 steps on one queue (the participant's inline fast path).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sagas import Saga, StepContext


class BenchPayload(BaseModel):
    n: int


def noop(ctx: StepContext[BenchPayload]) -> None:
    return None


def _define(name: str, queues: list[str]) -> Saga[Any]:
    saga: Saga[Any] = Saga(name, payload=BenchPayload, version=1)
    for i, queue in enumerate(queues, start=1):
        saga.step(queue=queue, compensation=None, name=f"step{i}")(noop)
    return saga


bench_spread = _define("bench_spread", ["bench_s1", "bench_s2", "bench_s3", "bench_s4"])
bench_inline = _define("bench_inline", ["bench_inline"] * 4)


# The scale benchmark starts sagas that stay in flight (nobody consumes their queue) while it
# measures the sweeper: a long step timeout keeps their timers from falling due meanwhile.
bench_scale: Saga[Any] = Saga("bench_scale", payload=BenchPayload, version=1)
for _i in range(1, 5):
    bench_scale.step(queue="bench_scale", compensation=None, name=f"step{_i}", timeout=3600)(noop)
