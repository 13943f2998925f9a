"""What travels on the broker between the coordinator and participants (JSON only).

Every message is validated with these models on receipt; a message that fails is logged, counted
and dropped without touching any saga (its deadline recovers the saga).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .choreography.definition import EVENT_RE
from .state import Action


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepCommand(_Message):
    """Run one attempt of one side of a step."""

    saga_id: str = Field(max_length=128)
    saga: str = Field(max_length=64)
    version: int
    step: str = Field(max_length=64)
    action: Action
    attempt: int = Field(ge=1)
    correlation_id: str = Field(max_length=128)
    deadline_at: datetime | None = None
    payload: dict[str, Any]
    results: dict[str, Any] = Field(default_factory=dict)
    result: Any = None  # compensation only: what the step returned
    progress: Any = None  # forward only: the last heartbeat's details of an earlier attempt
    heartbeat: float | None = Field(None, gt=0)  # the step's heartbeat interval, seconds

    def describe(self) -> str:
        """What Flower shows instead of the payload: which saga, step and attempt."""
        side = "" if self.action is Action.FORWARD else " (compensate)"
        return f"saga={self.saga} id={self.saga_id} step={self.step}{side} attempt={self.attempt}"


class StepReply(_Message):
    """The structured outcome of one attempt."""

    saga_id: str = Field(max_length=128)
    step: str = Field(max_length=64)
    action: Action
    attempt: int = Field(ge=1)
    ok: bool
    result: Any = None
    error_type: str | None = Field(None, max_length=200)
    error_message: str | None = Field(None, max_length=4000)
    retryable: bool = True

    def describe(self) -> str:
        side = "" if self.action is Action.FORWARD else " (compensate)"
        outcome = "ok" if self.ok else f"error={self.error_type}"
        return f"id={self.saga_id} step={self.step}{side} attempt={self.attempt} {outcome}"


class HeartbeatMessage(_Message):
    """A forward attempt is alive (``ctx.heartbeat`` from a worker without the store, or a
    remote step's task: ``sagas.heartbeat(saga, details)``)."""

    saga_id: str = Field(max_length=128)
    step: str = Field(max_length=64)
    attempt: int = Field(ge=1)
    details: Any = None


class EventMessage(_Message):
    """A domain event of a choreographed saga on the bus. ``handler``/``attempt`` are set only
    on a handler's retry (sent straight to that handler's queue)."""

    name: str = Field(max_length=100, pattern=EVENT_RE.pattern)
    saga_id: str = Field(min_length=1, max_length=128)
    event_id: str = Field(min_length=1, max_length=64)
    choreography: str = Field(max_length=64)
    correlation_id: str = Field(max_length=128)
    data: Any = None
    handler: str | None = None
    action: Action = Action.FORWARD
    attempt: int = Field(1, ge=1)

    def describe(self) -> str:
        extra = f" handler={self.handler} attempt={self.attempt}" if self.handler else ""
        return f"event={self.name} saga={self.choreography} id={self.saga_id}{extra}"
