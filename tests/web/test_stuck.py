"""The stuck list's unsent-commands class, made the way it happens: the coordinator died
between committing a start and publishing its first command (the sweeper has not repaired it
yet: this operator's clock runs ahead of any sweeper)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sagas import faults
from sagas.clock import FakeClock
from sagas.store import Store
from sagas.testing import local_runtime
from sagas.web import create_app
from tests.web import shop


@pytest.fixture
def lost_start(tmp_path: Path) -> Iterator[tuple[str, str, FakeClock]]:
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    with local_runtime(shop.app, database_url=url) as rt:
        faults.arm("coordinator.start_after_commit=raise:1")
        try:
            with pytest.raises(faults.InjectedFault):
                rt.start(shop.order, {"order_id": "lost", "mode": "ok"}, saga_id="lost-1")
        finally:
            faults.arm("")
        yield url, "lost-1", FakeClock(rt.clock.now())


def test_a_start_committed_but_never_published_is_unsent_commands(
    lost_start: tuple[str, str, FakeClock],
) -> None:
    url, saga_id, clock = lost_start
    for wait, listed in ((30, False), (600, True)):  # listed once older than older_than (60 s)
        store = Store(url, clock=FakeClock(clock.now() + timedelta(seconds=wait)))
        try:
            with TestClient(create_app(store)) as c:
                body = c.get("/api/stuck", params={"older_than": 60}).json()
                one = c.get(f"/api/sagas/{saga_id}").json()
        finally:
            store.dispose()
        assert one["state"] == "pending" and one["steps"][0]["state"] == "running"
        if not listed:
            assert body["items"] == []
            continue
        [item] = body["items"]
        assert item["saga"]["id"] == saga_id and item["stuck_class"] == "unsent_commands"
        assert item["reason"].startswith("commands committed but not published")
        assert item["stuck_for_seconds"] == 600
