"""Celery baselines: a chain of 4 no-op tasks, and the same chain where each task also locks,
updates and inserts one PostgreSQL row (the floor for durable bookkeeping).

Each task appends ``time.time()`` to the list the chain passes along; the last one pushes the
list to a Redis list (one RPUSH per chain) so the driver learns when and how fast it finished.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init

_engine: Any = None
_redis: Any = None


@worker_process_init.connect(weak=False)
def _after_fork(**_: Any) -> None:
    global _engine, _redis
    _engine = None
    _redis = None


def _mark(acc: list[Any]) -> None:
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ["BENCH_MARK_URL"])
    _redis.rpush("bench:done", json.dumps(acc))


@shared_task(name="bench.noop", ignore_result=True)
def noop(acc: list[Any], last: bool = False) -> list[Any]:
    acc.append(time.time())
    if last:
        _mark(acc)
    return acc


def _db() -> Any:
    global _engine
    if _engine is None:
        from sqlalchemy import create_engine

        _engine = create_engine(os.environ["BENCH_PG_URL"], pool_size=2, max_overflow=2)
    return _engine


SETUP_SQL = """
CREATE TABLE IF NOT EXISTS bench_item (id bigint PRIMARY KEY, counter int NOT NULL DEFAULT 0,
                                       updated_at timestamptz);
CREATE TABLE IF NOT EXISTS bench_log (id bigserial PRIMARY KEY, item_id bigint NOT NULL,
                                      step int NOT NULL, at timestamptz NOT NULL);
"""


@shared_task(name="bench.pg_step", ignore_result=True)
def pg_step(acc: list[Any], step: int = 0, last: bool = False) -> list[Any]:
    from sqlalchemy import text

    item = acc[0]
    with _db().begin() as conn:
        conn.execute(
            text("SELECT counter FROM bench_item WHERE id = :id FOR UPDATE"), {"id": item}
        ).first()
        conn.execute(
            text("UPDATE bench_item SET counter = counter + 1, updated_at = now() WHERE id = :id"),
            {"id": item},
        )
        conn.execute(
            text("INSERT INTO bench_log (item_id, step, at) VALUES (:id, :step, now())"),
            {"id": item, "step": step},
        )
    acc.append(time.time())
    if last:
        _mark(acc)
    return acc
