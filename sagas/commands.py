"""Commands: what a transition's outbox holds, and the message a step is sent.

Pure (no I/O): ``encode_command``/``decode_command`` carry the core's ``Dispatch``/``WakeAt`` in
the saga row's outbox (JSON); ``build_command`` turns a dispatch into the ``StepCommand`` the
participant receives; ``still_wanted`` says whether a re-published dispatch is still the step's
open attempt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .definition import Saga
from .machine import Dispatch, SagaStatus, WakeAt, is_open_attempt
from .messages import StepCommand
from .state import Action
from .store import SagaRecord


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
    """Is an outbox dispatch still the step's open attempt? (re-publishing it)"""
    return is_open_attempt(status.steps[cmd.step], cmd.action, cmd.attempt)


def build_command(
    saga: Saga[Any], record: SagaRecord, status: SagaStatus, cmd: Dispatch
) -> StepCommand:
    step = saga.steps[cmd.step]
    # Earlier steps that produced a result (succeeded, possibly being compensated since).
    results = {s.name: s.result for s in status.steps[: cmd.step] if s.result is not None}
    forward = cmd.action is Action.FORWARD
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
        progress=status.steps[cmd.step].progress if forward else None,
        heartbeat=step.heartbeat if forward else None,
    )
