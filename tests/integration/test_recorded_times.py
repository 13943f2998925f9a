"""Recorded times follow the database's clock across a multi-step inline saga.

Between two reads of the database clock, the engine estimates it as the last read plus the
monotonic time elapsed. Each write's round trip must stay in that estimate: re-anchoring the
estimate after a write at a time computed before it loses the round trip, and with inline steps
(one write per step, no read in between) the loss adds up step after step. Every write here is
slowed by ``LATENCY`` (as a distant database would be), and each step reads the database's own
clock when it runs: the step's recorded start is never after that reading, and lags it by the
same amount (one write and a hop) for the last step as for the first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery import Celery
from pydantic import BaseModel
from sqlalchemy import create_engine, event, text

from sagas import Saga, StepContext
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.state import SagaState
from sagas.testing import embedded, wait_for
from tests.services import scratch_database

LATENCY = 0.1  # seconds added to every write statement
STEPS = 5


class Probe(BaseModel):
    pass


clock_saga = Saga("clock_probe", payload=Probe)
SEEN: dict[str, dict[str, datetime]] = {}
_probe_engine: Any = None


def _db_clock() -> datetime:
    with _probe_engine.connect() as conn:
        value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value


def _step(name: str) -> Any:
    def run(ctx: StepContext[Probe]) -> dict[str, str]:
        SEEN.setdefault(ctx.saga_id, {})[name] = _db_clock()
        return {"ran": name}

    run.__name__ = name
    return run


for index in range(STEPS):
    clock_saga.step(queue="clock", timeout=30, compensation=None)(_step(f"s{index}"))


@pytest.fixture(scope="module")
def rt() -> Iterator[Runtime]:
    global _probe_engine
    with scratch_database("sagas_clock") as url:
        _probe_engine = create_engine(url)
        app = Celery("clock-probe")
        settings = Settings(database_url=url, sweep_interval=5.0)
        with embedded(app, settings=settings, queues=["sagas", "clock"]) as runtime:
            assert runtime.settings.inline_steps

            @event.listens_for(runtime.store.engine, "before_cursor_execute")
            def slow_writes(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
                if statement.lstrip().upper().startswith(("WITH", "INSERT", "UPDATE")):
                    time.sleep(LATENCY)

            try:
                yield runtime
            finally:
                event.remove(runtime.store.engine, "before_cursor_execute", slow_writes)
                _probe_engine.dispose()


def test_step_start_times_stay_within_one_write_of_the_database_clock(rt: Runtime) -> None:
    saga_id = f"clock-{uuid.uuid4().hex[:10]}"
    clock_saga.start({}, saga_id=saga_id)
    record = wait_for(rt.store, saga_id, timeout=30)
    assert record.state is SagaState.COMPLETED
    _, status, _ = rt.store.get(saga_id)
    seen = SEEN[saga_id]
    assert [s.name for s in status.steps] == [f"s{i}" for i in range(STEPS)]
    lags = []
    for step in status.steps:
        assert step.started_at is not None and step.finished_at is not None
        assert step.finished_at >= step.started_at
        lag = seen[step.name] - step.started_at  # the database's clock minus the recorded
        assert lag >= timedelta(0), (step.name, lag)  # never recorded in the future
        lags.append(lag)
    # Each recorded start is estimated just before its dispatch is written, so it is behind
    # the step's own reading by about one slowed write and the hop into the step, whichever
    # inline step it is. Losing each write's round trip from the estimate would add LATENCY per
    # step. The first step is measured apart: it is dispatched by the start, whose hop into a
    # worker (a message, not an inline call) takes longer on a loaded machine (seen: 0.24 s
    # against 0.11-0.15 s for the inline ones).
    growth = lags[-1] - lags[1]
    assert abs(growth) < timedelta(seconds=LATENCY), [str(lag) for lag in lags]
    # The saga's end is estimated after the last step ran, from a clock read before it: a few
    # milliseconds of slack (the read's own time), not a write's LATENCY per step.
    assert record.finished_at is not None
    slack = timedelta(seconds=LATENCY / 2)
    assert record.finished_at >= seen[f"s{STEPS - 1}"] - slack, [str(lag) for lag in lags]
