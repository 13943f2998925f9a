"""``embedded()``'s default store is safe under its worker threads.

Its old default, in-memory SQLite, is one connection shared by the worker's threads, the
sweeper and the caller: with a few sagas at once it failed almost every run ("cannot start a
transaction within a transaction"; 3 runs in 3 with this test's load). The default is now a
private temporary file, and an in-memory URL is given one too.
"""

from __future__ import annotations

import os

import pytest

from sagas import SagaState
from sagas.testing import embedded, private_database, wait_for
from tests.testing import shop


@pytest.mark.timeout(120)
@pytest.mark.parametrize("url", [None, None, "sqlite://"])
def test_the_default_store_survives_concurrent_sagas(url: str | None) -> None:
    with embedded(shop.app, database_url=url, concurrency=4) as rt:
        assert rt.store.url.startswith("sqlite:////") and "sagas-test-" in rt.store.url
        ids = [shop.dinner.start({"guest": f"g{n}"}) for n in range(12)]
        states = [wait_for(rt.store, saga_id, timeout=30).state for saga_id in ids]
    assert states == [SagaState.COMPLETED] * 12
    assert not os.path.exists(rt.store.url.removeprefix("sqlite:///"))  # removed on exit


def test_a_named_database_is_kept(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/mine.db"
    with private_database(url) as got:
        assert got == url
    with private_database("sqlite:///:memory:") as got:
        assert got != "sqlite:///:memory:" and got.endswith("sagas.db")
