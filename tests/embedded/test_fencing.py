"""A timed-out attempt is fenced: ``ctx.is_current()`` turns False once the saga moved past it
(a long step checks it before an effect that must not land late), and a remote step's task is
sent with the attempt's deadline as its expiry, which its own Celery retries keep."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

import sagas
from sagas import RetryPolicy, Saga, StepContext
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, wait_for
from tests.embedded.conftest import Published
from tests.embedded.test_embedded import ORDER
from workers.app import app


class Job(BaseModel):
    ref: str


SEEN: dict[str, list[tuple[int, bool, bool]]] = {}


def slow(ctx: StepContext[Job]) -> dict[str, Any]:
    before = ctx.is_current()
    if ctx.attempt == 1:
        time.sleep(1.5)  # past the 0.5 s timeout: the sweeper times this attempt out
    SEEN.setdefault(ctx.saga_id, []).append((ctx.attempt, before, ctx.is_current()))
    return {"attempt": ctx.attempt}


fenced = Saga("embedded_fenced", payload=Job)
fenced.step(
    queue="inventory",
    timeout=0.5,
    retry=RetryPolicy(max_attempts=3, initial=0.1, backoff=1.0, jitter=0.0),
    compensation=None,
)(slow)


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("fencing") / "sagas.db"
    settings = Settings(database_url=f"sqlite:///{db}", sweep_interval=0.1)
    with embedded(app, settings=settings) as runtime:
        yield runtime


def test_a_timed_out_attempt_knows_it_is_fenced(rt: Runtime) -> None:
    saga_id = f"fence-{uuid.uuid4().hex[:10]}"
    fenced.start({"ref": "x"}, saga_id=saga_id)
    assert wait_for(rt.store, saga_id, timeout=20).state.value == "completed"
    deadline = time.monotonic() + 10
    while len(SEEN.get(saga_id, [])) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the first attempt wakes from its sleep after the second finished
    assert sorted(SEEN[saga_id]) == [(1, True, False), (2, True, True)]
    assert sagas.get(saga_id).steps[0].attempt == 2


def test_a_remote_step_is_sent_with_its_deadline_as_expiry(
    rt: Runtime, published: Published
) -> None:
    saga_id = f"fence-{uuid.uuid4().hex[:10]}"
    sagas.get_saga("order_fulfillment").start(ORDER, saga_id=saga_id)
    wait_for(rt.store, saga_id, timeout=20)
    [remote] = [m for m in published if m["task"] == "notification.send_confirmation"]
    step = sagas.get(saga_id).step("send_confirmation")
    assert remote["headers"]["expires"] is not None
    assert step.started_at is not None
    assert remote["headers"]["expires"] > step.started_at.isoformat()
