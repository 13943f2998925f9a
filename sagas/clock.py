"""Where the engine's time comes from: one injectable source (pure, no I/O).

Production uses ``SYSTEM`` (on PostgreSQL the store reads the database clock instead, so a
skewed worker clock cannot move deadlines). Tests of the embedded SQLite runtime may pass a
``FakeClock`` to the store: retry backoff, step timeouts, saga deadlines and sweeper periods
then move only when the test advances it. ``Store`` refuses a fake clock on PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """The wall clock (aware UTC) and a monotonic clock in seconds that agrees with it."""

    @property
    def real(self) -> bool: ...

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """Python's clocks."""

    real = True

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "<SystemClock>"


SYSTEM = SystemClock()

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)  # a fake clock's default start: far from real "now"


class FakeClock:
    """A clock that moves only when told to. Thread-safe.

    ``advance(timedelta(hours=1))`` moves it forward. A runtime that owns the clock (the test
    runtime) installs a driver with ``drive``: advancing then steps through every timer that
    falls due on the way, letting the engine react at each, instead of jumping over them."""

    real = False

    def __init__(self, start: datetime | None = None) -> None:
        start = start or EPOCH
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime (UTC)")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()
        self._driver: Callable[[datetime], None] | None = None

    def __repr__(self) -> str:
        return f"<FakeClock {self.now().isoformat()}>"

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        # Seconds since EPOCH: moves exactly with ``now`` (a snapshot's age is fake time too).
        return (self.now() - EPOCH).total_seconds()

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (seconds or a timedelta), firing what falls due on the way
        when a runtime drives this clock. Returns the new time."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError(f"a clock cannot go back ({seconds} s)")
        target = self.now() + timedelta(seconds=seconds)
        driver = self._driver
        if driver is None:
            self.set(target)
        else:
            driver(target)
        return self.now()

    def set(self, when: datetime) -> None:
        """Move straight to ``when`` (never backwards), firing nothing."""
        with self._lock:
            if when < self._now:
                raise ValueError(f"a clock cannot go back ({when} < {self._now})")
            self._now = when

    def drive(self, driver: Callable[[datetime], None] | None) -> None:
        """Let ``driver(target)`` carry out ``advance`` (None: plain jumps)."""
        self._driver = driver
