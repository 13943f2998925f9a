"""Retention at scale: ``saga prune`` over 10^6 finished sagas while sagas in flight move.

    .venv/bin/python -m bench.retention [--finished 1000000] [--batch 500] [--in-flight 1000]

One fresh database. Finished sagas (60 days old, 4 steps and 10 history rows each, the shape
``bench.scale`` inserts) are bulk-inserted; --in-flight sagas are started through the engine
and stay pending (nobody consumes their queue). Then ``sagas.retention.prune`` deletes every
finished saga older than 30 days in batches of --batch, while a second thread keeps writing
transitions to the in-flight sagas (``Store.load`` + ``Store.write``, the engine's own
compare-and-set) and times each one. Reported: the candidate query's plan and time at full size,
prune throughput (sagas/s, and rows/s with steps and history), per-batch time, the cost of a
pass with nothing past the age (the sweeper's steady state), and the in-flight
transition latency before and during the prune (the "without locking active sagas" claim).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import replace
from typing import Any

from bench import common
from bench.common import log
from bench.scale import bulk_insert, counts


def transitions(rt: Any, ids: list[str], stop: threading.Event, out: list[float]) -> None:
    """Touch in-flight sagas one after another (a no-op status change, a real CAS write)."""
    from sagas.store import Transition

    i = 0
    while not stop.is_set():
        saga_id = ids[i % len(ids)]
        i += 1
        t = time.perf_counter()
        snap = rt.store.load(saga_id)
        assert snap is not None
        status = replace(snap.status, failure=None)
        rt.store.write(Transition(snap.record, snap.status, status, ()), now=snap.now())
        out.append(time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--finished", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--in-flight", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=100_000)
    args = ap.parse_args(argv)

    import psycopg

    with common.fresh_database("retention") as db:
        os.environ.update({
            "CELERY_BROKER_URL": common.BROKERS["redis"],
            "SAGAS_DATABASE_URL": common.db_url(db),
        })  # fmt: skip
        common.migrate(db)
        from bench.app import app
        from bench.saga_defs import bench_scale
        from sagas import retention
        from sagas.runtime import get_runtime

        rt = get_runtime()
        common.purge(app, ["bench_scale"])
        conn = psycopg.connect(common.db_url(db), autocommit=True)
        try:
            t = time.perf_counter()
            for lo in range(0, args.finished, args.chunk):
                with conn.transaction():
                    bulk_insert(conn, lo, min(args.finished, lo + args.chunk))
            live = [f"live-{i}" for i in range(args.in_flight)]
            for i, saga_id in enumerate(live):
                bench_scale.start({"n": i}, saga_id=saga_id)
            conn.execute("ANALYZE")
            before_rows = counts(conn)
            log(f"retention: filled {before_rows} in {time.perf_counter() - t:.0f}s")
            cutoff = rt.store.now().isoformat()
            plan = [
                r[0]
                for r in conn.execute(
                    "EXPLAIN ANALYZE SELECT id FROM saga WHERE state IN ('completed', 'failed')"
                    " AND updated_at < now() - interval '30 days' LIMIT %(n)s",
                    {"n": args.batch},
                ).fetchall()
            ]

            # The sweeper's pass when nothing is past the age (all 10^6 are 60 days old): what
            # SAGAS_RETENTION costs every pass in the steady state.
            idle = []
            for _ in range(20):
                t = time.perf_counter()
                nothing = retention.prune(rt.store, 90 * 86400, batch=args.batch, max_batches=1)
                idle.append(time.perf_counter() - t)
                assert nothing.deleted == 0
            idle_plan = [
                r[0]
                for r in conn.execute(
                    "EXPLAIN ANALYZE SELECT id FROM saga WHERE state IN ('completed', 'failed')"
                    " AND updated_at < now() - interval '90 days' LIMIT %(n)s",
                    {"n": args.batch},
                ).fetchall()
            ]

            quiet: list[float] = []
            stop = threading.Event()
            th = threading.Thread(target=transitions, args=(rt, live, stop, quiet))
            th.start()
            time.sleep(5)
            stop.set()
            th.join()

            during: list[float] = []
            stop = threading.Event()
            th = threading.Thread(target=transitions, args=(rt, live, stop, during))
            th.start()
            batches: list[float] = []
            last = [time.perf_counter()]

            def tick(_n: int) -> None:
                now = time.perf_counter()
                batches.append(now - last[0])
                last[0] = now

            t = time.perf_counter()
            done = retention.prune(rt.store, 30 * 86400, batch=args.batch, progress=tick)
            prune_s = time.perf_counter() - t
            stop.set()
            th.join()
            after_rows = counts(conn)
        finally:
            conn.close()
            common.purge(app, ["bench_scale"])
            rt.store.dispose()
    deleted_rows = sum(before_rows.values()) - sum(after_rows.values())
    out = {
        "finished": args.finished,
        "in_flight": args.in_flight,
        "batch": args.batch,
        "cutoff": cutoff,
        "rows_before": before_rows,
        "rows_after": after_rows,
        "deleted": done.deleted,
        "batches": done.batches,
        "prune_s": round(prune_s, 1),
        "sagas_per_s": round(done.deleted / prune_s),
        "rows_per_s": round(deleted_rows / prune_s),
        "batch_ms": {
            "median": round(statistics.median(batches) * 1000, 1),
            "max": round(max(batches) * 1000, 1),
        },
        "candidate_plan": plan,
        "idle_pass_ms": common.summary_ms(idle),
        "idle_plan": idle_plan,
        "in_flight_write_ms_quiet": common.summary_ms(quiet),
        "in_flight_write_ms_during_prune": common.summary_ms(during),
        "in_flight_writes_during_prune": len(during),
        "load": common.uptime(),
    }
    common.write_result("retention", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
