"""OpenTelemetry spans across a real multi-worker saga (``tests/integration/telemetry_app.py``).

Three prefork workers on Redis and PostgreSQL — the coordinator (``sagas``), ``tel_a`` and
``tel_b`` — each with the OpenTelemetry SDK writing its finished spans to a file; the web app is
a fresh interpreter with the SDK's ``InMemorySpanExporter`` (``telemetry_client.py``) whose
``POST /orders`` spans start one saga by ``start_saga.delay`` and one by ``traced_order.start``.
Run with and without ``opentelemetry-instrumentation-celery``. For each saga the spans form one
tree: request → ``saga.start`` → a span per step attempt and compensation (linked to the Celery task
span it ran in when the instrumentation made one) and ``saga traced_order`` from start to end,
with the attributes the README names, and exactly one span per attempt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from sagas.store import Store
from sagas.store.migrate import upgrade
from tests.polling import poll
from tests.services import REDIS_URL, require, scratch_database
from tests.wheelhouse import spawn, stop_group

pytestmark = pytest.mark.workers

ROOT = Path(__file__).resolve().parents[2]
BROKER = REDIS_URL
TERMINAL = {"completed", "failed"}


class Cluster:
    def __init__(self, tmp: Path, database_url: str, instrument: bool) -> None:
        self.tmp, self.database_url = tmp, database_url
        self.spans = tmp / "spans"
        self.spans.mkdir()
        self.keyprefix = f"tel-{uuid.uuid4().hex[:8]}:"
        self.instrument = instrument
        self.store = Store(database_url)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            SAGAS_DATABASE_URL=self.database_url,
            CELERY_BROKER_URL=BROKER,
            SAGAS_IT_KEYPREFIX=self.keyprefix,
            SAGAS_IT_PARENT_PID=str(os.getpid()),
            TEL_SPANS_DIR=str(self.spans),
            TEL_INSTRUMENT="1" if self.instrument else "0",
        )
        return env

    def worker(self, stack: ExitStack, name: str, queues: str) -> None:
        log = self.tmp / f"{name}.log"
        argv = [
            sys.executable, "-m", "celery", "-A", "tests.integration.telemetry_app", "worker",
            "-Q", queues, "-P", "prefork", "-c", "1", "-l", "INFO", "-n", f"{name}@%h",
        ]  # fmt: skip
        proc = spawn(argv, ROOT, self.env(), log)
        stack.callback(stop_group, proc)
        poll(lambda: " ready." in log.read_text(), 60, f"worker {name} ({log.read_text()})")

    def client(self, delayed: str, direct: str) -> list[dict[str, Any]]:
        out = self.tmp / "client-spans.json"
        subprocess.run(
            [sys.executable, "-m", "tests.integration.telemetry_client", str(out), delayed, direct],
            cwd=ROOT, env=self.env(), check=True, timeout=60, capture_output=True, text=True,
        )  # fmt: skip
        spans: list[dict[str, Any]] = json.loads(out.read_text())
        return spans

    def state(self, saga_id: str) -> str:
        found = self.store.get(saga_id)
        return found[0].state.value if found else "missing"

    def worker_spans(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for path in sorted(self.spans.glob("spans-*.jsonl"))
            for line in path.read_text().splitlines()
            if line.strip()
        ]


@pytest.fixture(params=["instrumented", "plain"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    require("Redis", BROKER)
    with scratch_database("sagas_tracing") as url:
        c = Cluster(tmp_path, url, instrument=request.param == "instrumented")
        upgrade(c.store.engine)
        try:
            with ExitStack() as stack:
                c.worker(stack, "coord", "sagas")
                c.worker(stack, "tel_a", "tel_a")
                c.worker(stack, "tel_b", "tel_b")
                yield c
        finally:
            c.store.dispose()
            redis = Redis.from_url(BROKER)
            for key in redis.scan_iter(f"{c.keyprefix}*"):
                redis.delete(key)


def _subtree(spans: list[dict[str, Any]], root: dict[str, Any]) -> list[dict[str, Any]]:
    children: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        if s["parent_id"] is not None:
            children.setdefault(s["parent_id"], []).append(s)
    found, todo = [], [root]
    while todo:
        span = todo.pop()
        found.append(span)
        todo.extend(children.get(span["span_id"], []))
    return found


def _ancestors(span: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> list[str]:
    names = []
    while span["parent_id"] in by_id:
        span = by_id[span["parent_id"]]
        names.append(span["name"])
    return names


def test_one_tree_per_saga_from_the_web_request_across_workers(cluster: Cluster) -> None:
    flaky, failing = f"flaky-{uuid.uuid4().hex[:6]}", f"fail-{uuid.uuid4().hex[:6]}"
    client_spans = cluster.client(f"{flaky}:flaky", f"{failing}:fail")
    poll(
        lambda: {cluster.state(flaky), cluster.state(failing)} <= TERMINAL,
        60,
        f"both sagas to finish ({cluster.state(flaky)}, {cluster.state(failing)})",
    )
    assert (cluster.state(flaky), cluster.state(failing)) == ("completed", "failed")

    def settled() -> bool:  # the saga span is written right after the final commit
        names = [s["name"] for s in cluster.worker_spans()]
        return names.count("saga traced_order") == 2

    poll(settled, 15, "both saga spans to be exported")
    spans = client_spans + cluster.worker_spans()
    by_id = {s["span_id"]: s for s in spans}
    assert len(by_id) == len(spans), "a span was exported twice"
    requests = {s["attributes"]["request"]: s for s in client_spans if s["name"] == "POST /orders"}
    assert set(requests) == {"delay", "start"}

    expected = {
        # saga id -> (request, [(span name, step, attempt, outcome)] besides start and saga)
        flaky: (
            "delay",
            "completed",
            [
                ("saga.step traced_order.reserve", "reserve", 1, "ok"),
                ("saga.step traced_order.charge", "charge", 1, "error"),
                ("saga.step traced_order.charge", "charge", 2, "ok"),
                ("saga.step traced_order.ship", "ship", 1, "ok"),
            ],
        ),
        failing: (
            "start",
            "failed",
            [
                ("saga.step traced_order.reserve", "reserve", 1, "ok"),
                ("saga.step traced_order.charge", "charge", 1, "error"),
                ("saga.compensate traced_order.reserve", "reserve", 1, "ok"),
            ],
        ),
    }
    for saga_id, (request, outcome, attempts) in expected.items():
        root = requests[request]
        tree = _subtree(spans, root)
        assert {s["trace_id"] for s in tree} == {root["trace_id"]}
        mine = [s for s in tree if s["attributes"].get("saga.id") == saga_id]
        (start,) = [s for s in mine if s["name"] == "saga.start traced_order"]
        assert "POST /orders" in _ancestors(start, by_id)
        (whole,) = [s for s in mine if s["name"] == "saga traced_order"]
        assert whole["parent_id"] == start["span_id"]
        assert whole["attributes"]["outcome"] == outcome
        assert whole["attributes"]["saga.name"] == "traced_order"
        assert whole["status"] == ("UNSET" if outcome == "completed" else "ERROR")
        steps = sorted(
            (s for s in mine if s["name"].startswith(("saga.step", "saga.compensate"))),
            key=lambda s: s["start"],
        )
        got = [
            (s["name"], s["attributes"]["step"], s["attributes"]["attempt"], s["attributes"]["outcome"])
            for s in steps
        ]  # fmt: skip
        assert got == attempts  # one span per attempt, in the order they ran
        for s in steps:
            # Children of the saga's start span whichever worker ran them; with the Celery
            # instrumentation, linked to the task span they ran in.
            assert s["parent_id"] == start["span_id"]
            assert _ancestors(s, by_id)[-1] == "POST /orders"
            linked = [by_id[i]["name"] for i in s["links"] if i in by_id]
            task = "saga.traced_order." + s["attributes"]["step"]
            if s["name"].startswith("saga.compensate"):
                task += ".compensate"
            assert linked == ([f"run/{task}"] if cluster.instrument else [])
            assert whole["start"] <= s["start"] and s["end"] <= whole["end"] + 50_000_000
        # The steps ran in the two service workers, not in one process.
        assert len({s["pid"] for s in steps}) >= 2
    # The Celery instrumentation's spans are the tasks'; sagas adds no task spans of its own.
    celery_spans = [s for s in spans if s["name"].startswith(("run/", "apply_async/"))]
    assert bool(celery_spans) == cluster.instrument
