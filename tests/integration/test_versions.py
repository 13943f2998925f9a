"""Deploying a new saga version while sagas of the old one are in flight, with real workers on
Redis and PostgreSQL (``tests/integration/version_app.py``).

1. Deploy ``v1``; start two sagas, held in flight at their first step.
2. Deploy ``v1-changed`` (version 1 edited without a new number): the worker refuses to start,
   naming the saga, the version and the difference.
3. Deploy ``v1+v2`` for the coordinator, but leave a ``v1``-only worker alone on the steps'
   queue: a new start takes version 2, and its first step command, which that worker cannot
   run, is put back for another worker instead of failing the saga. Then the old worker is
   retired, a ``v1+v2`` worker takes the steps' queue and the gate opens: the version 1 sagas finish on version 1's steps,
   the version 2 sagas on version 2's (a step renamed, one added). ``saga versions`` counts them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from redis import Redis

from sagas.store import Store
from sagas.store.migrate import upgrade
from tests.polling import poll
from tests.services import REDIS_URL, require, scratch_database
from tests.wheelhouse import spawn, stop_group
from tests.worker_harness import base_app

pytestmark = pytest.mark.workers

ROOT = Path(__file__).resolve().parents[2]
BROKER = REDIS_URL.rsplit("/", 1)[0] + "/9"  # this module's own Redis database


class Deployment:
    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp, self.database_url = tmp, database_url
        self.gate = tmp / "gate"
        self.keyprefix = f"versions-{uuid.uuid4().hex[:8]}:"
        self.store = Store(database_url)
        self.client = base_app("versions-client", [], "%(message)s", BROKER, self.keyprefix)

    def env(self, deploy: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            SAGAS_DATABASE_URL=self.database_url,
            CELERY_BROKER_URL=BROKER,
            SAGAS_IT_KEYPREFIX=self.keyprefix,
            SAGAS_IT_PARENT_PID=str(os.getpid()),
            VERSION_DEPLOY=deploy,
            VERSION_GATE=str(self.gate),
        )
        return env

    def argv(self, name: str, queues: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "tests.integration.version_app", "worker",
            "-Q", queues, "-P", "threads", "-c", "2", "-l", "INFO", "-n", f"{name}@%h",
        ]  # fmt: skip

    @contextmanager
    def worker(self, name: str, deploy: str, queues: str) -> Iterator[Path]:
        log = self.tmp / f"{name}.log"
        proc = spawn(self.argv(name, queues), ROOT, self.env(deploy), log)
        try:
            poll(lambda: " ready." in log.read_text(), 60, f"worker {name} ({log.read_text()})")
            yield log
        finally:
            stop_group(proc)

    def start(self, saga_id: str) -> None:
        self.client.send_task(
            "sagas.start_saga",
            args=["versioned_order", {"ref": saga_id}],
            kwargs={"saga_id": saga_id},
            queue="sagas",
        )

    def exists(self, saga_id: str) -> bool:
        return any(r.id == saga_id for r in self.store.list(limit=100))

    def steps(self, saga_id: str) -> tuple[int, str, list[tuple[str, str, str]]]:
        record, status, _ = self.store.get(saga_id)
        ran = [(s.name, s.state.value, (s.result or {}).get("ran", "")) for s in status.steps]
        return record.version, record.state.value, ran

    def versions(self, deploy: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env(deploy), "SAGAS_CELERY_APP": "tests.integration.version_app:app"}
        return subprocess.run(
            [sys.executable, "-c", "from sagas.cli import main; main()", "versions"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    require("Redis", BROKER)
    with scratch_database("sagas_versions") as url:
        d = Deployment(tmp_path, url)
        upgrade(d.store.engine)
        try:
            yield d
        finally:
            d.store.dispose()
            redis = Redis.from_url(BROKER)
            for key in redis.scan_iter(f"{d.keyprefix}*"):
                redis.delete(key)


def test_sagas_in_flight_finish_on_their_version_while_the_new_one_serves_starts(
    deployment: Deployment,
) -> None:
    d = deployment
    # 1. v1 deployed; two sagas held at their first step.
    with d.worker("v1", "v1", "sagas,vshop"):
        for sid in ("a1", "a2"):
            d.start(sid)
        poll(lambda: d.exists("a1") and d.exists("a2"), 30, "the v1 sagas")
        in_flight = d.versions("v1")
    assert in_flight.returncode == 0, in_flight.stderr
    assert in_flight.stdout.splitlines()[2:3] != [], in_flight.stdout + in_flight.stderr
    assert in_flight.stdout.splitlines()[2].split() == [
        "versioned_order", "v1", "2", "0", "yes,", "new", "starts",
    ]  # fmt: skip

    # 2. version 1 changed in place: refused, with what differs.
    refused = subprocess.run(
        d.argv("changed", "sagas,vshop"), cwd=ROOT, env=d.env("v1-changed"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "worker refused to start: saga 'versioned_order' version 1: 2 in flight" in output
    assert "started on steps ['reserve', 'charge']" in output, output
    assert "defined here with steps ['reserve', 'pay']" in output, output
    changed = d.versions("v1-changed")
    assert changed.returncode == 1 and "differs" in changed.stdout, changed.stdout
    assert "saga 'versioned_order' version 1: 2 in flight" in changed.stderr, changed.stderr

    # 3. v1+v2 for the coordinator; a v1-only worker alone on the steps' queue puts v2 work
    # back. Then, as a rolling deploy does, it is retired (its reserved messages go back to
    # the queue) and a v1+v2 worker takes the steps' queue.
    with ExitStack() as stack:
        stack.enter_context(d.worker("coordinator", "v1+v2", "sagas"))
        with d.worker("old", "v1", "vshop") as old:
            for sid in ("b1", "b2"):
                d.start(sid)
            poll(lambda: "id=b1 step=reserve attempt=1: left for a worker" in old.read_text(),
                 30, "the v1-only worker to put b1's command back")  # fmt: skip
            assert d.steps("b1")[:2] == (2, "pending")
        d.gate.write_text("")
        stack.enter_context(d.worker("new", "v1+v2", "vshop"))

        def finished() -> bool:
            return all(d.steps(s)[1] == "completed" for s in ("a1", "a2", "b1", "b2"))

        poll(finished, 90, "every saga to complete")
        listed = d.versions("v1+v2")

    for sid in ("a1", "a2"):
        assert d.steps(sid) == (
            1,
            "completed",
            [("reserve", "succeeded", "v1.reserve"), ("charge", "succeeded", "v1.charge")],
        )
    for sid in ("b1", "b2"):
        assert d.steps(sid) == (
            2,
            "completed",
            [
                ("reserve", "succeeded", "v2.reserve"),
                ("pay", "succeeded", "v2.pay"),
                ("notify", "succeeded", "v2.notify"),
            ],
        )
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[2:]]
    assert rows == [
        ["versioned_order", "v1", "0", "2", "yes"],
        ["versioned_order", "v2", "0", "2", "yes,", "new", "starts"],
    ], listed.stdout
