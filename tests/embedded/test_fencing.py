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


BEATS: dict[str, list[tuple[int, Any, list[bool], bool]]] = {}


def pages(ctx: StepContext[Job]) -> dict[str, Any]:
    """Heartbeats for a second (twice the heartbeat interval: it must not time out), then,
    on attempt 1 only, goes silent like a hung worker."""
    answers = []
    for page in range(10):
        answers.append(ctx.heartbeat({"page": page + 1, "attempt": ctx.attempt}))
        time.sleep(0.1)
    if ctx.attempt == 1:
        time.sleep(1.5)  # no heartbeat for 3 intervals: the sweeper gives the attempt up
    after = ctx.heartbeat({"page": 99, "attempt": ctx.attempt})
    BEATS.setdefault(ctx.saga_id, []).append((ctx.attempt, ctx.progress, answers, after))
    return {"attempt": ctx.attempt}


beating = Saga("embedded_heartbeat", payload=Job)
beating.step(
    queue="inventory",
    timeout=30,
    heartbeat=0.5,
    retry=RetryPolicy(max_attempts=3, initial=0.1, backoff=1.0, jitter=0.0),
    compensation=None,
)(pages)


@app.task(name="tests.embedded.remote_pages")
def remote_pages(payload: dict[str, Any], saga: dict[str, Any]) -> dict[str, Any]:
    """A remote step's task in "another codebase": it only has the ``saga=`` dict and
    ``sagas.heartbeat``. Runs for 2.5 s, more than twice its 1 s heartbeat interval."""
    for page in range(25):
        sagas.heartbeat(saga, {"page": page + 1})
        time.sleep(0.1)
    return {"pages": 25, "resumed_from": saga["progress"]}


remote_beating = Saga("embedded_remote_heartbeat", payload=Job)
remote_beating.remote_step(
    "render",
    task="tests.embedded.remote_pages",
    queue="inventory",
    timeout=30,
    heartbeat=1.0,
    retry=RetryPolicy(max_attempts=2, initial=0.1, backoff=1.0, jitter=0.0),
    compensation=None,
)


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


def test_heartbeats_keep_an_attempt_alive_and_a_silent_one_is_fenced(rt: Runtime) -> None:
    saga_id = f"beat-{uuid.uuid4().hex[:10]}"
    beating.start({"ref": "x"}, saga_id=saga_id)
    assert wait_for(rt.store, saga_id, timeout=20).state.value == "completed"
    deadline = time.monotonic() + 10
    while len(BEATS.get(saga_id, [])) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # attempt 1 wakes from its silence after attempt 2 finished
    (one, progress1, answers1, after1), (two, progress2, answers2, after2) = sorted(
        BEATS[saga_id], key=lambda b: b[0]
    )
    assert (one, two) == (1, 2)
    # A second of heartbeats (twice the interval) kept attempt 1 open; silence fenced it.
    assert progress1 is None and all(answers1) and after1 is False
    # Attempt 2 was told how far attempt 1 got (its last heartbeat that was written).
    assert progress2 is not None and progress2["attempt"] == 1 and progress2["page"] >= 7
    assert all(answers2) and after2 is True
    info = sagas.get(saga_id)
    assert info.steps[0].attempt == 2
    [timed_out] = [h for h in info.history if h.kind == "step_timed_out"]
    assert timed_out.attempt == 1 and timed_out.detail is not None
    assert timed_out.detail["heartbeat"] == 0.5
    # The last heartbeat written is attempt 2's (which one depends on the merging of calls
    # less than a third of the interval apart).
    assert info.steps[0].progress["attempt"] == 2


def test_a_remote_steps_heartbeats_by_message_keep_it_alive(rt: Runtime) -> None:
    saga_id = f"rbeat-{uuid.uuid4().hex[:10]}"
    remote_beating.start({"ref": "x"}, saga_id=saga_id)
    assert wait_for(rt.store, saga_id, timeout=20).state.value == "completed"
    info = sagas.get(saga_id)
    step = info.steps[0]
    assert step.attempt == 1 and step.result == {"pages": 25, "resumed_from": None}
    assert not [h for h in info.history if h.kind == "step_timed_out"]
    # Heartbeats arrive by message: the last one applied may trail the task's reply.
    assert step.progress is not None and step.progress["page"] >= 10
