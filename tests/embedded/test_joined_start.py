"""``starter.start`` with a registered transaction finder, for both kinds of saga, in the
embedded runtime: the saga row is written in the caller's SQLAlchemy transaction (absent for
the store until the commit), nothing is dispatched before the commit, and after it the saga
runs to its end; a rollback leaves no saga."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine

import sagas
from sagas import SagaNotFound, SagaState, starter
from sagas.runtime import Runtime
from sagas.settings import Settings
from sagas.store.joined import ConnectionTransaction
from sagas.testing import embedded, wait_for
from tests.embedded.test_embedded import ORDER
from workers.app import app


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    db = tmp_path_factory.mktemp("joined") / "sagas.db"
    with embedded(
        app, settings=Settings(database_url=f"sqlite:///{db}", sweep_interval=0.25)
    ) as runtime:
        yield runtime


@pytest.mark.parametrize("name", ["order_fulfillment", "order_choreography"])
def test_a_start_joins_the_callers_transaction(rt: Runtime, name: str) -> None:
    engine = create_engine(rt.store.url, connect_args={"timeout": 30})
    pending: list[Callable[[], object]] = []
    current: dict[str, Any] = {}
    finder = lambda _rt: current.get("joined")  # noqa: E731 - one test's finder
    starter.join_transactions(finder)
    try:
        for commit in (True, False):
            saga_id = f"j-{uuid.uuid4().hex[:10]}"
            with engine.connect() as conn:
                conn.begin()
                current["joined"] = ConnectionTransaction(conn, pending.append)
                sagas.get_saga(name).start(ORDER, saga_id=saga_id)
                current.pop("joined")
                with pytest.raises(SagaNotFound):  # not visible outside the transaction
                    rt.store.get(saga_id)
                assert len(pending) == 1  # the dispatch waits for the commit
                (conn.commit if commit else conn.rollback)()
            if commit:
                pending.pop()()
                assert wait_for(rt.store, saga_id, timeout=20).state is SagaState.COMPLETED
            else:
                pending.clear()  # the caller's framework drops it on rollback
                with pytest.raises(SagaNotFound):
                    rt.store.get(saga_id)
    finally:
        starter._finders.remove(finder)
        engine.dispose()
