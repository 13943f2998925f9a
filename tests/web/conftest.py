"""A store holding one saga of each shape (``shop.EXPECTED``), made by running the sagas for
real: on SQLite with the testing kit's runtime (fake clock), and on PostgreSQL with the
embedded worker (real threads, real time). The API and CLI tests read it as an operator would,
through a separate ``Store``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from kombu.transport import memory

import sagas
from sagas.clock import FakeClock
from sagas.store import Store
from sagas.testing import embedded, local_runtime
from tests.services import scratch_database
from tests.web import shop


@dataclass
class Shop:
    backend: str
    url: str
    store: Store  # the operator's own store object (the API's), not the engine's
    ids: dict[str, str]  # shape -> saga id
    created: list[str] = field(default_factory=list)  # ids in creation order
    clock: FakeClock | None = None  # SQLite: the runtime's fake clock

    def shape(self, saga_id: str) -> str:
        return next(k for k, v in self.ids.items() if v == saga_id)


def _start_all(start: Callable[..., str], tag: str) -> tuple[dict[str, str], list[str]]:
    ids: dict[str, str] = {}
    order: list[str] = []
    for mode in shop.ORDER_MODES:
        ids[mode] = start(shop.order, {"order_id": f"{tag}-{mode}", "mode": mode}, f"{tag}-{mode}")
        order.append(ids[mode])
    for shape in ("waiting", "approved"):
        ids[shape] = start(shop.loan, {"loan_id": f"{tag}-{shape}"}, f"{tag}-loan-{shape}")
        order.append(ids[shape])
    return ids, order


def _settled(store: Store, saga_id: str, shape: str) -> bool:
    record, status, _ = store.get(saga_id)
    state, parked = shop.EXPECTED[shape]
    if (record.state.value, record.parked) != (state, parked):
        return False
    if shape == "flaky":  # the retry is scheduled (an hour ahead)
        return status.steps[1].state.value == "pending" and status.steps[1].attempt == 1
    if shape == "waiting":
        return status.steps[1].state.value == "running"
    return True


def _wait_settled(store: Store, ids: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pending = [s for s, i in ids.items() if not _settled(store, i, s)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled in {timeout}s: {pending}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def sqlite_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    url = f"sqlite:///{tmp_path_factory.mktemp('web') / 'sagas.db'}"
    with local_runtime(shop.app, database_url=url) as rt:

        def start(saga: Any, payload: Any, sid: str) -> str:
            started = rt.start(saga, payload, saga_id=sid)
            rt.advance(timedelta(seconds=1))  # distinct creation times, as in real life
            return started

        ids, order = _start_all(start, "lite")
        sagas.signal(ids["approved"], "approval", {"by": "ops@example.com"})
        rt.run()
        now = rt.clock.now()
    # The operator's process reads the file afterwards, on a clock where the sagas just ran.
    clock = FakeClock(now)
    store = Store(url, clock=clock)
    _wait_settled(store, ids, timeout=5)
    yield Shop("sqlite", url, store, ids, order, clock)
    store.dispose()


@pytest.fixture(scope="session")
def pg_shop() -> Iterator[Shop]:
    with scratch_database("sagas_web") as url:
        # The in-memory broker's exchanges are process-wide: an earlier test's embedded runtime
        # may have left 'sagas.events' declared with other arguments, and the worker thread
        # would then die on redeclaring it (NotEquivalentError) while start_worker waits.
        memory.Transport.global_state.clear()
        with embedded(shop.app, database_url=url):
            ids, order = _run_on_workers(url)
        store = Store(url)
        yield Shop("postgresql", url, store, ids, order)
        store.dispose()


def _run_on_workers(url: str) -> tuple[dict[str, str], list[str]]:
    ids, order = {}, []
    for mode in shop.ORDER_MODES:  # one at a time: creation order is the list's order
        sid = f"pg-{mode}"
        shop.order.start({"order_id": sid, "mode": mode}, saga_id=sid)
        ids[mode] = sid
        order.append(sid)
    for shape in ("waiting", "approved"):
        sid = f"pg-loan-{shape}"
        shop.loan.start({"loan_id": sid}, saga_id=sid)
        ids[shape] = sid
        order.append(sid)
    store = Store(url)
    _wait_settled(store, {k: v for k, v in ids.items() if k != "approved"})
    _wait_until_waiting(store, ids["approved"])
    sagas.signal(ids["approved"], "approval", {"by": "ops@example.com"})
    _wait_settled(store, ids)
    store.dispose()
    return ids, order


def _wait_until_waiting(store: Store, saga_id: str) -> None:
    deadline = time.monotonic() + 60
    while not _settled(store, saga_id, "waiting"):
        assert time.monotonic() < deadline, f"{saga_id} never reached its wait"
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_shop(request: pytest.FixtureRequest) -> Shop:
    shop_: Shop = request.getfixturevalue(
        f"{'pg' if request.param == 'postgresql' else 'sqlite'}_shop"
    )
    return shop_
