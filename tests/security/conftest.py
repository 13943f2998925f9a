"""One embedded harness (SQLite store, in-memory broker, in-process worker) for the security
package, on the example app (``workers.app``: JSON only). The worker consumes every saga queue
except ``security_lost`` (see ``tests.security.probe``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.testing import embedded, saga_queues
from tests.security import probe
from workers.app import app


@pytest.fixture(scope="package")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("security") / "sagas.db"
    settings = Settings(database_url=f"sqlite:///{db}", sweep_interval=0.1)
    queues = [q for q in saga_queues() if q != probe.LOST_QUEUE]
    with embedded(app, settings=settings, queues=queues) as runtime:
        yield runtime
    # The in-memory broker is process-wide: leave no undelivered command for a later harness.
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(probe.LOST_QUEUE)


def sid(prefix: str = "sec") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"timed out after {timeout}s waiting for {what or check}"
            return value
        time.sleep(0.02)
