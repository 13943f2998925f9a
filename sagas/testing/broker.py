"""An in-process broker and worker for tests: every message the engine sends, run in order.

``InProcessBroker(app)`` takes over ``app.send_task`` (the one call the engine publishes
with): messages go into a FIFO instead of a broker, and ``deliver()`` runs the next one through
Celery's own task tracer, as a worker would (task signals, ``Retry``, ``link``/``link_error``
callbacks, autoretry), in the calling thread. No threads, no polling, no real time: a message
with a countdown or an ETA waits for the runtime's clock (fake time), not for Python's.

What a worker would do with ``acks_late`` + ``reject_on_worker_lost`` is kept: a task that
raises is acknowledged (the engine reports failures by reply or in the database); a task that
dies (``WorkerCrash``, raised by the crash-point harness) is redelivered.

Interposition for the crash-point harness: ``on_publish`` may drop or duplicate a message as it
is sent; ``on_deliver`` may drop one as it is about to run.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery.app.trace import build_tracer

from ..clock import Clock
from ..observability import get_logger

log = get_logger("sagas.testing")


class WorkerCrash(BaseException):
    """The in-process worker "died" while running a task (raised by a test's hook). A
    ``BaseException`` so that neither the engine nor Celery's tracer handles it: the message is
    not acknowledged and is delivered again, as a broker does after a killed worker."""


@dataclass
class Message:
    """One task message: what ``send_task`` was given, as JSON would carry it."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None
    headers: dict[str, Any]
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    due: datetime | None = None  # countdown/eta: not before this (clock time)
    retries: int = 0
    deliveries: int = 0
    seq: int = 0

    @property
    def saga_id(self) -> str | None:
        sid = self.headers.get("saga_id")
        return sid if isinstance(sid, str) else None

    def describe(self) -> str:
        return f"{self.name} {self.headers.get('saga_id', '')}".strip()


@dataclass
class Delivery:
    """What happened to one delivery: ``ran``, ``crashed`` (redelivered), ``dropped`` (by a
    hook) or ``unregistered`` (no such task: Celery rejects it without requeue)."""

    message: Message
    outcome: str


PublishHook = Callable[[Message], list[Message]]
DeliverHook = Callable[[Message], bool]


@dataclass
class InProcessBroker:
    app: Any
    clock: Clock
    on_publish: PublishHook | None = None  # returns the messages to enqueue (none: lost)
    on_deliver: DeliverHook | None = None  # False: the delivery is lost
    log: list[Delivery] = field(default_factory=list)
    max_redeliveries: int = 20
    _ready: deque[Message] = field(default_factory=deque)
    _waiting: list[Message] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _original: Any = None
    _tracers: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    # -- taking over the app's publishing ------------------------------------------------------

    def install(self) -> None:
        if self._original is not None:
            return
        self._original = self.app.__dict__.get("send_task")
        self.app.send_task = self.send_task

    def uninstall(self) -> None:
        if self.app.__dict__.get("send_task") == self.send_task:
            del self.app.send_task
            if self._original is not None:
                self.app.send_task = self._original
        self._original = None

    def send_task(
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
        link: Any = None,
        link_error: Any = None,
        queue: Any = None,
        headers: dict[str, Any] | None = None,
        retries: int = 0,
        **_options: Any,
    ) -> Any:
        """``Celery.send_task``'s signature, enqueueing instead of publishing."""
        task_id = task_id or str(uuid.uuid4())
        due = None
        if countdown:
            due = self.clock.now() + timedelta(seconds=max(countdown, 0.0))
        elif eta is not None:
            due = eta  # an absolute ETA was computed from Python's clock; taken as clock time
        message = Message(
            id=task_id,
            name=name,
            args=_as_json(list(args or ())),
            kwargs=_as_json(dict(kwargs or {})),
            queue=getattr(queue, "name", queue),
            headers=_as_json(dict(headers or {})),
            callbacks=_signatures(link),
            errbacks=_signatures(link_error),
            due=due,
            retries=retries,
        )
        self.publish(message)
        return self.app.AsyncResult(task_id)

    def publish(self, message: Message) -> None:
        for m in self.on_publish(message) if self.on_publish else [message]:
            self._enqueue(m)

    def _enqueue(self, message: Message) -> None:
        message.seq = next(self._seq)
        if message.due is not None and message.due > self.clock.now():
            self._waiting.append(message)
        else:
            self._ready.append(message)

    # -- time ---------------------------------------------------------------------------------

    def next_due(self) -> datetime | None:
        """When the earliest message waiting for its countdown/ETA becomes ready."""
        return min((m.due for m in self._waiting if m.due is not None), default=None)

    def release_due(self) -> int:
        """Make ready every waiting message whose time has come (in time order)."""
        now = self.clock.now()
        due = sorted(
            (m for m in self._waiting if m.due is not None and m.due <= now),
            key=lambda m: (m.due, m.seq),
        )
        for m in due:
            self._waiting.remove(m)
            self._ready.append(m)
        return len(due)

    # -- the worker ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing ready to run (messages waiting for their time do not count)."""
        return not self._ready

    def pending(self) -> list[Message]:
        return [*self._ready, *self._waiting]

    def deliver(self) -> Delivery | None:
        """Run the next ready message (None: nothing ready)."""
        if not self._ready:
            return None
        message = self._ready.popleft()
        message.deliveries += 1
        if self.on_deliver is not None and not self.on_deliver(message):
            return self._logged(message, "dropped")
        task = self.app.tasks.get(message.name)
        if task is None:
            log.error("in-process worker: unregistered task %s rejected", message.name)
            return self._logged(message, "unregistered")
        try:
            self._tracer(task)(message.id, message.args, message.kwargs, _request(message))
        except WorkerCrash:
            if message.deliveries <= self.max_redeliveries:
                self._ready.append(message)  # not acknowledged: the broker delivers it again
            return self._logged(message, "crashed")
        return self._logged(message, "ran")

    def _tracer(self, task: Any) -> Any:
        cached = self._tracers.get(task.name)
        if cached is not None and cached[0] is task:
            return cached[1]
        tracer = build_tracer(task.name, task, app=self.app, eager=False, propagate=False)
        self._tracers[task.name] = (task, tracer)  # a double may replace the task: keyed on it
        return tracer

    def _logged(self, message: Message, outcome: str) -> Delivery:
        delivery = Delivery(message, outcome)
        self.log.append(delivery)
        return delivery


def _request(m: Message) -> dict[str, Any]:
    """The request context a worker builds from a message (what ``self.request`` shows)."""
    return {
        "id": m.id,
        "task": m.name,
        "args": m.args,
        "kwargs": m.kwargs,
        "headers": m.headers,
        "callbacks": m.callbacks,
        "errbacks": m.errbacks,
        "retries": m.retries,
        "is_eager": False,
        "hostname": "sagas-testing@localhost",
        "delivery_info": {
            "exchange": "",
            "routing_key": m.queue,
            "priority": 0,
            "redelivered": m.deliveries > 1,
        },
        "reply_to": None,
        "correlation_id": m.id,
    }


def _as_json(value: Any) -> Any:
    """What the message would carry: JSON only, as the real serializer (never pickle)."""
    return json.loads(json.dumps(value))


def _signatures(value: Any) -> list[dict[str, Any]] | None:
    if not value:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [_as_json(dict(s)) for s in items]
