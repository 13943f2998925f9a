"""One deployment of a versioned saga: ``celery -A tests.integration.version_app worker``.

``VERSION_DEPLOY`` says which definitions this process has, as successive deploys would:

- ``v1``: ``versioned_order`` version 1: reserve, charge;
- ``v1+v2``: version 1 beside version 2 (charge renamed to pay, notify added): sagas in flight
  finish on version 1, new starts take version 2;
- ``v1-changed``: version 1 edited in place (charge renamed) without a new version number,
  which a worker must refuse while version 1 sagas are in flight.

Every step returns which version and step ran it; ``reserve`` is retried (transient) until the
file ``VERSION_GATE`` exists, so sagas can be held in flight across a deploy.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from sagas import RetryPolicy, Saga, StepContext, TransientError
from tests.worker_harness import base_app, start_worker_process

DEPLOY = os.environ.get("VERSION_DEPLOY", "v1")
GATE = os.environ.get("VERSION_GATE", "")
HOLD = RetryPolicy(max_attempts=500, initial=0.2, backoff=1.0, max_interval=0.2, jitter=0.0)


class Order(BaseModel):
    ref: str


def _ran(version: int, step: str) -> Any:
    def run(ctx: StepContext[Order]) -> dict[str, str]:
        if step == "reserve" and not os.path.exists(GATE):
            raise TransientError("the gate is closed")
        return {"ran": f"v{version}.{step}", "ref": ctx.payload.ref}

    run.__name__ = f"v{version}_{step}"
    return run


def _define(version: int, steps: list[str]) -> Saga[Order]:
    saga = Saga("versioned_order", payload=Order, version=version)
    for step in steps:
        retry = HOLD if step == "reserve" else RetryPolicy()
        compensation = _ran(version, f"undo_{step}") if step == "reserve" else None
        saga.step(queue="vshop", timeout=30, retry=retry, compensation=compensation, name=step)(
            _ran(version, step)
        )
    return saga


if DEPLOY == "v1-changed":
    _define(1, ["reserve", "pay"])
else:
    _define(1, ["reserve", "charge"])
if DEPLOY == "v1+v2":
    _define(2, ["reserve", "pay", "notify"])

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
app = base_app("sagas_versions", [], LOG_FORMAT)
start_worker_process(app)
