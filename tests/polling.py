"""Waiting in tests for something another process does (a worker, a server): poll, and fail
with what was awaited once the time is up (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
