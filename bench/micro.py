"""The engine's own cost per saga, without a broker: CPU, wall time and statements.

    bench/.venv/bin/python -m bench.micro [--n 500]

One process drives what the workers of the spread topology do, in order, against a real
PostgreSQL database of its own: the coordinator's start (insert + publish + outbox clear), then
per step the participant's stale-command check, its transition (lock, decide, save), the publish
of the next command and the outbox clear. Publishing goes to Celery's in-memory transport, so the
figures are the engine's database and Python cost alone, the part the Celery baselines do not pay.
Compare with the floor: one lock/update/insert transaction per step (``--floor``).

``--tracing``: an OpenTelemetry SDK tracer provider is configured (spans go to an exporter that
drops them), so the start, history and saga spans are paid; ``--metrics``: the Prometheus sink
in multiprocess mode (a temporary ``PROMETHEUS_MULTIPROC_DIR``). Without either, telemetry is
off, as in production by default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

from celery import Celery
from sqlalchemy import create_engine, text

from bench import common, sqlcount


def _tracing_on() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)


def _engine_run(url: str, n: int, metrics: bool = False) -> dict[str, Any]:
    from bench import saga_defs
    from sagas import coordinator, starter
    from sagas.install import configure
    from sagas.messages import StepReply
    from sagas.settings import Settings
    from sagas.state import Action

    app = Celery("micro", broker="memory://", set_as_current=False)
    app.conf.task_serializer = "json"
    settings = Settings(database_url=common.sa_url(url), **({"metrics": True} if metrics else {}))
    rt = configure(settings=settings, app=app)
    saga = saga_defs.bench_spread

    def one(i: int) -> None:
        sid = uuid.uuid4().hex
        starter.start(saga.name, {"n": i}, saga_id=sid, rt=rt)
        for step in saga.steps:
            snap = rt.store.load(sid)  # the participant reads the saga before its step
            reply = StepReply(
                saga_id=sid, step=step.name, action=Action.FORWARD, attempt=1, ok=True
            )
            coordinator.handle_reply(reply, rt=rt, snapshot=snap)  # its transition

    sqlcount.disable()
    for i in range(20):  # warm caches and the pool
        one(i)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        one(i)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    sqlcount.COUNTS.clear()
    sqlcount.enable()
    with _counting(app) as counted:
        for i in range(50):
            one(i)
    sqlcount.disable()
    return {
        "cpu_ms_per_saga": round(cpu / n * 1000, 3),
        "wall_ms_per_saga": round(wall / n * 1000, 3),
        "per_saga": {k: v / 50 for k, v in sorted(sqlcount.COUNTS.items())},
        # What else each saga costs besides statements (a worker logs at INFO).
        "per_saga_other": {k: v / 50 for k, v in sorted(counted.items())},
    }


@contextlib.contextmanager
def _counting(app: Any) -> Any:
    """Count log records at INFO and above from sagas and messages published while the block
    runs (a worker logs at INFO)."""
    import logging

    counts: Counter[str] = Counter()

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            counts["log_records"] += 1

    logger = logging.getLogger("sagas")
    handler, level = Count(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    send_task = app.send_task

    def counted_send(*args: Any, **kwargs: Any) -> Any:
        counts["messages_published"] += 1
        return send_task(*args, **kwargs)

    app.send_task = counted_send
    try:
        yield counts
    finally:
        app.send_task = send_task
        logger.removeHandler(handler)
        logger.setLevel(level)


def _floor_run(url: str, n: int) -> dict[str, Any]:
    """Four transactions of SELECT ... FOR UPDATE; UPDATE; INSERT (the chain+PG floor's work)."""
    engine = create_engine(common.sa_url(url))
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS floor_row (id int primary key, v int)"))
        c.execute(text("CREATE TABLE IF NOT EXISTS floor_log (id bigserial primary key, v int)"))
        c.execute(text("INSERT INTO floor_row VALUES (1, 0) ON CONFLICT DO NOTHING"))

    def one() -> None:
        for _ in range(4):
            with engine.begin() as c:
                c.execute(text("SELECT v FROM floor_row WHERE id = 1 FOR UPDATE")).scalar()
                c.execute(text("UPDATE floor_row SET v = v + 1 WHERE id = 1"))
                c.execute(text("INSERT INTO floor_log (v) VALUES (1)"))

    for _ in range(20):
        one()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        one()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "cpu_ms_per_saga": round(cpu / n * 1000, 3),
        "wall_ms_per_saga": round(wall / n * 1000, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--label", default="")
    ap.add_argument("--tracing", action="store_true", help="an SDK tracer provider is configured")
    ap.add_argument("--metrics", action="store_true", help="the Prometheus sink, multiprocess")
    args = ap.parse_args()
    if args.metrics:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="micro-prom-")
    if args.tracing:
        _tracing_on()
    with common.fresh_database("bench_micro") as db:
        common.migrate(db)
        url = db
        result = {
            "bench": "micro" + args.label,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": f"micro.py --n {args.n}"
            + (" --tracing" if args.tracing else "")
            + (" --metrics" if args.metrics else ""),
            "n": args.n,
            "load": common.uptime(),
            "engine": _engine_run(url, args.n, metrics=args.metrics),
            "floor": _floor_run(url, args.n),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
