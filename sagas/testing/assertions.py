"""Assertions about a saga that read like the test's intent and, when they fail, print the
saga's step table and history (what ``saga show`` prints):

    assert_completed(saga_id)
    assert_compensated(saga_id, ["charge_payment", "reserve_inventory"])   # newest first
    assert_failed(saga_id, error="CardDeclined")

They read the configured runtime's store (the test runtime's), or the ``store`` given.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SagaNotFound
from ..machine import SagaStatus
from ..report import timeline
from ..runtime import get_runtime
from ..state import HistoryKind, SagaState, StepState
from ..store import HistoryEntry, SagaRecord, Store

Read = tuple[SagaRecord, SagaStatus, list[HistoryEntry]]


def _read(saga_id: str, store: Store | None) -> Read:
    try:
        return (store or get_runtime().store).get(saga_id)
    except SagaNotFound:
        raise AssertionError(f"no saga {saga_id!r} in the store (was it started?)") from None


def _fail(what: str, read: Read) -> AssertionError:
    return AssertionError(f"{what}\n\n{timeline(*read)}")


def assert_completed(saga_id: str, *, store: Store | None = None) -> SagaStatus:
    """The saga completed: every step succeeded. Returns its status (results by step)."""
    read = _read(saga_id, store)
    record, status, _ = read
    if record.state is not SagaState.COMPLETED:
        failure = f" ({record.failure.type}: {record.failure.message})" if record.failure else ""
        raise _fail(f"saga {saga_id!r} is {record.state.value}{failure}, expected completed", read)
    return status


def assert_failed(
    saga_id: str, *, error: str | None = None, store: Store | None = None
) -> SagaStatus:
    """The saga failed (and finished compensating); with ``error``, because of that error type."""
    read = _read(saga_id, store)
    record, status, _ = read
    if record.state is not SagaState.FAILED:
        raise _fail(f"saga {saga_id!r} is {record.state.value}, expected failed", read)
    got = record.failure.type if record.failure else None
    if error is not None and got != error:
        raise _fail(f"saga {saga_id!r} failed with {got}, expected {error}", read)
    return status


def compensations(read: Read) -> list[str]:
    """Steps whose compensation completed, in the order they completed."""
    return [h.step for h in read[2] if h.kind == HistoryKind.STEP_COMPENSATED.value and h.step]


def assert_compensated(
    saga_id: str, steps: Sequence[str], *, store: Store | None = None
) -> SagaStatus:
    """The saga failed and exactly ``steps`` were compensated, each once, in this order — the
    order compensations run in: newest first. ``[]`` means nothing needed undoing."""
    read = _read(saga_id, store)
    record, status, _ = read
    if record.state is not SagaState.FAILED:
        raise _fail(
            f"saga {saga_id!r} is {record.state.value}, expected failed after compensating "
            f"{list(steps)}",
            read,
        )
    done = compensations(read)
    undone = [s.name for s in status.steps if s.state is StepState.COMPENSATED]
    if done != list(steps) or sorted(undone) != sorted(steps):
        raise _fail(
            f"saga {saga_id!r} compensated {done} (steps now compensated: {undone}), "
            f"expected {list(steps)} in that order",
            read,
        )
    return status
