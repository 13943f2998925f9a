"""The participant side: run one attempt of a step in the owning service's worker.

``run_step`` turns a ``StepCommand`` into a ``StepReply``: it validates the payload, builds the
``StepContext``, calls the user's function and classifies the outcome. It does no messaging; the
Celery task in ``sagas.tasks`` sends the reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .definition import Saga, StepContext, StepDef, StepFn, get_saga
from .errors import PermanentError, SagaInputError, StoreUnavailable, TransientError
from .messages import StepCommand, StepReply
from .observability import escape, get_logger, saga_context
from .payload import check_json
from .runtime import Runtime
from .state import Action, StepState
from .store import Snapshot
from .transport import idempotency_key

log = get_logger("sagas.participant")

MAX_ERROR_MESSAGE = 2000


def context_from_command(command: StepCommand, saga: Saga[Any] | None = None) -> StepContext[Any]:
    saga = saga or get_saga(command.saga)
    return StepContext(
        saga_id=command.saga_id,
        saga_name=command.saga,
        step=command.step,
        action=command.action,
        attempt=command.attempt,
        payload=saga.payload_model.model_validate(command.payload),
        results=dict(command.results),
        idempotency_key=idempotency_key(command.saga_id, command.step, command.action),
        correlation_id=command.correlation_id,
        deadline_at=command.deadline_at,
        result=command.result,
    )


def run_step(saga: Saga[Any], step: StepDef, fn: StepFn, command: StepCommand) -> StepReply:
    """Execute the user's function once and describe what happened."""
    with saga_context(
        saga=command.saga, saga_id=command.saga_id, correlation_id=command.correlation_id
    ):
        log.info("running %s", command.describe())
        try:
            ctx = context_from_command(command, saga)
            result = fn(ctx)
            check_json(result, field=f"{step.name} result")
        except PermanentError as exc:
            return _error(command, exc, retryable=False)
        except TransientError as exc:
            return _error(command, exc, retryable=True)
        except SagaInputError as exc:
            # A result (or stored payload) JSON cannot carry: retrying would not change it.
            return _error(command, exc, retryable=False, type_name="StepResultNotJSON")
        except Exception as exc:  # noqa: BLE001 - any other error follows the retry policy
            log.exception("step %s raised %s", step.name, type(exc).__name__)
            return _error(command, exc, retryable=True)
        return StepReply(
            saga_id=command.saga_id,
            step=command.step,
            action=command.action,
            attempt=command.attempt,
            ok=True,
            result=result,
        )


def settle_locally(
    rt: Runtime,
    saga: Saga[Any],
    reply: StepReply,
    local_queue: Callable[[str], bool],
    snapshot: Snapshot | None = None,
) -> StepReply | None:
    """Apply ``reply``'s transition here; run following steps on local queues inline.

    Starts from ``snapshot`` (the saga as read before the step ran) when given, and carries the
    snapshot it writes into each inline step's transition: a step costs one write when nothing
    else touched the saga meanwhile. Returns None when everything was settled, or the reply
    still to send by message (the store is unreachable from this worker, or it does not know
    the saga).
    """
    from . import coordinator  # the participant performs the coordinator's transition

    def inline(step: StepDef, action: Action) -> bool:
        fn = step.fn if action is Action.FORWARD else step.compensation_fn
        return fn is not None and local_queue(step.queue_for(action))

    cursor = coordinator.Cursor(snapshot)
    while True:
        commands: list[StepCommand] = []
        try:
            decision = coordinator.handle_reply(
                reply, rt=rt, inline=inline, inline_out=commands, cursor=cursor
            )
        except (StoreUnavailable, SQLAlchemyError) as exc:
            log.warning(
                "cannot settle %s here (%s); replying by message",
                reply.describe(),
                escape(type(exc).__name__),
            )
            return reply
        if decision is None:
            return reply
        if not commands:
            return None
        command = commands[0]
        step = saga.step_def(command.step)
        fn = step.fn if command.action is Action.FORWARD else step.compensation_fn
        assert fn is not None
        reply = run_step(saga, step, fn, command)


def still_open(rt: Runtime, step: StepDef, command: StepCommand) -> bool:
    """Is this command the step's open attempt? A redelivered or duplicated command for an
    attempt the saga has moved past (timed out, retried, settled) must not run its effect again;
    this is also what bounds a poison message that kills its worker on every delivery.
    When the store cannot be read the command runs (the reply will be judged stale if it is)."""
    try:
        row = rt.store.open_attempt(command.saga_id, step.index)
    except (StoreUnavailable, SQLAlchemyError):
        return True
    if row is None:
        return True
    state, attempt, compensation_attempt, in_flight = row
    return _answers(command, StepState(state), attempt, compensation_attempt, in_flight)


def open_snapshot(rt: Runtime, step: StepDef, command: StepCommand) -> tuple[bool, Snapshot | None]:
    """``still_open`` that reads the whole saga, for a participant that will then apply the
    step's transition itself: the snapshot spares that transition its own read."""
    try:
        snap = rt.store.load(command.saga_id)
    except (StoreUnavailable, SQLAlchemyError):
        return True, None
    if snap is None or not 0 <= step.index < len(snap.status.steps):
        return True, None
    s = snap.status.steps[step.index]
    open_ = _answers(command, s.state, s.attempt, s.compensation_attempt, s.in_flight)
    return open_, snap


def _answers(
    command: StepCommand, state: StepState, attempt: int, compensation_attempt: int, live: bool
) -> bool:
    if command.action is Action.FORWARD:
        return state is StepState.RUNNING and attempt == command.attempt and live
    return state is StepState.COMPENSATING and compensation_attempt == command.attempt and live


def _error(
    command: StepCommand, exc: BaseException, *, retryable: bool, type_name: str | None = None
) -> StepReply:
    name = type_name or type(exc).__name__
    message = str(exc)[:MAX_ERROR_MESSAGE]
    log.warning(
        "%s failed: %s: %s%s",
        command.describe(),
        name,
        escape(message),
        "" if retryable else " (permanent)",
    )
    return StepReply(
        saga_id=command.saga_id,
        step=command.step,
        action=command.action,
        attempt=command.attempt,
        ok=False,
        error_type=name,
        error_message=message,
        retryable=retryable,
    )
