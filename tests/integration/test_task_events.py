"""Flower and ``celery events`` tell the truth about step tasks.

Real ``celery worker -E`` processes on Redis and a real event receiver (the one Flower uses,
``app.events.Receiver``): a failed step attempt is a FAILURE task, an attempt the saga retries
is a RETRY, a successful one SUCCESS, and a step that ran inline in another step's task (no
message of its own) still appears as a task with its own events. The saga records the outcomes
as always; the store is SQLite in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.events.event import get_exchange
from kombu import Queue

from sagas.transport import InlineTask, announce_inline
from tests.services import AMQP_URL
from tests.wheelhouse import spawn, stop_group

pytestmark = [pytest.mark.integration, pytest.mark.workers]

BROKER = "redis://127.0.0.1:6379/13"

SAGAS_MODULE = """
from pydantic import BaseModel
from sagas import PermanentError, RetryPolicy, Saga, StepContext, TransientError

class Order(BaseModel):
    order_id: str
    outcome: str = "ok"  # ok | flaky | declined

events_order = Saga("events_order", payload=Order)

def undo(ctx: StepContext[Order]) -> None:
    pass

@events_order.step(queue="ev-shop", timeout=20, compensation=undo)
def reserve(ctx: StepContext[Order]) -> dict:
    return {"reserved": True}

@events_order.step(queue="ev-pay", timeout=20, compensation=None,
                   retry=RetryPolicy(max_attempts=3, initial=0.2, backoff=1.0, max_interval=0.2))
def charge(ctx: StepContext[Order]) -> dict:
    if ctx.payload.outcome == "declined":
        raise PermanentError("card declined")
    if ctx.payload.outcome == "flaky" and ctx.attempt == 1:
        raise TransientError("gateway timeout")
    return {"charged": True}

@events_order.step(queue="ev-pay", timeout=20, compensation=None)
def notify(ctx: StepContext[Order]) -> dict:
    return {"sent": True}
"""

CELERY_MODULE = f"""
import os
from celery import Celery
import sagas

root = os.environ["SHOP_ROOT"]
app = Celery("events_shop")
app.conf.update(
    broker_url={BROKER!r},
    task_serializer="json",
    accept_content=["json"],
    worker_send_task_events=True,
    task_send_sent_event=True,
    sagas_database_url="sqlite:///" + os.path.join(root, "sagas.db"),
    sagas_coordinator_queue="ev-coordinator",
    sagas_sweep_interval=0.2,
)
sagas.install(app, modules=["events_sagas"])
"""


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
    env.update(SHOP_ROOT=str(root), PYTHONPATH=str(root))
    return env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "events_sagas.py").write_text(textwrap.dedent(SAGAS_MODULE))
    (tmp_path / "events_celery.py").write_text(textwrap.dedent(CELERY_MODULE))
    migrate = subprocess.run(
        [sys.executable, "-c", "import events_celery, sagas\n"
         "from sagas.store.migrate import upgrade\nupgrade(sagas.get_runtime().store.engine)"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    return tmp_path


@pytest.fixture
def workers(project: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs = []
    for name, queues, beat in (("coord", "ev-coordinator,ev-shop", True), ("pay", "ev-pay", False)):
        argv = [sys.executable, "-m", "celery", "-A", "events_celery", "worker", "-E"]
        argv += ["-Q", queues, "-n", f"{name}@%h", "-P", "threads", "-c", "2", "-l", "INFO"]
        if beat:
            argv += ["-B", "-s", str(project / "beat-schedule")]
        procs.append(spawn(argv, project, _env(project), project / f"{name}.log"))
    try:
        yield procs
    finally:
        stop_group(*procs)


class Events:
    """Task events seen by a receiver, by task uuid (the way Flower keeps them)."""

    def __init__(self) -> None:
        self.app = Celery("events_probe", broker=BROKER)
        self.tasks: dict[str, dict[str, Any]] = {}
        self.ready = threading.Event()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on(self, event: dict[str, Any]) -> None:
        self.ready.set()  # the receiver's queue is bound: it has seen an event (a heartbeat)
        uuid = event.get("uuid")
        if not uuid:
            return
        task = self.tasks.setdefault(uuid, {"types": []})
        task["types"].append(event["type"])
        for key in ("name", "args", "exception"):
            if event.get(key):
                task[key] = event[key]

    def _run(self) -> None:
        with self.app.connection() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on})
            # Blocks, like Flower's; stops at the next event (workers heartbeat every 2 s).
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def named(self, suffix: str) -> list[dict[str, Any]]:
        return [t for t in list(self.tasks.values()) if t.get("name", "").endswith(suffix)]


@pytest.fixture
def events() -> Iterator[Events]:
    e = Events()
    e.thread.start()
    assert e.ready.wait(30), "no worker event seen (are the workers up, sending events?)"
    try:
        yield e
    finally:
        e.receiver.should_stop = True
        e.thread.join(10)


def _start_and_wait(project: Path, orders: dict[str, str]) -> str:
    code = "import events_celery, sagas\nfrom sagas import start_saga\n"
    for sid, outcome in orders.items():
        code += f"start_saga.delay('events_order', {{'order_id': {sid!r}, 'outcome': {outcome!r}}}, saga_id={sid!r})\n"
    for sid in orders:
        code += f"print({sid!r}, sagas.wait({sid!r}, timeout=60).state.value)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=_env(project),
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _poll(what: str, check: Any, seen: Events, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {seen.tasks}"
        time.sleep(0.1)


def test_step_tasks_report_failure_retry_and_inline_steps(
    project: Path, workers: list[subprocess.Popen[str]], events: Events
) -> None:
    suffix = f"-{os.getpid()}-{time.monotonic_ns() % 100000}"
    ok, flaky, declined = (f"ok{suffix}", f"flaky{suffix}", f"declined{suffix}")
    out = _start_and_wait(project, {ok: "ok", flaky: "flaky", declined: "declined"})
    assert out.split() == [ok, "completed", flaky, "completed", declined, "failed"]

    def charge(sid: str) -> list[dict[str, Any]]:
        return [t for t in events.named("events_order.charge") if f"id={sid} " in t.get("args", "")]

    def notify(sid: str) -> list[dict[str, Any]]:
        return [t for t in events.named("events_order.notify") if f"id={sid} " in t.get("args", "")]

    _poll("every attempt's final event", lambda: len(charge(flaky)) == 2 and notify(ok) and notify(flaky)
          and any("task-failed" in t["types"] for t in charge(declined)), events)  # fmt: skip
    # The declined card: a FAILURE, with the step's error; the saga compensated (above).
    [failed] = charge(declined)
    assert "task-failed" in failed["types"] and "task-succeeded" not in failed["types"]
    assert "card declined" in failed["exception"]
    # The flaky gateway: attempt 1 a RETRY, attempt 2 a SUCCESS.
    by_attempt = sorted(charge(flaky), key=lambda t: t["args"])
    assert [("task-retried" in t["types"], "task-succeeded" in t["types"]) for t in by_attempt] == [
        (True, False),
        (False, True),
    ]
    assert "gateway timeout" in by_attempt[0]["exception"]
    # notify ran inline after charge in the pay worker's task: it has events of its own.
    for sid in (ok, flaky):
        [inline] = notify(sid)
        assert inline["types"][:2] == ["task-received", "task-started"]
        assert inline["types"][-1] == "task-succeeded"


@pytest.mark.parametrize("broker", [BROKER, AMQP_URL], ids=["redis", "rabbitmq"])
def test_steps_run_inline_are_announced_in_one_message(broker: str) -> None:
    """Three events per inline step were three publishes each; now one ``task.multi`` message
    per task carries them all, in order, the batch a receiver unpacks (above, the real one)."""
    app = Celery("announce_probe", broker=broker)
    app.conf.worker_send_task_events = True
    mark = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    got: list[tuple[str, Any]] = []

    def on_message(body: Any, message: Any) -> None:
        got.append((message.delivery_info["routing_key"], body))
        message.ack()

    with app.connection_for_read() as conn:
        exchange = get_exchange(conn, name=app.conf.event_exchange)
        queue = Queue(mark, exchange, routing_key="#", auto_delete=True, exclusive=True)
        with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
            # Wait until the subscription is live (Redis fanout is pub/sub: a message published
            # before it is not kept): a worker-style sentinel comes back through it.
            with app.events.default_dispatcher() as d:
                deadline = time.monotonic() + 20
                while not any(_events_named(body, mark) for _, body in got):
                    assert time.monotonic() < deadline, "the probe's queue never got an event"
                    d.send("worker-probe", note=mark)
                    _drain(conn, 0.2)
            got.clear()
            announce_inline(
                app,
                [
                    InlineTask(f"{mark}.a", "a", 1, True, False, "", {"x": 1}, 0.01),
                    InlineTask(f"{mark}.b", "b", 2, False, True, "E: later", None, 0.02),
                    InlineTask(f"{mark}.c", "c", 1, False, False, "E: no", None, 0.03),
                ],
            )
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                _drain(conn, 0.2)
            _drain(conn, 0.5)  # anything else it sent arrives by now
    mine = [(key, body) for key, body in got if _events_named(body, mark)]
    assert [key for key, _ in mine] == ["task.multi"], got
    events = mine[0][1]
    assert [e["type"] for e in events] == [
        "task-received", "task-started", "task-succeeded",
        "task-received", "task-started", "task-retried",
        "task-received", "task-started", "task-failed",
    ]  # fmt: skip
    assert [e.get("name") for e in events[::3]] == [f"{mark}.a", f"{mark}.b", f"{mark}.c"]
    assert len({e["uuid"] for e in events}) == 3
    assert events[5]["exception"] == "E: later" and events[8]["exception"] == "E: no"


def _events_named(body: Any, mark: str) -> bool:
    items = body if isinstance(body, list) else [body]
    return any(mark in str(e.get("name", "")) or e.get("note") == mark for e in items)


def _drain(conn: Any, seconds: float) -> None:
    try:
        conn.drain_events(timeout=seconds)
    except TimeoutError:
        pass
