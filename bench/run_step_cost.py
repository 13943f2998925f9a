"""The participant's own cost per attempt, outside the database and the broker:

    .venv/bin/python -m bench.run_step_cost LABEL      (run from the checkout to measure)

Times ``sagas.participant.run_step`` for a no-op local step, telemetry off (no tracer provider,
no metrics sink): what the off path of tracing and metrics adds to every attempt. Prints seven
rounds of 20,000 attempts (CPU microseconds per attempt) and the package it measured.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from typing import Any

from pydantic import BaseModel

import sagas
from sagas import Saga
from sagas.install import configure
from sagas.messages import StepCommand
from sagas.participant import run_step
from sagas.settings import Settings
from sagas.state import Action


class P(BaseModel):
    n: int


def main() -> None:
    logging.disable(logging.CRITICAL)
    configure(settings=Settings(database_url=f"sqlite:///{tempfile.mkdtemp()}/x.db"))
    saga = Saga("rs_bench", payload=P)

    @saga.step(queue="q", compensation=None)
    def a(ctx: Any) -> dict[str, int]:
        return {"ok": 1}

    step = saga.step_def("a")
    assert step.fn is not None
    cmd = StepCommand(
        saga_id="x", saga="rs_bench", version=1, step="a", action=Action.FORWARD,
        attempt=1, correlation_id="c", payload={"n": 1},
    )  # fmt: skip
    for _ in range(2000):
        run_step(saga, step, step.fn, cmd)
    rounds = []
    for _ in range(7):
        began = time.process_time()
        for _ in range(20000):
            run_step(saga, step, step.fn, cmd)
        rounds.append((time.process_time() - began) / 20000 * 1e6)
    label = sys.argv[1] if len(sys.argv) > 1 else ""
    shown = " ".join(f"{r:.1f}" for r in rounds)
    print(f"{label} us/attempt {shown} min {min(rounds):.1f} ({sagas.__file__})")


if __name__ == "__main__":
    main()
