"""Reading a saga from application code: ``sagas.get(saga_id)``, and the handle ``start`` returns.

handle = order_fulfillment.start(payload, saga_id=f"order-{order.pk}")
info = handle.wait(timeout=30)          # or sagas.get(handle) from any other process
if info.state is SagaState.FAILED:
    print(info.failure, [(s.name, s.state) for s in info.steps])
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import SagaError, SagaNotFound
from .machine import ErrorInfo
from .registry import SagaHandle, bind_reader
from .runtime import Runtime, get_runtime
from .state import SagaKind, SagaState, StepState
from .store import HistoryEntry


@dataclass(frozen=True, slots=True)
class StepInfo:
    name: str
    state: StepState
    attempt: int  # forward attempts dispatched
    compensation_attempt: int
    result: Any
    error: ErrorInfo | None
    started_at: datetime | None
    finished_at: datetime | None
    in_doubt: bool  # an attempt timed out: its effect may exist, so it is compensated
    heartbeat_at: datetime | None = None  # the open attempt's last heartbeat
    progress: Any = None  # the last heartbeat's details (``ctx.heartbeat``)


@dataclass(frozen=True, slots=True)
class SagaInfo:
    """A saga as the store holds it now."""

    id: str
    name: str
    kind: SagaKind
    version: int
    state: SagaState
    correlation_id: str
    payload: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    deadline_at: datetime | None
    failure: ErrorInfo | None  # why compensation began
    parked: bool  # waiting for an operator
    steps: tuple[StepInfo, ...]
    history: tuple[HistoryEntry, ...]
    # Changes with every write: pass it to an operator action (``revision=``) so that a saga
    # that moved since it was read is refused rather than acted on.
    revision: int = 0
    paused_at: datetime | None = None  # paused by an operator (``sagas.pause``)
    forked_from: str | None = None  # the saga this one was forked from
    forks: tuple[str, ...] = ()  # sagas forked from this one

    @property
    def done(self) -> bool:
        return self.state.terminal

    def step(self, name: str) -> StepInfo:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"saga {self.name!r} has no step {name!r}")


class SagaWaitTimeout(SagaError, TimeoutError):
    """``wait`` gave up before the saga finished; ``info`` is the last state read."""

    def __init__(self, message: str, info: SagaInfo) -> None:
        super().__init__(message)
        self.info = info


def get(saga_id: str, *, rt: Runtime | None = None) -> SagaInfo:
    """The saga ``saga_id`` with its steps and history (``SagaNotFound`` if there is none)."""
    store = (rt or get_runtime()).store
    record, status, history = store.get(saga_id)
    steps = tuple(
        StepInfo(
            s.name,
            s.state,
            s.attempt,
            s.compensation_attempt,
            s.result,
            s.error,
            s.started_at,
            s.finished_at,
            s.in_doubt,
            s.heartbeat_at,
            s.progress,
        )
        for s in status.steps
    )
    return SagaInfo(
        id=record.id,
        name=record.name,
        kind=record.kind,
        version=record.version,
        state=record.state,
        correlation_id=record.correlation_id,
        payload=record.payload,
        created_at=record.created_at,
        updated_at=record.updated_at,
        finished_at=record.finished_at,
        deadline_at=record.deadline_at,
        failure=record.failure,
        parked=record.parked,
        steps=steps,
        history=tuple(history),
        revision=record.lock_version,
        paused_at=record.paused_at,
        forked_from=record.forked_from,
        forks=tuple(store.forks_of(record.id)),
    )


def wait(
    saga_id: str, *, timeout: float = 30.0, poll: float = 0.05, rt: Runtime | None = None
) -> SagaInfo:
    """Poll until the saga finishes (completed or failed) or is parked for an operator.

    A saga sent with ``start_saga.delay`` exists once the coordinator consumed its start: until
    then (and at most ``timeout``) a missing id is waited for too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = get(saga_id, rt=rt)
        except SagaNotFound:
            if time.monotonic() >= deadline:
                raise SagaNotFound(
                    f"no saga with id {saga_id!r} after {timeout}s (is a worker consuming the "
                    "coordinator queue?)"
                ) from None
            time.sleep(poll)
            continue
        if info.done or info.parked:
            return info
        if time.monotonic() >= deadline:
            raise SagaWaitTimeout(
                f"saga {saga_id!r} still {info.state.value} after {timeout}s", info
            )
        time.sleep(poll)


def _status(handle: SagaHandle) -> SagaInfo:
    return get(str(handle))


def _wait(handle: SagaHandle, timeout: float) -> SagaInfo:
    return wait(str(handle), timeout=timeout)


bind_reader(_status, _wait)
