"""Served metrics and JSON log lines from a real prefork worker (concurrency 2) on Redis and
PostgreSQL (``tests/integration/telemetry_app.py``).

The worker runs with ``SAGAS_METRICS_PORT``, ``PROMETHEUS_MULTIPROC_DIR`` and
``SAGAS_LOG_FORMAT=json``. Eight sagas run (four straight through, two that retry a step once,
two that fail and compensate) and two starts are rejected; then one scrape of the worker's
``/metrics`` shows every child's counts and histograms and the store-wide gauges, with no saga
id in any label, ``saga metrics serve`` shows the same counts from the same directory, and the
worker's log is JSON lines carrying saga id, name, step, attempt and correlation id.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from sagas.store import Store
from sagas.store.migrate import upgrade
from tests.polling import poll
from tests.services import REDIS_URL, require, scratch_database
from tests.wheelhouse import spawn, stop_group
from tests.worker_harness import base_app

pytestmark = pytest.mark.workers

ROOT = Path(__file__).resolve().parents[2]
BROKER = REDIS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the page, by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@dataclass
class Worker:
    tmp: Path
    database_url: str
    keyprefix: str
    port: int
    multiproc: Path
    log: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            SAGAS_DATABASE_URL=self.database_url,
            CELERY_BROKER_URL=BROKER,
            SAGAS_IT_KEYPREFIX=self.keyprefix,
            SAGAS_IT_PARENT_PID=str(os.getpid()),
            SAGAS_METRICS_PORT=str(self.port),
            SAGAS_LOG_FORMAT="json",
            PROMETHEUS_MULTIPROC_DIR=str(self.multiproc),
        )
        return env


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    require("Redis", BROKER)
    with scratch_database("sagas_metrics") as url:
        store = Store(url)
        upgrade(store.engine)
        store.dispose()
        multiproc = tmp_path / "prom"
        multiproc.mkdir()
        w = Worker(tmp_path, url, f"met-{uuid.uuid4().hex[:8]}:", free_port(), multiproc,
                   tmp_path / "worker.log")  # fmt: skip
        argv = [
            sys.executable, "-m", "celery", "-A", "tests.integration.telemetry_app", "worker",
            "-Q", "sagas,tel_a,tel_b", "-P", "prefork", "-c", "2", "-l", "INFO", "-n", "met@%h",
        ]  # fmt: skip
        proc = spawn(argv, ROOT, w.env(), w.log)
        try:
            poll(lambda: " ready." in w.log.read_text(), 60, f"the worker ({w.log.read_text()})")
            yield w
        finally:
            stop_group(proc)
            redis = Redis.from_url(BROKER)
            for key in redis.scan_iter(f"{w.keyprefix}*"):
                redis.delete(key)


def test_a_scrape_of_a_prefork_worker_counts_every_child_and_logs_are_json(worker: Worker) -> None:
    client = base_app("metrics-client", [], "%(message)s", BROKER, worker.keyprefix)
    modes = ["ok"] * 4 + ["flaky"] * 2 + ["fail"] * 2
    ids = [f"{mode}-{i}-{uuid.uuid4().hex[:6]}" for i, mode in enumerate(modes)]
    for sid, mode in zip(ids, modes, strict=True):
        client.send_task(
            "sagas.start_saga",
            args=["traced_order", {"ref": sid, "mode": mode}],
            kwargs={"saga_id": sid, "correlation_id": f"corr-{sid}"},
            queue="sagas",
        )
    client.send_task("sagas.start_saga", args=["traced_order", {"mode": "ok"}], queue="sagas")
    client.send_task("sagas.start_saga", args=[f"no_such_{uuid.uuid4().hex}", {}], queue="sagas")

    def done() -> bool:
        samples = scrape(worker.port)
        finished = value(samples, "sagas_finished_total", saga="traced_order", state="completed")
        failed = value(samples, "sagas_finished_total", saga="traced_order", state="failed")
        rejected = sum(v for (n, _), v in samples.items() if n == "sagas_start_rejected_total")
        return (finished, failed, rejected) == (6, 2, 2)

    poll(done, 60, "eight sagas to finish and two starts to be rejected")
    samples = scrape(worker.port)
    saga = {"saga": "traced_order"}
    assert value(samples, "sagas_started_total", **saga) == 8
    expected_attempts = {
        ("reserve", "succeeded"): 8,
        ("charge", "succeeded"): 6,
        ("charge", "failed"): 4,  # two first attempts that were retried, two permanent
        ("ship", "succeeded"): 6,
    }
    attempts = {
        (dict(labels)["step"], dict(labels)["outcome"]): v
        for (name, labels), v in samples.items()
        if name == "sagas_step_attempts_total"
    }
    assert attempts == expected_attempts
    assert value(samples, "sagas_step_retries_total", step="charge", **saga) == 2
    assert (
        value(samples, "sagas_compensations_total", step="reserve", outcome="compensated", **saga)
        == 2
    )
    assert value(samples, "sagas_saga_duration_seconds_count", outcome="completed", **saga) == 6
    assert value(samples, "sagas_saga_duration_seconds_count", outcome="failed", **saga) == 2
    step_timing = dict(step="charge", action="forward", **saga)
    assert value(samples, "sagas_step_duration_seconds_count", outcome="ok", **step_timing) == 6
    assert value(samples, "sagas_step_duration_seconds_count", outcome="error", **step_timing) == 4
    compensating = dict(step="reserve", action="compensate", outcome="ok", **saga)
    assert value(samples, "sagas_step_duration_seconds_count", **compensating) == 2
    assert value(samples, "sagas_start_rejected_total", reason="PayloadInvalid", **saga) == 1
    assert value(samples, "sagas_start_rejected_total", saga="(unknown)", reason="UnknownSaga") == 1
    # The store-wide gauges on the same page.
    assert value(samples, "sagas_in_store", state="completed", **saga) == 6
    assert value(samples, "sagas_in_store", state="failed", **saga) == 2
    # Both children did work (the page merges their files) and no label carries an id.
    assert len(list(worker.multiproc.glob("counter_*.db"))) >= 2
    labels = {v for (_, lbl) in samples for _, v in lbl}
    assert not any(sid in label for sid in ids for label in labels)

    # `saga metrics serve` shows the same totals from the same directory.
    port = free_port()
    log = worker.tmp / "serve.log"
    serve = spawn(
        [sys.executable, "-c", "from sagas.cli import main; main()", "metrics", "serve",
         "--port", str(port)],
        ROOT, worker.env(), log,
    )  # fmt: skip
    try:
        poll(
            lambda: "serving metrics" in log.read_text(),
            30,
            f"saga metrics serve ({log.read_text()})",
        )
        served = scrape(port)
    finally:
        stop_group(serve)
    for name in ("sagas_started_total", "sagas_step_retries_total"):
        mine = {k: v for k, v in samples.items() if k[0] == name}
        assert mine and mine == {k: v for k, v in served.items() if k[0] == name}
    assert value(served, "sagas_in_store", state="completed", **saga) == 6

    # The worker's log: JSON lines, with the saga fields inside a step attempt.
    lines = [
        json.loads(line) for line in worker.log.read_text().splitlines() if line.startswith("{")
    ]
    assert lines and all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    flaky = ids[4]
    (retried,) = [
        line
        for line in lines
        if line["logger"] == "sagas.participant"
        and line.get("saga_id") == flaky
        and line.get("step") == "charge"
        and line.get("attempt") == 2
    ]
    assert retried["saga"] == "traced_order"
    assert retried["correlation_id"] == f"corr-{flaky}"
    assert retried["message"].startswith("running saga=traced_order")
    failed = [
        line for line in lines if line.get("saga_id") == ids[6] and line["level"] == "WARNING"
    ]
    assert any(
        line.get("step") == "charge" and "card declined" in line["message"] for line in failed
    )
