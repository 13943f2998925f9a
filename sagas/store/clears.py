"""Outbox clears written a moment later, many in one statement.

A transition writes its commands to the saga row's outbox, publishes them, then marks them
published so the sweeper does not re-publish them after ``SAGAS_OUTBOX_GRACE``. That mark is
bookkeeping, not state: losing it (a process killed before it is written) costs a re-publish
that the stale-command check absorbs, exactly as a crash between publish and clear always has.
So a worker need not pay one statement per publish: it queues the clear, and a background
thread of its process writes what is queued every ``delay`` seconds (or at once when a batch
fills) in one UPDATE. The delay (0.1 s by default) is two orders of magnitude under the grace.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from datetime import datetime

from ..errors import StoreError
from ..observability import escape, get_logger

log = get_logger("sagas.store")

Write = Callable[[list[tuple[str, datetime]]], None]
MAX_PAUSE = 5.0  # seconds between tries while the store refuses (under the outbox grace)


class DeferredClears:
    """Pending ``(saga_id, outbox_at)`` clears of one process, written by one daemon thread."""

    def __init__(self, write: Write, delay: float, batch: int = 500) -> None:
        self._write, self.delay, self._batch = write, delay, batch
        self._fresh()
        # A forked child (a prefork worker process) starts empty, with locks of its own: the
        # parent's queue and thread are the parent's (and a lock held at fork would never be
        # released in the child).
        os.register_at_fork(after_in_child=self._fresh)

    def _fresh(self) -> None:
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one write at a time: the thread's or flush()'s
        # One entry per saga: a newer outbox supersedes the older one, whose clear is a no-op.
        self._pending: dict[str, datetime] = {}
        self._arrived = threading.Event()  # something is queued (the thread sleeps until then)
        self._full = threading.Event()  # a batch is full: write it without waiting
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, saga_id: str, outbox_at: datetime) -> None:
        with self._lock:
            first = not self._pending
            self._pending[saga_id] = outbox_at
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sagas-outbox-clears", daemon=True
                )
                self._thread.start()
                # A normal exit writes what is queued (prefork children leave by os._exit:
                # their worker_process_shutdown handler flushes instead).
                atexit.register(self.flush)
            full = len(self._pending) >= self._batch
        if first:
            self._arrived.set()
        if full:
            self._full.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> bool:
        """Write every queued clear now (process shutdown, tests, ``Store.dispose``). False
        when the store refused: the clears stay queued for the next round."""
        with self._flushing:
            with self._lock:
                if not self._pending:
                    return True
                taken, self._pending = self._pending, {}
            try:
                self._write(list(taken.items()))
            except StoreError as exc:
                # Kept (unless a newer outbox of the saga came meanwhile); past the grace the
                # sweeper re-publishes, as after a crash. Logged once per outage, not per try.
                if not self._failing:
                    log.warning(
                        "outbox marks not written (%s); retrying", escape(type(exc).__name__)
                    )
                self._failing = True
                with self._lock:
                    for saga_id, at in taken.items():
                        self._pending.setdefault(saga_id, at)
                self._arrived.set()  # still queued: the thread tries again
                return False
            self._failing = False
            return True

    def _run(self) -> None:
        pause = self.delay
        while True:
            self._arrived.wait()  # idle: no wakeups while nothing is queued
            self._full.wait(pause)  # gather what comes within the delay (or a full batch)
            # Cleared before the flush takes the queue: a clear queued after this point sets
            # them again, so none waits for a later one.
            self._arrived.clear()
            self._full.clear()
            try:
                ok = self.flush()
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("outbox marks failed")
                ok = False
                self._arrived.set()
            # While the store refuses, try less often (up to MAX_PAUSE): an outage must not
            # become a busy loop of failing connections in every worker process.
            pause = self.delay if ok else min(pause * 2, MAX_PAUSE)
