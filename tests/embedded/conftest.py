"""Shared fixtures of the embedded tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery.signals import before_task_publish


class Published(list[dict[str, Any]]):
    """Every task message published while a test runs: task name, headers, body, routing key."""

    def tasks_of(self, saga_id: str) -> list[str]:
        """Names of the tasks published for one saga, in order."""
        return [m["task"] for m in self if m["headers"].get("saga_id") == saga_id]


@pytest.fixture
def published() -> Iterator[Published]:
    seen = Published()

    def capture(
        sender: str, headers: dict[str, Any], body: Any, routing_key: str = "", **_: Any
    ) -> None:
        seen.append(
            {"task": sender, "headers": dict(headers), "body": body, "routing_key": routing_key}
        )

    before_task_publish.connect(capture, weak=False)
    try:
        yield seen
    finally:
        before_task_publish.disconnect(capture)
