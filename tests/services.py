"""Where the test services live, and the rule for a missing one: skip locally, fail in CI.

CI (``SAGAS_REQUIRE_SERVICES=1``, set by .ci/run) must never skip a test because PostgreSQL,
Redis or RabbitMQ is down: it fails, naming the service.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get(
    "SAGAS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("SAGAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("SAGAS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
REQUIRED = os.environ.get("SAGAS_REQUIRE_SERVICES") == "1"


def reachable(url: str) -> bool:
    parts = urlsplit(url.replace("+psycopg", ""))
    default = {"postgresql": 5432, "redis": 6379, "amqp": 5672}.get(parts.scheme, 0)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default), 2):
            return True
    except OSError:
        return False


def require(name: str, url: str) -> None:
    if reachable(url):
        return
    message = f"{name} is not reachable at {url}"
    if REQUIRED:
        pytest.fail(message + " (required in CI: .ci/run should have started it)")
    pytest.skip(message)


@contextmanager
def scratch_database(prefix: str = "sagas_test") -> Iterator[str]:
    """A new, empty PostgreSQL database for this run; dropped afterwards."""
    require("PostgreSQL", PG_ADMIN_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))  # name is generated above, not input
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
