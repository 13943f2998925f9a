"""Everything the engine sends on the broker, in one place (the outbound door to Celery).

All messages are JSON; Flower shows ``argsrepr`` (saga, id, step, attempt), never payloads. The
saga's correlation id rides in the headers of every message. Also here: the choreography event
bus's kombu topology (one topic exchange, one queue per service bound per event) and which
queues this worker consumes. ``sagas.tasks`` is the inbound door: every task received.
"""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from celery import Signature
from celery import current_app as _current_app
from kombu.entity import Exchange, Queue, binding
from pydantic import BaseModel

from .catalog import choreographies
from .choreography.definition import Choreography, event_queue_name
from .context import remote_context, step_context
from .definition import StepDef
from .messages import EventMessage, HeartbeatMessage, StepCommand, StepReply
from .state import Action
from .tracing import TRACE_HEADER

START_TASK = "sagas.start_saga"
REPLY_TASK = "sagas.step_reply"
REMOTE_OK_TASK = "sagas.remote_reply"
REMOTE_ERROR_TASK = "sagas.remote_failed"
WAKE_TASK = "sagas.wake"
HEARTBEAT_TASK = "sagas.heartbeat"
SWEEP_TASK = "sagas.sweep"
EVENT_TASK = "choreography.event"
CORRELATION_HEADER = "saga_correlation_id"

EXCHANGE = Exchange("sagas.events", type="topic", durable=True)
COMBINED_QUEUE = "sagas.events"  # the embedded default's one queue bound to every event


class CeleryApp(Protocol):
    """The part of a Celery app the engine uses (Celery itself is untyped)."""

    @property
    def amqp(self) -> Any: ...

    @property
    def conf(self) -> Any: ...

    @property
    def events(self) -> Any: ...

    @property
    def control(self) -> Any: ...

    def connection_for_write(self) -> Any: ...

    def send_task(self, name: str, *args: Any, **options: Any) -> Any: ...


def current_app() -> CeleryApp:
    """The app a process that configured none publishes with (Celery's current app)."""
    app: CeleryApp = _current_app._get_current_object()
    return app


def coordinator_queue(name: str) -> Queue:
    """The coordinator's durable queue (direct exchange of the same name, Celery's default)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)


def broker_reachable(app: CeleryApp, timeout: float = 5.0) -> None:
    """Connect to the app's broker once; raises the transport's error if it cannot."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def queues_consumed(app: CeleryApp, timeout: float = 2.0) -> dict[str, set[str]]:
    """Queues each running worker consumes (``celery inspect active_queues``), by worker."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {worker: {q["name"] for q in queues} for worker, queues in replies.items()}


def headers(
    correlation_id: str, saga_id: str, trace: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The headers of every saga message; ``trace``: the saga's trace context (tracing on)."""
    found: dict[str, Any] = {CORRELATION_HEADER: correlation_id, "saga_id": saga_id}
    if trace:
        found[TRACE_HEADER] = dict(trace)
    return found


def consumed_queues(app: CeleryApp) -> set[str] | None:
    """Queues this worker consumes; None when not known (not a worker, or every queue)."""
    consume_from = getattr(getattr(app, "amqp", None), "queues", None)
    names = getattr(consume_from, "consume_from", None)
    return set(names) if names else None


# -- orchestration ------------------------------------------------------------------------------


def send_step(
    app: CeleryApp,
    step: StepDef,
    command: StepCommand,
    coordinator_queue: str,
    payload_model: type[BaseModel],
    trace: Mapping[str, str] | None = None,
) -> None:
    hdrs = headers(command.correlation_id, command.saga_id, trace)
    queue = step.queue_for(command.action)
    remote = step.compensation_task if command.action is Action.COMPENSATE else step.task
    if remote is None:
        app.send_task(
            step.task_name(command.action),
            # Unset optional fields stay out: a worker of the previous release (its messages
            # forbid unknown fields) still takes the command during a rolling deploy.
            args=[command.model_dump(mode="json", exclude_none=True)],
            queue=queue,
            headers=hdrs,
            argsrepr=command.describe(),
            kwargsrepr="{}",
        )
        return
    ids = {
        "saga_id": command.saga_id,
        "step": command.step,
        "attempt": command.attempt,
        "action": command.action.value,
        "correlation_id": command.correlation_id,
    }
    options = {"queue": coordinator_queue, "headers": hdrs}
    app.send_task(
        remote,
        kwargs=remote_arguments(step, command, payload_model, coordinator_queue),
        queue=queue,
        headers=hdrs,
        # The remote task's own Celery retries keep this: none runs past the step's deadline,
        # when the saga has timed the attempt out and may send the next one.
        expires=command.deadline_at,
        link=Signature(REMOTE_OK_TASK, kwargs=ids, options=options, app=app),
        link_error=Signature(REMOTE_ERROR_TASK, kwargs=ids, options=options, app=app),
        argsrepr=command.describe(),
        kwargsrepr="{}",
    )


def remote_arguments(
    step: StepDef, command: StepCommand, payload_model: type[BaseModel], coordinator_queue: str
) -> dict[str, Any]:
    """Keyword arguments of a remote step's task: ``arguments(ctx)`` if declared, else
    ``payload=<dict>, saga=<ids, attempt, idempotency key, ...>`` (with where its heartbeats
    go: ``sagas.heartbeat(saga, details)``)."""
    if step.arguments is not None:
        return step.arguments(step_context(payload_model, command))
    context = {**remote_context(command), "coordinator_queue": coordinator_queue}
    return {"payload": command.payload, "saga": context}


def send_heartbeat(
    app: CeleryApp, beat: HeartbeatMessage, correlation_id: str, coordinator_queue: str
) -> None:
    describe = f"id={beat.saga_id} step={beat.step} attempt={beat.attempt}"
    _to_coordinator(
        app, HEARTBEAT_TASK, beat, beat.saga_id, correlation_id, coordinator_queue, describe
    )


def send_reply(
    app: CeleryApp, reply: StepReply, correlation_id: str, coordinator_queue: str
) -> None:
    _to_coordinator(
        app, REPLY_TASK, reply, reply.saga_id, correlation_id, coordinator_queue, reply.describe()
    )


def _to_coordinator(
    app: CeleryApp,
    task: str,
    message: BaseModel,
    saga_id: str,
    correlation_id: str,
    coordinator_queue: str,
    describe: str,
) -> None:
    app.send_task(
        task,
        args=[message.model_dump(mode="json")],
        queue=coordinator_queue,
        headers=headers(correlation_id, saga_id),
        argsrepr=describe,
        kwargsrepr="{}",
    )


def send_wake(app: CeleryApp, saga_id: str, countdown: float, coordinator_queue: str) -> None:
    app.send_task(
        WAKE_TASK,
        args=[saga_id],
        queue=coordinator_queue,
        countdown=max(countdown, 0.0),
        argsrepr=f"id={saga_id}",
    )


def send_escalation(app: CeleryApp, task: str, kwargs: dict[str, Any]) -> None:
    """The operator's own escalation task (``SAGAS_ESCALATION_TASK``)."""
    app.send_task(task, kwargs=kwargs)


# -- task events for steps run inline (Flower shows them like any task) -------------------------


@dataclass(frozen=True, slots=True)
class InlineTask:
    name: str  # the step's task name, as if it had been sent
    describe: str  # what Flower shows as args: saga, id, step, attempt
    attempt: int
    ok: bool
    retried: bool  # failed, and the saga scheduled another attempt
    error: str
    result: Any
    seconds: float


def announce_inline(app: CeleryApp, tasks: list[InlineTask]) -> None:
    """Send received/started/succeeded|failed|retried task events for steps a worker ran in
    the same task as another (no message of their own, so Celery sent no events for them).
    Only when the app sends task events (``worker_send_task_events``), as Flower needs.

    All of them go in one ``task.multi`` message, the batch Celery's own worker sends and
    every event receiver (Flower, ``celery events``) unpacks: one publish per task instead of
    three per inline step, which on Redis was a third of an inline worker's CPU."""
    if not app.conf.worker_send_task_events or not tasks:
        return
    with app.amqp.producer_pool.acquire(block=True) as producer:
        dispatcher = app.events.Dispatcher(
            producer.connection,
            channel=producer.channel,
            buffer_while_offline=False,
            buffer_group=["task"],
            buffer_limit=3 * len(tasks) + 1,  # never flushed half-way
        )
        with dispatcher:
            for t in tasks:
                uuid = str(_uuid.uuid4())
                dispatcher.send(
                    "task-received",
                    uuid=uuid,
                    name=t.name,
                    args=t.describe,
                    kwargs="{}",
                    retries=t.attempt - 1,
                    eta=None,
                    expires=None,
                    root_id=uuid,
                    parent_id=None,
                )
                dispatcher.send("task-started", uuid=uuid)
                if t.ok:
                    dispatcher.send(
                        "task-succeeded",
                        uuid=uuid,
                        result=repr(t.result)[:200],
                        runtime=t.seconds,
                    )
                elif t.retried:
                    dispatcher.send(
                        "task-retried", uuid=uuid, exception=t.error[:500], traceback=""
                    )
                else:
                    dispatcher.send("task-failed", uuid=uuid, exception=t.error[:500], traceback="")
            dispatcher.flush(errors=False, groups=True)


# -- the choreography event bus -----------------------------------------------------------------


def event_queues(*, combined: bool = False, only: Iterable[str] | None = None) -> list[Queue]:
    """Queues to declare and consume: one per service (or one combined), bound per event.

    ``only`` limits them to the named choreographies (default: every registered one)."""
    return queues_for(choreographies(), combined=combined, only=only)


def queues_for(
    choreos: Iterable[Choreography[Any]],
    *,
    combined: bool = False,
    only: Iterable[str] | None = None,
) -> list[Queue]:
    subs: dict[str, set[str]] = {}
    names = set(only) if only is not None else None
    for choreo in choreos:
        if names is not None and choreo.name not in names:
            continue
        for service, keys in choreo.subscriptions().items():
            queue = COMBINED_QUEUE if combined else event_queue_name(service)
            subs.setdefault(queue, set()).update(keys)
    return [
        Queue(name, bindings=[binding(EXCHANGE, routing_key=k) for k in sorted(keys)], durable=True)
        for name, keys in sorted(subs.items())
    ]


def _queues_to_declare(app: CeleryApp) -> list[Queue]:
    """The event queues this app is configured with (per service, or the embedded default's
    combined one): declaring any other would leave a copy of every event in a queue nobody
    reads. An app without configured event queues declares one per service."""
    configured = getattr(getattr(app, "amqp", None), "queues", None) or {}
    mine = [q for name, q in configured.items() if name.startswith(COMBINED_QUEUE)]
    return mine or event_queues()


def publish_event(app: CeleryApp, message: EventMessage) -> None:
    """Publish a domain event to the topic exchange (routing key = the event's name)."""
    app.send_task(
        EVENT_TASK,
        args=[message.model_dump(mode="json")],
        exchange=EXCHANGE,
        routing_key=message.name,
        # Declaring the bound queues on publish means no event is lost because a subscriber's
        # worker has not started yet.
        declare=_queues_to_declare(app),
        headers=headers(message.correlation_id, message.saga_id),
        argsrepr=message.describe(),
        kwargsrepr="{}",
    )


def send_event_retry(app: CeleryApp, message: EventMessage, service: str, countdown: float) -> None:
    """A handler's next attempt, straight to that service's queue (or the combined one when
    this worker consumes only that), after ``countdown`` seconds."""
    app.send_task(
        EVENT_TASK,
        args=[message.model_dump(mode="json")],
        queue=_event_queue_here(app, service),
        countdown=countdown,
        headers=headers(message.correlation_id, message.saga_id),
        argsrepr=message.describe(),
        kwargsrepr="{}",
    )


def _event_queue_here(app: CeleryApp, service: str) -> str:
    queue = event_queue_name(service)
    consumed = consumed_queues(app)
    if consumed is not None and COMBINED_QUEUE in consumed and queue not in consumed:
        return COMBINED_QUEUE
    return queue


def local_services(choreo: Choreography[Any], consumed: Iterable[str] | None) -> set[str]:
    """Services of ``choreo`` whose event queue this worker consumes (all when unknown)."""
    services = {h.service for h in choreo.handlers}
    if consumed is None:
        return services
    names = set(consumed)
    if COMBINED_QUEUE in names:
        return services
    return {s for s in services if event_queue_name(s) in names}
