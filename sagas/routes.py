"""What happens to a step whose retries are exhausted: its failure route (pure data).

    @saga.step(queue="payments", on_exhausted=Park("call the bank"))     # wait for an operator
    @saga.step(queue="shipping", on_exhausted=RetryAfter(timedelta(hours=1), times=3))

- ``Compensate()``: stop and undo the steps done, newest first (the default before a pivot);
- ``RetryAfter(delay, times)``: wait ``delay``, then run another round of the step's retry
  policy, up to ``times`` more rounds; after that the step is compensated (or, past a pivot,
  parked). A permanent error is not retried: it goes straight to what follows;
- ``Park(reason)``: the saga waits, flagged for an operator (``saga retry`` runs the step
  again; ``saga cancel`` compensates, unless the saga is past its pivot). The default for the
  steps after a pivot, which may only go forward.
- ``AwaitOperator(timeout)``: parked as with ``Park``, and waiting for the signal named like the
  step (``sagas.signal(saga_id, "<step>", {...})``, an operator's "fixed it, go on"), which runs
  the step again; if none comes within ``timeout`` the saga compensates (past a pivot it stays
  parked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from .errors import DefinitionError

MAX_DELAY = 10 * 365 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Compensate:
    """Compensate the steps done, newest first."""

    @property
    def kind(self) -> str:
        return "compensate"


@dataclass(frozen=True, slots=True)
class RetryAfter:
    """Another round of the retry policy after ``delay`` (seconds or a timedelta), up to
    ``times`` rounds."""

    delay: float | timedelta
    times: int = 1

    def __post_init__(self) -> None:
        seconds = _positive_seconds(self.delay, "RetryAfter: delay")
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise DefinitionError(f"RetryAfter: times must be an int >= 1, got {self.times!r}")
        object.__setattr__(self, "delay", seconds)

    @property
    def kind(self) -> str:
        return "retry_after"

    @property
    def seconds(self) -> float:
        assert isinstance(self.delay, float)
        return self.delay


@dataclass(frozen=True, slots=True)
class Park:
    """Wait for an operator, with ``reason`` shown to them."""

    reason: str = "retries exhausted"

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not 0 < len(self.reason) <= 500:
            raise DefinitionError("Park: reason must be a non-empty string of at most 500 chars")

    @property
    def kind(self) -> str:
        return "park"


@dataclass(frozen=True, slots=True)
class AwaitOperator:
    """Park and wait up to ``timeout`` (seconds or a timedelta) for an operator's signal."""

    timeout: float | timedelta

    def __post_init__(self) -> None:
        seconds = _positive_seconds(self.timeout, "AwaitOperator: timeout")
        object.__setattr__(self, "timeout", seconds)

    @property
    def kind(self) -> str:
        return "await_operator"

    @property
    def seconds(self) -> float:
        assert isinstance(self.timeout, float)
        return self.timeout


Route = Compensate | RetryAfter | Park | AwaitOperator


def _positive_seconds(value: object, what: str) -> float:
    """Seconds (a number or a timedelta), positive, finite and at most ``MAX_DELAY``."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (0 < seconds <= MAX_DELAY and math.isfinite(seconds))
    ):
        raise DefinitionError(f"{what} must be positive seconds, got {value!r}")
    return float(seconds)


@dataclass(frozen=True, slots=True)
class Continue:
    """A wait's timeout outcome: go on, with ``default`` as the wait step's result (JSON)."""

    default: object = None
