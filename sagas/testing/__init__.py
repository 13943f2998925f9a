"""The testing kit: run your sagas in pytest, fast, with no servers.

- ``local_runtime(app)`` / the ``saga_runtime`` fixture: the real engine in the test's thread,
  a fresh SQLite store, an in-process broker and a ``FakeClock`` that skips time;
- ``doubles``: replace a step or a remote task for one test (a function, a script of outcomes);
- ``assert_completed`` / ``assert_compensated`` / ``assert_failed``: read well, print the
  timeline when they fail;
- ``explore(saga, payload)``: run a saga once per crash point and check the invariants;
- ``embedded(app)``: the real Celery worker on threads, in real time (``saga demo``).

The pytest fixtures live in ``sagas.testing.plugin`` (see the README, "Testing your sagas").
"""

from __future__ import annotations

from ..clock import FakeClock
from .assertions import assert_compensated, assert_completed, assert_failed
from .broker import InProcessBroker, WorkerCrash
from .doubles import Double, StepDoubles, Transient, ok
from .embedded import embedded, private_database, saga_queues, wait_for
from .explore import Exploration, Point, PointResult, explore
from .invariants import check_saga
from .runtime import LocalRuntime, SagaStuck, local_runtime

__all__ = [
    "Double",
    "Exploration",
    "FakeClock",
    "Point",
    "PointResult",
    "StepDoubles",
    "Transient",
    "assert_compensated",
    "assert_completed",
    "assert_failed",
    "check_saga",
    "explore",
    "ok",
    "InProcessBroker",
    "LocalRuntime",
    "SagaStuck",
    "WorkerCrash",
    "embedded",
    "local_runtime",
    "private_database",
    "saga_queues",
    "wait_for",
]
