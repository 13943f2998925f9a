"""The queued outbox marks (sagas/store/clears.py) without a database: what is written, what is
kept while the store refuses, and that a forked worker process does not write its parent's."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from sagas.errors import StoreUnavailable
from sagas.store.clears import DeferredClears

T0 = datetime(2026, 12, 2, tzinfo=UTC)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[tuple[str, datetime]]] = []
        self.refuse = False

    def __call__(self, clears: list[tuple[str, datetime]]) -> None:
        if self.refuse:
            raise StoreUnavailable("down")
        self.batches.append(sorted(clears))


def test_one_batch_per_flush_with_the_newest_outbox_of_each_saga() -> None:
    write = Recorder()
    clears = DeferredClears(write, delay=60)
    clears.add("a", T0)
    clears.add("b", T0)
    clears.add("a", T0 + timedelta(seconds=1))  # a newer outbox of "a" supersedes the first
    assert write.batches == [] and clears.pending() == 2
    assert clears.flush()
    assert write.batches == [[("a", T0 + timedelta(seconds=1)), ("b", T0)]]
    assert clears.pending() == 0 and clears.flush() and len(write.batches) == 1


def test_a_refused_batch_stays_queued_and_a_newer_outbox_wins() -> None:
    write = Recorder()
    clears = DeferredClears(write, delay=60)
    clears.add("a", T0)
    clears.add("b", T0)
    write.refuse = True
    assert not clears.flush()
    assert clears.pending() == 2
    clears.add("a", T0 + timedelta(seconds=5))  # came while the store was down
    write.refuse = False
    assert clears.flush()
    assert write.batches == [[("a", T0 + timedelta(seconds=5)), ("b", T0)]]


def test_a_full_batch_is_written_without_waiting_for_the_delay() -> None:
    write = Recorder()
    clears = DeferredClears(write, delay=60, batch=3)
    for name in ("a", "b", "c"):
        clears.add(name, T0)
    deadline = time.monotonic() + 10
    while not write.batches:
        assert time.monotonic() < deadline, "a full batch waited for the delay"
        time.sleep(0.01)
    assert write.batches == [[("a", T0), ("b", T0), ("c", T0)]]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork workers fork")
def test_a_forked_child_neither_writes_nor_counts_its_parents_clears() -> None:
    write = Recorder()
    clears = DeferredClears(write, delay=60)
    clears.add("parent", T0)
    pid = os.fork()
    if pid == 0:  # the child: a prefork worker process
        code = 0
        try:
            if clears.pending() != 0:
                code = 1
            clears.add("child", T0)
            clears.flush()
            if write.batches != [[("child", T0)]]:
                code = 2
        except BaseException:  # noqa: BLE001 - report through the exit code
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert clears.pending() == 1  # the parent's is still the parent's
    assert clears.flush() and write.batches == [[("parent", T0)]]
