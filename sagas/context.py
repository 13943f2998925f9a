"""What a step is told: the ``StepContext`` built from a command, and its idempotency key.

One place for both patterns: an orchestrated step gets its context from the ``StepCommand`` it
was sent, a choreography handler from the saga row and the event (``choreography.runner``); a
remote step (a plain Celery task) gets the same facts as a JSON dict (``remote_context``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .definition import StepContext
from .messages import StepCommand
from .state import Action


def idempotency_key(saga_id: str, step: str, action: Action) -> str:
    """Stable across every attempt of one step's action (pass it to payment gateways...)."""
    return f"{saga_id}:{step}" if action is Action.FORWARD else f"{saga_id}:{step}:compensate"


def step_context(
    payload_model: type[BaseModel],
    command: StepCommand,
    current: Callable[[], bool] | None = None,
    beat: Callable[[Any], bool] | None = None,
) -> StepContext[Any]:
    """The context of the attempt ``command`` dispatches (validates the payload)."""
    return StepContext(
        saga_id=command.saga_id,
        saga_name=command.saga,
        step=command.step,
        action=command.action,
        attempt=command.attempt,
        payload=payload_model.model_validate(command.payload),
        results=dict(command.results),
        idempotency_key=idempotency_key(command.saga_id, command.step, command.action),
        correlation_id=command.correlation_id,
        deadline_at=command.deadline_at,
        result=command.result,
        progress=command.progress,
        current=current,
        beat=beat,
    )


def remote_context(command: StepCommand) -> dict[str, Any]:
    """The ``saga=`` keyword a remote step's Celery task receives (JSON)."""
    return {
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
        "progress": command.progress,
        "heartbeat": command.heartbeat,
    }
