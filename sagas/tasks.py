"""Every Celery task sagas registers. The only module (with ``transport``) that knows Celery.

Coordinator tasks run on the coordinator queue; step tasks (one pair per local step, named
``saga.<saga>.<step>`` and ``saga.<saga>.<step>.compensate``) run on the owning service's queue.
All are ``acks_late`` with ``reject_on_worker_lost``: a killed worker's message is redelivered,
and the database (attempt numbers, deadlines) decides what a redelivery may still change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_process_init
from pydantic import ValidationError

from . import coordinator, faults, sweeper
from .definition import Saga, StepDef, get_saga
from .errors import SagaInputError, StoreUnavailable
from .messages import StepCommand, StepReply
from .observability import escape, get_logger, metrics, saga_context
from .participant import open_snapshot, run_step, settle_locally, still_open
from .runtime import get_runtime
from .state import Action
from .transport import send_reply

log = get_logger("sagas.tasks")

RELIABLE: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}
# Coordinator tasks ride out a database blip by retrying the message (each transition is
# idempotent) instead of losing the reply and waiting for the step's timeout.
COORDINATOR: dict[str, Any] = {
    **RELIABLE,
    "queue": "sagas",
    "autoretry_for": (StoreUnavailable,),
    "retry_backoff": 0.5,
    "retry_backoff_max": 30,
    "max_retries": 8,
}


@worker_process_init.connect(weak=False)
def _after_fork(**_: Any) -> None:
    # A prefork child must not reuse the parent's pooled database connections.
    from . import runtime

    if runtime._runtime is not None:
        runtime._runtime.store.engine.dispose(close=False)


class _StartSagaTask(Task):  # type: ignore[misc]
    """``start_saga.delay(...)`` validates in the caller when it knows the saga, so a web
    request gets the typed error at once instead of a failed task in the coordinator."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        args, kwargs = list(args or ()), dict(kwargs or {})
        name = args[0] if args else kwargs.get("name")
        from .definition import registered_sagas

        if isinstance(name, str) and name in registered_sagas():
            payload = args[1] if len(args) > 1 else kwargs.get("payload")
            saga, *_ = coordinator.prepare_start(
                name,
                payload,
                args[2] if len(args) > 2 else kwargs.get("saga_id"),
                args[3] if len(args) > 3 else kwargs.get("correlation_id"),
            )
            first = _first_local_step(saga)
            if first is not None and get_runtime().settings.start_on_step_queue:
                options.setdefault("queue", first.queue_for(Action.FORWARD))
        options.setdefault("argsrepr", f"saga={escape(name)} id={escape(kwargs.get('saga_id'))}")
        options.setdefault("kwargsrepr", "{}")
        return super().apply_async(args, kwargs, **options)


def _first_local_step(saga: Any) -> StepDef | None:
    """The first step, if a worker of its queue runs it as a local function (not remote)."""
    steps = getattr(saga, "steps", None)
    if not steps or getattr(saga, "kind", "") == "choreographed":
        return None
    first: StepDef = steps[0]
    return first if first.fn is not None and first.task is None else None


@shared_task(name="sagas.start_saga", base=_StartSagaTask, bind=True, **COORDINATOR)
def start_saga(
    self: Task,
    name: str,
    payload: dict[str, Any],
    saga_id: str | None = None,
    correlation_id: str | None = None,
) -> str:
    """Start saga ``name`` with ``payload``. Idempotent on ``saga_id``; returns the saga id.

    With ``SAGAS_START_ON_STEP_QUEUE`` the message may arrive on the first step's queue: this
    worker then records the start and runs step 1 (and any following local steps) itself."""
    try:
        rt = get_runtime()
        local = _local_queues(self.app, rt)
        saga = get_saga(name) if rt.settings.start_on_step_queue else None
        first = _first_local_step(saga) if saga is not None else None
        if (
            first is None
            or not rt.settings.local_transitions
            or not local(first.queue_for(Action.FORWARD))
        ):
            return coordinator.start(name, payload, saga_id=saga_id, correlation_id=correlation_id)
        commands: list[StepCommand] = []
        cursor = coordinator.Cursor()
        sid = coordinator.start(
            name,
            payload,
            saga_id=saga_id,
            correlation_id=correlation_id,
            inline=lambda step, action: step.index == 0 and action is Action.FORWARD,
            inline_out=commands,
            cursor=cursor,
        )
        if commands:
            _run_inline(self.app, rt, saga, commands[0], cursor.snapshot)
        return sid
    except SagaInputError as exc:
        reason = type(exc).__name__
        metrics.inc("sagas_start_rejected_total", saga=escape(name), reason=reason)
        with saga_context(
            saga=escape(name),
            saga_id=escape(saga_id) if saga_id else None,
            correlation_id=escape(correlation_id) if correlation_id else None,
        ):
            log.error("start rejected: %s (field %s)", escape(exc), exc.field)
        raise


@shared_task(name="sagas.step_reply", **COORDINATOR)
def step_reply(reply: dict[str, Any]) -> None:
    try:
        parsed = StepReply.model_validate(reply)
    except ValidationError as exc:
        metrics.inc("sagas_bad_replies_total", reason="schema")
        log.error("malformed step reply dropped: %s", escape(exc.errors()[:3]))
        return
    coordinator.handle_remote_reply(parsed)


@shared_task(name="sagas.remote_reply", **COORDINATOR)
def remote_reply(
    result: Any, *, saga_id: str, step: str, attempt: int, action: str, correlation_id: str = ""
) -> None:
    """Link callback of a remote step: its return value is the step's result."""
    coordinator.handle_remote_reply(
        StepReply(
            saga_id=saga_id,
            step=step,
            attempt=attempt,
            action=Action(action),
            ok=True,
            result=result,
        )
    )


@shared_task(name="sagas.remote_failed", bind=True, **COORDINATOR)
def remote_failed(
    self: Task,
    task_id: str,
    *,
    saga_id: str,
    step: str,
    attempt: int,
    action: str,
    correlation_id: str = "",
) -> None:
    """Error callback of a remote step. The error's type comes from the result backend when the
    app has one; without one it is reported as RemoteTaskFailed (retried per the policy)."""
    error_type, message = "RemoteTaskFailed", f"remote task {task_id} failed"
    try:
        exc = self.app.AsyncResult(task_id).result
        if isinstance(exc, BaseException):
            error_type, message = type(exc).__name__, str(exc)
    except Exception:  # noqa: BLE001 - no result backend: keep the generic error
        pass
    coordinator.handle_remote_reply(
        StepReply(
            saga_id=saga_id,
            step=step,
            attempt=attempt,
            action=Action(action),
            ok=False,
            error_type=error_type,
            error_message=message[:2000],
            retryable=True,
        )
    )


@shared_task(name="sagas.wake", **COORDINATOR)
def wake(saga_id: str) -> None:
    coordinator.wake(saga_id)


@shared_task(name="choreography.event", **{**COORDINATOR, "queue": None})
def choreography_event(message: dict[str, Any]) -> None:
    """A domain event of a choreographed saga: run this worker's handlers for it."""
    from . import eventbus

    eventbus.deliver(message)


@shared_task(name="sagas.sweep", queue="sagas", ignore_result=True)
def sweep() -> dict[str, int]:
    """Beat-scheduled: fire due timers, re-publish unsent commands. Safe to run twice at once."""
    return sweeper.sweep(get_runtime()).as_dict()


def _run_inline(app: Any, rt: Any, saga: Any, command: StepCommand, snapshot: Any) -> None:
    """Run a step this task claimed, settle it here, reply by message if that fails."""
    step = saga.step_def(command.step)
    reply = run_step(saga, step, step.fn, command)
    faults.hit("participant.after_effect")
    unsent = settle_locally(rt, saga, reply, _local_queues(app, rt), snapshot)
    if unsent is not None:
        faults.hit("participant.before_reply")
        send_reply(app, unsent, command.correlation_id, rt.settings.coordinator_queue)


def _local_queues(app: Any, rt: Any) -> Callable[[str], bool]:
    """Queues this worker consumes (a step on one of them may run inline here)."""
    if not rt.settings.inline_steps:
        return lambda _queue: False
    consume_from = getattr(app.amqp.queues, "consume_from", None)
    names = set(consume_from) if consume_from else None
    return lambda queue: names is None or queue in names


def bind_local_step(saga: Saga[Any], step: StepDef) -> None:
    """Register the Celery tasks that run a local step and its compensation."""
    for action, fn in ((Action.FORWARD, step.fn), (Action.COMPENSATE, step.compensation_fn)):
        if fn is not None:
            _register_step_task(saga.name, step.name, action, step.task_name(action))


def _register_step_task(saga_name: str, step_name: str, action: Action, task_name: str) -> None:
    def run(self: Task, command: dict[str, Any]) -> None:
        try:
            parsed = StepCommand.model_validate(command)
        except ValidationError as exc:
            metrics.inc("sagas_bad_commands_total", reason="schema")
            log.error("malformed step command for %s dropped: %s", task_name, escape(exc))
            return
        saga = get_saga(saga_name)
        step = saga.step_def(step_name)
        fn = step.fn if action is Action.FORWARD else step.compensation_fn
        assert fn is not None
        rt = get_runtime()
        # Checked whenever the store is readable (not only with local transitions): it is what
        # bounds a poison message that kills its worker on every redelivery.
        snapshot = None
        if rt.settings.local_transitions:
            open_, snapshot = open_snapshot(rt, step, parsed)
        else:
            open_ = still_open(rt, step, parsed)
        if not open_:
            metrics.inc("sagas_stale_commands_total")
            with saga_context(
                saga=saga_name, saga_id=parsed.saga_id, correlation_id=parsed.correlation_id
            ):
                log.warning("stale command skipped: %s is no longer open", parsed.describe())
            return
        reply = run_step(saga, step, fn, parsed)
        faults.hit("participant.after_effect")
        unsent: StepReply | None = reply
        if rt.settings.local_transitions:
            unsent = settle_locally(rt, saga, reply, _local_queues(self.app, rt), snapshot)
        if unsent is not None:
            faults.hit("participant.before_reply")
            send_reply(self.app, unsent, parsed.correlation_id, rt.settings.coordinator_queue)

    run.__name__ = run.__qualname__ = task_name.replace(".", "_")
    shared_task(name=task_name, bind=True, **RELIABLE)(run)
