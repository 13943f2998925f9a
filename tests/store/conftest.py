"""One migrated database per backend for the whole session; tables emptied before each test.

``store`` is parametrized over SQLite (a temporary file) and PostgreSQL (a scratch database;
skipped locally when PostgreSQL is down, a failure in CI).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sagas.store import Store, migrate
from tests.services import scratch_database
from tests.store.helpers import wipe

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'sagas.db'}"


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    with scratch_database("sagas_store") as url:
        yield url


def _open(url: str) -> Iterator[Store]:
    store = Store(url)
    migrate.upgrade(store.engine)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(scope="session")
def sqlite_store(sqlite_url: str) -> Iterator[Store]:
    yield from _open(sqlite_url)


@pytest.fixture(scope="session")
def postgresql_store(postgresql_url: str) -> Iterator[Store]:
    yield from _open(postgresql_url)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> Store:
    """A migrated, empty store on each backend."""
    s: Store = request.getfixturevalue(f"{request.param}_store")
    wipe(s)
    return s


@pytest.fixture
def pg_store(postgresql_store: Store) -> Store:
    wipe(postgresql_store)
    return postgresql_store
