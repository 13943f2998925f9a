"""The participant side: run one attempt of a step in the owning service's worker.

``run_step`` turns a ``StepCommand`` into a ``StepReply``: it validates the payload, builds the
``StepContext``, calls the user's function and classifies the outcome. It does no messaging; the
Celery task in ``sagas.tasks`` sends the reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import coordinator, tracing
from .context import step_context
from .definition import Saga, StepDef, StepFn
from .errors import PermanentError, SagaInputError, StoreError, TransientError
from .machine import Decision, ErrorInfo, is_open_attempt
from .messages import HeartbeatMessage, StepCommand, StepReply
from .observability import escape, get_logger, metrics, saga_context
from .payload import check_json
from .runtime import Runtime, get_runtime
from .state import Action, HistoryKind
from .store import Snapshot
from .transport import send_heartbeat

log = get_logger("sagas.participant")


def run_step(
    saga: Saga[Any],
    step: StepDef,
    fn: StepFn,
    command: StepCommand,
    trace: Mapping[str, str] | None = None,
) -> StepReply:
    """Execute the user's function once and describe what happened. ``trace``: the saga's
    trace context (its attempt span is parented to it; None: no span)."""
    with saga_context(
        saga=command.saga,
        saga_id=command.saga_id,
        correlation_id=command.correlation_id,
        step=command.step,
        attempt=str(command.attempt),
    ):
        if not trace and not metrics.exporting:  # telemetry off: nothing to time or trace
            return _attempt(saga, step, fn, command)
        return _observed(saga, step, fn, command, trace)


def _observed(
    saga: Saga[Any],
    step: StepDef,
    fn: StepFn,
    command: StepCommand,
    trace: Mapping[str, str] | None,
) -> StepReply:
    """``_attempt`` inside its span, timed for the step duration histogram."""
    with tracing.attempt(
        trace,
        saga=command.saga,
        saga_id=command.saga_id,
        step=command.step,
        attempt=command.attempt,
        compensation=command.action is Action.COMPENSATE,
    ) as span:
        began = time.perf_counter()
        reply = _attempt(saga, step, fn, command)
        outcome = "ok" if reply.ok else "error"
        span.finish(outcome, reply.error_type)
        if metrics.exporting:
            metrics.observe(
                "sagas_step_duration_seconds",
                time.perf_counter() - began,
                saga=command.saga,
                step=command.step,
                action=command.action.value,
                outcome=outcome,
            )
        return reply


def _attempt(saga: Saga[Any], step: StepDef, fn: StepFn, command: StepCommand) -> StepReply:
    log.info("running %s", command.describe())
    try:
        rt = get_runtime()
        current = partial(still_open, rt, step, command)
        beat = Heartbeats(rt, command) if command.action is Action.FORWARD else None
        if beat is not None and command.heartbeat is not None:
            beat.start()
        ctx = step_context(saga.payload_model, command, current, beat)
        result = fn(ctx)
    except PermanentError as exc:
        return _error(command, exc, retryable=False)
    except TransientError as exc:
        return _error(command, exc, retryable=True)
    except SagaInputError as exc:
        # A stored payload the model refuses, or heartbeat details JSON cannot carry:
        # retrying would not change either.
        return _error(command, exc, retryable=False)
    except Exception as exc:  # noqa: BLE001 - any other error follows the retry policy
        log.exception("step %s raised %s", step.name, type(exc).__name__)
        return _error(command, exc, retryable=True)
    try:
        check_json(result, field=f"{step.name} result")
    except SagaInputError as exc:
        # A result JSON cannot carry: retrying would not change it.
        return _error(command, exc, retryable=False, type_name="StepResultNotJSON")
    return StepReply(
        saga_id=command.saga_id,
        step=command.step,
        action=command.action,
        attempt=command.attempt,
        ok=True,
        result=result,
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt this worker ran and what the saga decided about it (what task events show)."""

    command: StepCommand
    reply: StepReply
    retried: bool | None  # a retry was scheduled; None: not known here (settled by message)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Settled:
    unsent: StepReply | None  # the reply still to send by message, if any
    retried: bool | None  # for the caller's own reply, as ``Attempt.retried``
    inline: tuple[Attempt, ...] = ()  # the steps run here after it, in order


def settle_locally(
    rt: Runtime,
    saga: Saga[Any],
    reply: StepReply,
    local_queue: Callable[[str], bool],
    snapshot: Snapshot | None = None,
) -> Settled:
    """Apply ``reply``'s transition here; run following steps on local queues inline.

    Starts from ``snapshot`` (the saga as read before the step ran) when given, and carries the
    snapshot each transition wrote into the next inline step's transition: a step costs one
    write when nothing else touched the saga meanwhile. ``Settled.unsent`` is None when
    everything was settled, or the reply still to send by message (the store is unreachable
    from this worker, or it does not know the saga).
    """

    def claim(step: StepDef, action: Action) -> bool:
        return step.fn_for(action) is not None and local_queue(step.queue_for(action))

    first: bool | None = None
    done: list[Attempt] = []
    pending: tuple[StepCommand, float] | None = None
    while True:
        try:
            applied = coordinator.handle_reply(reply, rt=rt, claim=claim, snapshot=snapshot)
        except StoreError as exc:
            log.warning(
                "cannot settle %s here (%s); replying by message",
                reply.describe(),
                escape(type(exc).__name__),
            )
            applied = None
        retried = None if applied is None else _retry_scheduled(applied.decision, reply)
        if pending is None:
            first = retried
        else:
            done.append(Attempt(pending[0], reply, retried, pending[1]))
        if applied is None:
            return Settled(reply, first, tuple(done))
        if not applied.claimed:
            return Settled(None, first, tuple(done))
        command, snapshot = applied.claimed[0], applied.snapshot
        began = time.monotonic()
        reply = run_claimed(saga, command, snapshot.record.trace_context)
        pending = (command, time.monotonic() - began)


def _retry_scheduled(decision: Decision, reply: StepReply) -> bool:
    return not reply.ok and any(
        h.kind is HistoryKind.RETRY_SCHEDULED and h.step == reply.step for h in decision.history
    )


def run_claimed(
    saga: Saga[Any], command: StepCommand, trace: Mapping[str, str] | None = None
) -> StepReply:
    """Run a local step's action that this worker claimed from a transition."""
    step = saga.step_def(command.step)
    fn = step.fn_for(command.action)
    assert fn is not None, "only local steps are claimed"
    return run_step(saga, step, fn, command, trace)


def open_snapshot(rt: Runtime, step: StepDef, command: StepCommand) -> tuple[bool, Snapshot | None]:
    """Is this command the step's open attempt? A redelivered or duplicated command for an
    attempt the saga has moved past (timed out, retried, settled) must not run its effect
    again; this is also what bounds a poison message that kills its worker on every delivery.

    Reads the whole saga, for a worker that will then apply the step's transition itself: the
    snapshot spares that transition its own read. When the store cannot be read the command
    runs (the reply will be judged stale if it is)."""
    try:
        snap = rt.store.load(command.saga_id)
    except StoreError:
        return True, None
    if snap is None or not 0 <= step.index < len(snap.status.steps):
        return True, None
    open_ = is_open_attempt(snap.status.steps[step.index], command.action, command.attempt)
    return open_, snap


def still_open(rt: Runtime, step: StepDef, command: StepCommand) -> bool:
    """``open_snapshot`` reading only the step's row (the reply goes by message anyway)."""
    try:
        status = rt.store.open_attempt(command.saga_id, step.index)
    except StoreError:
        return True
    return status is None or is_open_attempt(status, command.action, command.attempt)


class Heartbeats:
    """``ctx.heartbeat`` of one attempt: applied in the store when this worker reaches it
    (so it learns whether the attempt is fenced), else sent to the coordinator by message.
    At most one per third of the step's heartbeat interval (one per second without one) goes
    out; the calls in between return the last answer."""

    def __init__(self, rt: Runtime, command: StepCommand) -> None:
        self.rt, self.command = rt, command
        self.gap = command.heartbeat / 3 if command.heartbeat else 1.0
        self.sent: float | None = None
        self.open = True

    def start(self) -> None:
        """Mark in the store that the attempt began: its heartbeat clock starts now. Without
        the store the first ``ctx.heartbeat`` starts it (the hard timeout holds until then)."""
        c = self.command
        try:
            self.open = coordinator.heartbeat(
                c.saga_id, c.step, c.attempt, None, rt=self.rt, started=True
            )
        except StoreError as exc:
            log.warning("attempt start not marked (%s)", escape(type(exc).__name__))

    def __call__(self, details: Any) -> bool:
        check_json(details, field="heartbeat details")
        now = time.monotonic()
        if self.sent is not None and now - self.sent < self.gap:
            return self.open
        self.sent = now
        c = self.command
        try:
            self.open = coordinator.heartbeat(c.saga_id, c.step, c.attempt, details, rt=self.rt)
        except StoreError as exc:
            log.warning("heartbeat sent by message (%s)", escape(type(exc).__name__))
            beat = HeartbeatMessage(
                saga_id=c.saga_id, step=c.step, attempt=c.attempt, details=details
            )
            send_heartbeat(
                self.rt.celery, beat, c.correlation_id, self.rt.settings.coordinator_queue
            )
        return self.open


def _error(
    command: StepCommand, exc: BaseException, *, retryable: bool, type_name: str | None = None
) -> StepReply:
    error = ErrorInfo.of(exc, retryable=retryable, type_name=type_name)
    log.warning(
        "%s failed: %s: %s%s",
        command.describe(),
        error.type,
        escape(error.message),
        "" if retryable else " (permanent)",
    )
    return StepReply(
        saga_id=command.saga_id,
        step=command.step,
        action=command.action,
        attempt=command.attempt,
        ok=False,
        error_type=error.type,
        error_message=error.message,
        retryable=retryable,
    )
