"""Everything the engine sends on the broker, in one place.

All messages are JSON; Flower shows ``argsrepr`` (saga, id, step, attempt), never payloads.
The saga's correlation id rides in the message headers of every step and compensation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import Signature

from .definition import Saga, StepDef
from .machine import Dispatch, SagaStatus, WakeAt
from .messages import StepCommand, StepReply
from .state import Action, StepState
from .store import SagaRecord

REPLY_TASK = "sagas.step_reply"
REMOTE_OK_TASK = "sagas.remote_reply"
REMOTE_ERROR_TASK = "sagas.remote_failed"
WAKE_TASK = "sagas.wake"
CORRELATION_HEADER = "saga_correlation_id"


def encode_command(cmd: Dispatch | WakeAt) -> dict[str, Any]:
    if isinstance(cmd, WakeAt):
        return {"type": "wake", "at": cmd.at.isoformat()}
    return {
        "type": "dispatch",
        "step": cmd.step,
        "attempt": cmd.attempt,
        "action": cmd.action.value,
        "deadline_at": cmd.deadline_at.isoformat(),
    }


def decode_command(data: dict[str, Any]) -> Dispatch | WakeAt:
    if data["type"] == "wake":
        return WakeAt(datetime.fromisoformat(data["at"]))
    return Dispatch(
        step=int(data["step"]),
        attempt=int(data["attempt"]),
        action=Action(data["action"]),
        deadline_at=datetime.fromisoformat(data["deadline_at"]),
    )


def still_wanted(cmd: Dispatch, status: SagaStatus) -> bool:
    """Is this dispatch still the step's open attempt? (re-publishing from the outbox)"""
    s = status.steps[cmd.step]
    if cmd.action is Action.FORWARD:
        return s.state is StepState.RUNNING and s.attempt == cmd.attempt and s.in_flight
    return (
        s.state is StepState.COMPENSATING and s.compensation_attempt == cmd.attempt and s.in_flight
    )


def build_command(
    saga: Saga[Any], record: SagaRecord, status: SagaStatus, cmd: Dispatch
) -> StepCommand:
    step = saga.steps[cmd.step]
    # Earlier steps that produced a result (succeeded, possibly being compensated since).
    results = {s.name: s.result for s in status.steps[: cmd.step] if s.result is not None}
    deadline = cmd.deadline_at
    if status.deadline_at is not None and cmd.action is Action.FORWARD:
        deadline = min(deadline, status.deadline_at)
    return StepCommand(
        saga_id=record.id,
        saga=saga.name,
        version=record.version,
        step=step.name,
        action=cmd.action,
        attempt=cmd.attempt,
        correlation_id=record.correlation_id,
        deadline_at=deadline,
        payload=record.payload,
        results=results,
        result=status.steps[cmd.step].result if cmd.action is Action.COMPENSATE else None,
    )


def send_step(app: Any, step: StepDef, command: StepCommand, coordinator_queue: str) -> None:
    headers = {CORRELATION_HEADER: command.correlation_id, "saga_id": command.saga_id}
    queue = step.queue_for(command.action)
    name = step.task_name(command.action)
    remote = step.compensation_task if command.action is Action.COMPENSATE else step.task
    if remote is None:
        app.send_task(
            name,
            args=[command.model_dump(mode="json")],
            queue=queue,
            headers=headers,
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
    options = {"queue": coordinator_queue, "headers": headers}
    app.send_task(
        remote,
        kwargs=remote_arguments(step, command),
        queue=queue,
        headers=headers,
        link=Signature(REMOTE_OK_TASK, kwargs=ids, options=options, app=app),
        link_error=Signature(REMOTE_ERROR_TASK, kwargs=ids, options=options, app=app),
        argsrepr=command.describe(),
        kwargsrepr="{}",
    )


def remote_arguments(step: StepDef, command: StepCommand) -> dict[str, Any]:
    context = {
        "saga_id": command.saga_id,
        "saga": command.saga,
        "step": command.step,
        "action": command.action.value,
        "attempt": command.attempt,
        "idempotency_key": idempotency_key(command.saga_id, command.step, command.action),
        "correlation_id": command.correlation_id,
        "deadline_at": command.deadline_at.isoformat() if command.deadline_at else None,
        "results": command.results,
        "result": command.result,
    }
    if step.arguments is not None:
        from .participant import context_from_command

        return step.arguments(context_from_command(command))
    return {"payload": command.payload, "saga": context}


def idempotency_key(saga_id: str, step: str, action: Action) -> str:
    return f"{saga_id}:{step}" if action is Action.FORWARD else f"{saga_id}:{step}:compensate"


def send_reply(app: Any, reply: StepReply, correlation_id: str, coordinator_queue: str) -> None:
    app.send_task(
        REPLY_TASK,
        args=[reply.model_dump(mode="json")],
        queue=coordinator_queue,
        headers={CORRELATION_HEADER: correlation_id, "saga_id": reply.saga_id},
        argsrepr=reply.describe(),
        kwargsrepr="{}",
    )


def send_wake(app: Any, saga_id: str, countdown: float, coordinator_queue: str) -> None:
    app.send_task(
        WAKE_TASK,
        args=[saga_id],
        queue=coordinator_queue,
        countdown=max(countdown, 0.0),
        argsrepr=f"id={saga_id}",
    )
