"""Retry policy and backoff arithmetic (pure)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import DefinitionError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a step is retried after a transient failure or a timeout.

    ``max_attempts`` counts the first try: ``max_attempts=1`` means never retry. The wait before
    attempt ``n+1`` is ``initial * backoff**(n-1)``, capped at ``max_interval`` and spread by
    ``±jitter`` (a fraction). ``non_retryable`` lists exception class names (or classes) that end
    the step at once, as a ``PermanentError`` would.
    """

    max_attempts: int = 3
    initial: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.1
    non_retryable: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            problems.append("max_attempts must be an int")
        elif self.max_attempts < 1:
            problems.append("max_attempts must be >= 1")
        for label in ("initial", "backoff", "max_interval", "jitter"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DefinitionError(f"invalid RetryPolicy: {label} must be a number")
            if not math.isfinite(value):
                problems.append(f"{label} must be finite")
        if isinstance(self.non_retryable, str | type) or not isinstance(
            self.non_retryable, Iterable
        ):
            problems.append("non_retryable must be a list of exception classes or names")
        if not self.initial > 0:
            problems.append("initial must be > 0 seconds")
        if not self.backoff >= 1:
            problems.append("backoff must be >= 1")
        if not self.max_interval >= self.initial:
            problems.append("max_interval must be >= initial")
        if not 0 <= self.jitter < 1:
            problems.append("jitter must be in [0, 1)")
        if problems:
            raise DefinitionError("invalid RetryPolicy: " + "; ".join(problems))
        names = tuple(_error_name(e) for e in self.non_retryable)
        object.__setattr__(self, "non_retryable", names)

    @classmethod
    def build(
        cls,
        *,
        max_attempts: int = 3,
        initial: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 60.0,
        jitter: float = 0.1,
        non_retryable: Iterable[str | type[BaseException]] = (),
    ) -> RetryPolicy:
        return cls(
            max_attempts=max_attempts,
            initial=initial,
            backoff=backoff,
            max_interval=max_interval,
            jitter=jitter,
            non_retryable=tuple(_error_name(e) for e in non_retryable),
        )

    def interval(self, attempt: int, seed: str = "") -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one.

        Jitter is derived from ``seed`` (saga id, step, attempt) so the core stays deterministic
        and a replayed decision schedules the same time.
        """
        try:
            base = min(self.initial * self.backoff ** (attempt - 1), self.max_interval)
        except OverflowError:  # backoff ** attempt past float range: long since capped
            base = self.max_interval
        if not self.jitter:
            return base
        digest = hashlib.blake2b(f"{seed}:{attempt}".encode(), digest_size=8).digest()
        unit = int.from_bytes(digest, "big") / 2**64  # [0, 1)
        return base * (1 - self.jitter + 2 * self.jitter * unit)

    def is_retryable(self, error_type: str) -> bool:
        return error_type not in self.non_retryable


def _error_name(error: str | type[BaseException]) -> str:
    if isinstance(error, str):
        return error
    if isinstance(error, type) and issubclass(error, BaseException):
        return error.__name__
    raise DefinitionError(
        f"non_retryable entries must be exception classes or names, got {error!r}"
    )


NO_RETRY = RetryPolicy(max_attempts=1)
DEFAULT_RETRY = RetryPolicy()
# Compensations are meant to succeed eventually: retry them longer by default.
DEFAULT_COMPENSATION_RETRY = RetryPolicy(
    max_attempts=10, initial=1.0, backoff=2.0, max_interval=300
)
