"""Every Celery task sagas registers: the inbound door to Celery (``transport`` is the outbound).

Coordinator tasks run on the coordinator queue; step tasks (one pair per local step, named
``saga.<saga>.<step>`` and ``saga.<saga>.<step>.compensate``) run on the owning service's queue
and are bound by ``bind_step_tasks`` (called by ``sagas.install.configure``), never by declaring
a saga. All are ``acks_late`` with ``reject_on_worker_lost``: a killed worker's message is
redelivered, and the database (attempt numbers, deadlines) decides what a redelivery may still
change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from celery import Task, shared_task, states
from celery.exceptions import Retry
from celery.result import EagerResult
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    import_modules,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from celery.utils import uuid
from pydantic import BaseModel, ValidationError

from . import coordinator, faults, prometheus, starter, sweeper, tracing, versions
from .catalog import get_saga, registered_sagas
from .choreography import runner
from .definition import Saga, StepDef, get_orchestrated, on_step_declared, orchestrated_sagas
from .errors import (
    DefinitionError,
    SagaInputError,
    StoreError,
    StoreUnavailable,
    VersionUnavailable,
)
from .messages import HeartbeatMessage, StepCommand, StepReply
from .observability import (
    JSONFormatter,
    SagaContextFilter,
    escape,
    get_logger,
    metrics,
    saga_context,
)
from .participant import (
    Attempt,
    Settled,
    open_snapshot,
    run_claimed,
    run_step,
    settle_locally,
    still_open,
)
from .runtime import Runtime, current_runtime, get_runtime
from .state import Action
from .store import Snapshot
from .transport import (
    EVENT_TASK,
    HEARTBEAT_TASK,
    REMOTE_ERROR_TASK,
    REMOTE_OK_TASK,
    REPLY_TASK,
    START_TASK,
    SWEEP_TASK,
    WAKE_TASK,
    CeleryApp,
    InlineTask,
    announce_inline,
    consumed_queues,
    send_reply,
)

log = get_logger("sagas.tasks")

SWEEP_ENTRY = "sagas-sweep"  # the beat_schedule entry ``sagas.install`` adds

RELIABLE: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}


class _CoordinatorTask(Task):  # type: ignore[misc]
    """An engine task: sent to the configured coordinator queue (``SAGAS_COORDINATOR_QUEUE``)
    unless the caller names a queue. A fixed ``queue`` attribute would override the app's
    routes and strand messages in a queue nobody consumes when the setting is changed."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if not any(k in options for k in ("queue", "exchange", "routing_key")):
            options["queue"] = get_runtime().settings.coordinator_queue
        return super().apply_async(args, kwargs, **options)


# Coordinator tasks ride out a database blip by retrying the message (each transition is
# idempotent) instead of losing the reply and waiting for the step's timeout.
COORDINATOR: dict[str, Any] = {
    **RELIABLE,
    "base": _CoordinatorTask,
    # VersionUnavailable: this process lacks the saga's version (a rolling deploy): the retried
    # message may be taken by a coordinator that has it. Past the retries the saga waits for
    # its timers, which the sweeper fires in a process that has the version.
    "autoretry_for": (StoreUnavailable, VersionUnavailable),
    "retry_backoff": 0.5,
    "retry_backoff_max": 30,
    "max_retries": 8,
}


@worker_process_init.connect(weak=False)
def _after_fork(**_: Any) -> None:
    # A prefork child must not reuse the parent's pooled database connections (make_engine's
    # engines see to it at any fork; this covers an engine the application passed in).
    rt = current_runtime()
    if rt is not None:
        rt.store.engine.dispose(close=False)


@worker_process_shutdown.connect(weak=False)
def _child_exits(pid: int | None = None, **_: Any) -> None:
    rt = current_runtime()
    if rt is not None:
        try:  # the clears this process queued (a killed process leaves them to the sweeper)
            rt.store.flush_clears()
        except Exception:  # noqa: BLE001 - shutting down: nothing else to do with it
            log.warning("outbox clears not written at shutdown")
    if pid is not None and metrics.exporting:
        prometheus.mark_process_dead(pid)


def _header(task: Task, name: str) -> Any:
    """A custom header of the message ``task`` runs (Celery puts them on the request)."""
    request = task.request
    found = getattr(request, name, None)
    if found is None:
        found = (getattr(request, "headers", None) or {}).get(name)
    return found


class _StartSagaTask(_CoordinatorTask):
    """``start_saga.delay(...)`` validates in the caller when it knows the saga, so a web
    request gets the typed error at once instead of a failed task in the coordinator."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        args, kwargs = list(args or ()), dict(kwargs or {})
        name = args[0] if args else kwargs.get("name")
        definition = registered_sagas().get(name) if isinstance(name, str) else None
        carrier = tracing.current_carrier()
        if definition is not None:
            payload = args[1] if len(args) > 1 else kwargs.get("payload")
            saga_id = args[2] if len(args) > 2 else kwargs.get("saga_id")
            correlation_id = args[3] if len(args) > 3 else kwargs.get("correlation_id")
            starter.validate(definition, payload, saga_id, correlation_id)
            rt = get_runtime()
            if rt.settings.starts_in_caller and set(options) <= _PLAIN_OPTIONS:
                version = args[4] if len(args) > 4 else kwargs.get("version")
                task_id = options.get("task_id") or uuid()
                try:
                    sid = _start(rt, name, version, payload, saga_id, correlation_id, carrier)
                except (StoreUnavailable, VersionUnavailable) as exc:
                    # The coordinator records it when it can (or has the version asked for).
                    log.warning("start of %s sent as a message: %s", escape(name), escape(exc))
                except SagaInputError as exc:
                    # What the start task's result would hold (SagaConflict: the id is taken):
                    # ``delay`` does not raise it, ``.get()`` does, as with the message.
                    _rejected(name, saga_id, correlation_id, exc)
                    return EagerResult(task_id, exc, states.FAILURE, name=START_TASK)
                else:
                    return EagerResult(task_id, sid, states.SUCCESS, name=START_TASK)
            first = _first_local_step(definition) if isinstance(definition, Saga) else None
            if first is not None and rt.settings.start_on_step_queue:
                options.setdefault("queue", first.queue_for(Action.FORWARD))
        if carrier:  # the caller's span, for the saga's trace (the start task may run anywhere)
            options["headers"] = {**(options.get("headers") or {}), tracing.TRACE_HEADER: carrier}
        options.setdefault("argsrepr", f"saga={escape(name)} id={escape(kwargs.get('saga_id'))}")
        options.setdefault("kwargsrepr", "{}")
        return super().apply_async(args, kwargs, **options)


def _start(
    rt: Runtime,
    name: str,
    version: int | None,
    payload: Any,
    saga_id: str | None,
    correlation_id: str | None,
    trace: Any,
) -> str:
    """The start a ``start_saga`` call asks for, in the caller or in the coordinator. It never
    joins a database transaction of the process it runs in: ``start_saga`` is a message's
    meaning, not a write inside the caller's unit of work."""
    return starter.start(
        get_saga(name, version),
        payload,
        saga_id=saga_id,
        correlation_id=correlation_id,
        rt=rt,
        join=False,
        trace=trace,
    )


# apply_async options that do not change how or when the start is delivered: with anything
# else (countdown, eta, expires, queue, priority, link...) the start goes as a message.
_PLAIN_OPTIONS = frozenset({"task_id", "argsrepr", "kwargsrepr"})


def _first_local_step(saga: Saga[Any]) -> StepDef | None:
    """The first step, if a worker of its queue runs it as a local function (not remote)."""
    first = saga.steps[0] if saga.steps else None
    return first if first is not None and first.fn is not None and first.task is None else None


# The result is kept when the app has a result backend: ``start_saga.delay(...).get()`` returns
# the saga id, or raises the typed error (SagaConflict, PayloadInvalid...) the coordinator hit.
@shared_task(
    name=START_TASK, bind=True, **{**COORDINATOR, "base": _StartSagaTask, "ignore_result": False}
)
def start_saga(
    self: Task,
    name: str,
    payload: dict[str, Any],
    saga_id: str | None = None,
    correlation_id: str | None = None,
    version: int | None = None,
) -> str:
    """Start saga ``name`` with ``payload`` (its newest version, or ``version``). Idempotent on
    ``saga_id``; returns the saga id.

    With ``SAGAS_START_ON_STEP_QUEUE`` the message may arrive on the first step's queue: this
    worker then records the start and runs step 1 (and any following local steps) itself."""
    try:
        rt = get_runtime()
        trace = _header(self, tracing.TRACE_HEADER) if tracing.active() else None
        direct = _direct_start(self.app, rt, name, version)
        if direct is None:
            return _start(rt, name, version, payload, saga_id, correlation_id, trace)
        sid, applied = starter.start_claiming(
            direct,
            payload,
            saga_id=saga_id,
            correlation_id=correlation_id,
            claim=lambda step, action: step.index == 0 and action is Action.FORWARD,
            rt=rt,
            trace=trace,
        )
        if applied is not None and applied.claimed:
            _run_inline(self.app, rt, direct, applied.claimed[0], applied.snapshot)
        return sid
    except SagaInputError as exc:
        _rejected(name, saga_id, correlation_id, exc)
        raise


def _rejected(
    name: str, saga_id: str | None, correlation_id: str | None, exc: SagaInputError
) -> None:
    """Log and count a start refused for its input, wherever it was recorded."""
    metrics.inc("sagas_start_rejected_total", saga=escape(name), reason=type(exc).__name__)
    with saga_context(
        saga=escape(name),
        saga_id=escape(saga_id) if saga_id else None,
        correlation_id=escape(correlation_id) if correlation_id else None,
    ):
        log.error("start rejected: %s (field %s)", escape(exc), exc.field)


def _direct_start(app: CeleryApp, rt: Runtime, name: str, version: int | None) -> Saga[Any] | None:
    """The saga, when this worker should record its start and run step 1 itself."""
    if not (rt.settings.start_on_step_queue and rt.settings.local_transitions):
        return None
    found = get_saga(name, version)
    first = _first_local_step(found) if isinstance(found, Saga) else None
    if first is None or not _local_queues(app, rt)(first.queue_for(Action.FORWARD)):
        return None
    assert isinstance(found, Saga)
    return found


@shared_task(name=REPLY_TASK, **COORDINATOR)
def step_reply(reply: dict[str, Any]) -> None:
    parsed = _parsed(StepReply, reply, "step reply")
    if parsed is not None:
        coordinator.handle_remote_reply(parsed)


M = TypeVar("M", bound=BaseModel)


def _parsed(model: type[M], data: Any, what: str) -> M | None:
    """A message's body as ``model``; a malformed one is counted, logged and dropped (a
    redelivery would not make it valid)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        metrics.inc("sagas_bad_replies_total", reason="schema")
        log.error("malformed %s dropped: %s", what, escape(exc.errors()[:3]))
        return None


@shared_task(name=REMOTE_OK_TASK, **COORDINATOR)
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


@shared_task(name=REMOTE_ERROR_TASK, bind=True, **COORDINATOR)
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


@shared_task(name=WAKE_TASK, **COORDINATOR)
def wake(saga_id: str) -> None:
    coordinator.wake(saga_id)


# A heartbeat is not worth a redelivery: the next one carries newer news, and a lost one
# only lets the heartbeat deadline come closer.
@shared_task(name=HEARTBEAT_TASK, base=_CoordinatorTask, ignore_result=True)
def heartbeat(beat: dict[str, Any]) -> None:
    parsed = _parsed(HeartbeatMessage, beat, "heartbeat")
    if parsed is None:
        return
    try:
        coordinator.heartbeat(parsed.saga_id, parsed.step, parsed.attempt, parsed.details)
    except (SagaInputError, StoreError) as exc:
        log.warning("heartbeat dropped: %s", escape(exc))


@shared_task(name=EVENT_TASK, **{**COORDINATOR, "base": Task})
def choreography_event(message: dict[str, Any]) -> None:
    """A domain event of a choreographed saga: run this worker's handlers for it."""
    runner.deliver(message)


@shared_task(name=SWEEP_TASK, base=_CoordinatorTask, ignore_result=True)
def sweep() -> dict[str, int]:
    """Beat-scheduled: fire due timers, re-publish unsent commands. Safe to run twice at once."""
    return sweeper.sweep(get_runtime()).as_dict()


def _run_inline(
    app: CeleryApp, rt: Runtime, saga: Saga[Any], command: StepCommand, snapshot: Snapshot
) -> None:
    """Run a step this task claimed, settle it here, reply by message if that fails."""
    reply = run_claimed(saga, command, snapshot.record.trace_context)
    faults.hit("participant.after_effect")
    settled = settle_locally(rt, saga, reply, _local_queues(app, rt), snapshot)
    if settled.unsent is not None:
        faults.hit("participant.before_reply")
        send_reply(app, settled.unsent, command.correlation_id, rt.settings.coordinator_queue)
    inline = (Attempt(command, reply, settled.retried), *settled.inline)
    _announce(app, saga, inline)


def _local_queues(app: CeleryApp, rt: Runtime) -> Callable[[str], bool]:
    """Queues this worker consumes (a step on one of them may run inline here)."""
    if not rt.settings.inline_steps:
        return lambda _queue: False
    names = consumed_queues(app)
    return lambda queue: names is None or queue in names


# -- step tasks: bound by the worker bootstrap or ``configure``, never by a declaration --------

_bound: set[str] = set()
_step_tasks: dict[str, Callable[..., None]] = {}  # name -> body, for ``register_step_tasks``


def bind_all_step_tasks() -> None:
    """Bind every local step declared so far, and every one declared from now on."""
    bind_step_tasks()
    on_step_declared(bind_local_step)


@worker_init.connect(weak=False)
def _bind_on_worker_start(**_: Any) -> None:
    # A worker whose app never called ``configure`` still runs the steps its modules declare.
    bind_all_step_tasks()


@import_modules.connect(weak=False)
def _bind_after_imports(**_: Any) -> None:
    bind_step_tasks()  # the app's ``imports``/``include`` modules may have declared sagas


def bind_step_tasks(sagas: list[Saga[Any]] | None = None) -> None:
    """Register the Celery tasks that run every local step (and compensation) of ``sagas``
    (default: every registered saga). Idempotent; shared tasks reach every app."""
    for saga in sagas if sagas is not None else list(orchestrated_sagas().values()):
        for step in saga.steps:
            bind_local_step(saga, step)


def bind_local_step(saga: Saga[Any], step: StepDef) -> None:
    """Register the Celery tasks that run a local step and its compensation."""
    for action in (Action.FORWARD, Action.COMPENSATE):
        name = step.task_name(action)
        if step.fn_for(action) is not None and name not in _bound:
            _bound.add(name)
            _register_step_task(saga.name, step.name, action, name)


def _register_step_task(saga_name: str, step_name: str, action: Action, task_name: str) -> None:
    def run(self: Task, command: dict[str, Any]) -> None:
        try:
            parsed = StepCommand.model_validate(command)
        except ValidationError as exc:
            metrics.inc("sagas_bad_commands_total", reason="schema")
            log.error("malformed step command for %s dropped: %s", task_name, escape(exc))
            return
        try:
            saga = get_orchestrated(saga_name, parsed.version)
            step = saga.step_def(step_name)
        except (VersionUnavailable, KeyError) as exc:
            _leave_for_another_worker(self, parsed, exc)
        fn = step.fn_for(action)
        assert fn is not None
        rt = get_runtime()
        # Checked whenever the store is readable (not only with local transitions): it is what
        # bounds a poison message that kills its worker on every redelivery.
        snapshot = None
        if rt.settings.local_transitions:
            open_, snapshot = open_snapshot(rt, step, parsed)
            if snapshot is not None:
                steps = [s.name for s in snapshot.status.steps]
                mismatch = coordinator.definition_mismatch(saga, snapshot.record, steps)
                if mismatch is not None:
                    _leave_for_another_worker(self, parsed, VersionUnavailable(mismatch))
        else:
            open_ = still_open(rt, step, parsed)
        if not open_:
            metrics.inc("sagas_stale_commands_total")
            with saga_context(
                saga=saga_name, saga_id=parsed.saga_id, correlation_id=parsed.correlation_id
            ):
                log.warning("stale command skipped: %s is no longer open", parsed.describe())
            return
        trace = None
        if tracing.active():  # the saga's trace: from the store when read, else the header
            trace = snapshot.record.trace_context if snapshot is not None else None
            trace = trace or _header(self, tracing.TRACE_HEADER)
        reply = run_step(saga, step, fn, parsed, trace)
        faults.hit("participant.after_effect")
        settled = Settled(reply, None)
        if rt.settings.local_transitions:
            settled = settle_locally(rt, saga, reply, _local_queues(self.app, rt), snapshot)
        if settled.unsent is not None:
            faults.hit("participant.before_reply")
            send_reply(
                self.app, settled.unsent, parsed.correlation_id, rt.settings.coordinator_queue
            )
        _announce(self.app, saga, settled.inline)
        _outcome_for_celery(reply, settled.retried)

    run.__name__ = run.__qualname__ = task_name.replace(".", "_")
    _step_tasks[task_name] = run
    shared_task(name=task_name, bind=True, throws=(StepAttemptFailed,), **RELIABLE)(run)


# How long a step command waits for a worker that has its saga's version: retried with
# backoff (the message goes back to the step's queue for any worker), about 15 minutes in all.
VERSION_RETRIES = 20
VERSION_RETRY_MAX_DELAY = 60.0


def _leave_for_another_worker(task: Task, command: StepCommand, exc: Exception) -> NoReturn:
    """This worker lacks the saga's version (or defines it with other steps): put the command
    back for a worker that has it, instead of running the wrong code or failing the saga."""
    retries = task.request.retries or 0
    with saga_context(
        saga=command.saga, saga_id=command.saga_id, correlation_id=command.correlation_id
    ):
        log.warning(
            "%s: left for a worker that has it (retry %d of %d): %s",
            command.describe(),
            retries + 1,
            VERSION_RETRIES,
            escape(exc),
        )
    metrics.inc("sagas_version_unavailable_total", saga=command.saga)
    countdown = min(2.0**retries, VERSION_RETRY_MAX_DELAY)
    raise task.retry(exc=exc, countdown=countdown, max_retries=VERSION_RETRIES)


def register_step_tasks(app: Any) -> None:
    """Register every step task bound so far on ``app`` where it is missing. Shared tasks
    reach apps created later through Celery's finalizer list, which a test framework may reset
    between tests (``celery.contrib.testing`` restores it after each ``celery_app``); an app
    made afterwards would then reject step commands as unregistered."""
    tasks = app.tasks
    for name, run in _step_tasks.items():
        if name not in tasks:
            app.task(name=name, bind=True, shared=False, throws=(StepAttemptFailed,), **RELIABLE)(
                run
            )


class StepAttemptFailed(Exception):
    """Raised by a step task after the saga recorded a failed attempt, so Celery (Flower,
    ``celery events``) shows the task as FAILURE instead of SUCCESS. Expected (``throws``):
    logged without a traceback; the message is acknowledged like any finished task."""


def _outcome_for_celery(reply: StepReply, retried: bool | None) -> None:
    """Let the task's Celery state tell the truth once the saga recorded the attempt: FAILURE
    for a failed attempt, RETRY when the saga scheduled another (the saga's timer sends it, so
    Celery's ``Retry`` here publishes nothing)."""
    if reply.ok:
        return
    error = f"{reply.error_type}: {reply.error_message}"
    if retried if retried is not None else reply.retryable:
        message = f"attempt {reply.attempt} failed, the saga retries it"
        raise Retry(message, StepAttemptFailed(error))
    raise StepAttemptFailed(error)


def _announce(app: CeleryApp, saga: Saga[Any], attempts: tuple[Attempt, ...]) -> None:
    """Task events for the steps this task ran inline (they have no message of their own)."""
    if attempts:
        announce_inline(
            app,
            [
                InlineTask(
                    name=saga.step_def(a.command.step).task_name(a.command.action),
                    describe=a.command.describe(),
                    attempt=a.command.attempt,
                    ok=a.reply.ok,
                    retried=bool(a.retried if a.retried is not None else a.reply.retryable),
                    error=f"{a.reply.error_type}: {a.reply.error_message}",
                    result=a.reply.result,
                    seconds=a.seconds,
                )
                for a in attempts
            ],
        )


# -- startup checks and log context for an installed app --------------------------------------

_watched: set[int] = set()


def watch_startup(app: CeleryApp) -> None:
    """Check at worker and beat start that the sweeper is scheduled; add the saga log fields."""
    _watched.add(id(app))


def sweeper_scheduled(app: CeleryApp) -> bool:
    schedule = app.conf.beat_schedule or {}
    return any(entry.get("task") == SWEEP_TASK for entry in schedule.values())


def _complain_without_sweeper(app: CeleryApp, who: str) -> None:
    if id(app) in _watched and not sweeper_scheduled(app):
        log.error(
            "%s: no %s entry in beat_schedule: step timeouts, saga deadlines, retries past %s "
            "and outbox repair will never run (sagas.install(app) adds it; or schedule %s)",
            who,
            SWEEP_TASK,
            "SAGAS_MAX_COUNTDOWN",
            SWEEP_TASK,
        )


@beat_init.connect(weak=False)
def _check_beat(sender: Any = None, **_: Any) -> None:
    _complain_without_sweeper(sender.app, "beat")


@worker_init.connect(weak=False)
def _check_worker(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        _complain_without_sweeper(sender.app, "worker")
        _refuse_changed_definitions()


def _refuse_changed_definitions() -> None:
    """A worker whose definition of a saga version differs from the one that version's sagas
    in flight were started on does not start (``sagas.versions``)."""
    rt = current_runtime()
    if rt is None:
        return
    try:
        versions.refuse_changed_definitions(rt)
    except StoreError as exc:
        log.warning("saga definitions not checked against the store: %s", escape(exc))
    except DefinitionError as exc:
        log.critical("worker refused to start: %s", escape(exc))
        raise SystemExit(1) from exc


@after_setup_logger.connect(weak=False)
@after_setup_task_logger.connect(weak=False)
def _saga_log_fields(logger: Any = None, **_: Any) -> None:
    if not _watched or logger is None:
        return
    rt = current_runtime()
    as_json = rt is not None and rt.settings.log_format == "json"
    for handler in logger.handlers:
        if not any(isinstance(f, SagaContextFilter) for f in handler.filters):
            handler.addFilter(SagaContextFilter())
        if as_json:
            handler.setFormatter(JSONFormatter())


@worker_init.connect(weak=False)
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    """The worker's main process serves every child's metrics (``SAGAS_METRICS_PORT``)."""
    rt = current_runtime()
    if rt is None or sender is None or id(sender.app) not in _watched:
        return
    port = rt.settings.metrics_port
    if not rt.settings.exports_metrics:
        return
    concurrency = getattr(sender, "concurrency", 1) or 1
    if prometheus.multiprocess_dir() is None and concurrency > 1:
        log.error(
            "metrics are on but %s is not set: each prefork child counts in its own memory and "
            "a scrape of this worker sees none of it",
            prometheus.MULTIPROC_ENV,
        )
    if port is not None:
        prometheus.serve(port, rt.settings.metrics_host, _gauges(rt))
        log.info("serving metrics on %s:%d/metrics", rt.settings.metrics_host, port)


def _gauges(rt: Runtime) -> Callable[[], dict[str, Any]]:
    return lambda: rt.store.stats(unsent_grace=rt.settings.outbox_grace)
