"""EXPLAIN (ANALYZE, BUFFERS) of the operator's reads (``sagas.store.search``) on PostgreSQL at
10^5 sagas: which index serves each filter, and how long one page takes.

One fresh database migrated to head; sagas bulk-inserted with generate_series in the shapes the
engine writes (4 steps each, history rows, a mix of states: mostly finished, some running,
waiting for a signal, retrying, parked, compensating, a few with unsent outboxes). Prints each
plan's top node and the index names it uses, and writes bench/results/query_plans.json.

    PYTHONPATH=$PWD .venv/bin/python -m bench.query_plans --n 100000
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import common
from sagas.filters import Cursor, SagaFilter
from sagas.store import search

# Share of sagas per shape (by g % 100): completed 80, failed 8, pending 7 (running 3, waiting
# 2, retrying 2), compensating 3 (1 of them parked), parked forward 1, started 1.


INSERT_SAGAS = """
INSERT INTO saga (id, name, version, state, payload, payload_hash, correlation_id, failure,
                  created_at, updated_at, finished_at, deadline_at, wake_at, outbox, outbox_at,
                  parked, lock_version, kind)
SELECT 'q-' || g, 'saga_' || (g % 5), 1 + (g % 7 = 0)::int,
CASE WHEN g % 100 < 80 THEN 'completed' WHEN g % 100 < 88 THEN 'failed'
     WHEN g % 100 < 95 THEN 'pending' WHEN g % 100 < 98 THEN 'compensating'
     WHEN g % 100 < 99 THEN 'pending' ELSE 'started' END,
       jsonb_build_object('n', g), md5(g::text) || md5(g::text), 'c-' || g,
       CASE WHEN g % 100 BETWEEN 80 AND 87 THEN jsonb_build_object(
            'type', (ARRAY['CardDeclined','OutOfStock','Timeout'])[1 + g % 3],
            'message', 'x', 'retryable', false) ELSE NULL END,
       ts, ts + interval '1 s',
       CASE WHEN g % 100 < 88 THEN ts + interval '1 s' END, NULL,
       CASE WHEN g % 100 BETWEEN 88 AND 94 THEN now() + interval '1 hour'
            WHEN g % 100 BETWEEN 95 AND 96 THEN now() + interval '10 min' END,
       CASE WHEN g % 1000 = 999 THEN '[{"x": 1}]'::jsonb END,
       CASE WHEN g % 1000 = 999 THEN ts END,
       g % 100 IN (97, 98), 5, 'orchestrated'
FROM (SELECT g, now() - interval '30 days' + g * interval '20 s' AS ts
      FROM generate_series(%(lo)s, %(hi)s - 1) g) s
"""

# Step 2 (idx 1) carries the saga's shape: failed with an error, running, waiting, retrying...
INSERT_STEPS = """
INSERT INTO saga_step (saga_id, idx, name, state, attempt, compensation_attempt, result, error,
                       started_at, finished_at, deadline_at, next_attempt_at)
SELECT 'q-' || g, i, (ARRAY['reserve','approval','charge','ship'])[i + 1],
       CASE WHEN i <> 1 OR g % 100 < 80 THEN 'succeeded'
            WHEN g % 100 < 88 THEN 'failed' WHEN g % 100 < 91 THEN 'running'
            WHEN g % 100 < 93 THEN 'running' WHEN g % 100 < 95 THEN 'pending'
            WHEN g % 100 < 97 THEN 'compensating' WHEN g % 100 < 98 THEN 'compensation_failed'
            WHEN g % 100 < 99 THEN 'parked' ELSE 'pending' END,
       CASE WHEN i = 1 AND g % 100 BETWEEN 93 AND 94 THEN 2 ELSE 1 END, 0, NULL,
       CASE WHEN i = 1 AND g % 100 BETWEEN 80 AND 87 THEN jsonb_build_object(
            'type', (ARRAY['CardDeclined','OutOfStock','Timeout'])[1 + g % 3],
            'message', 'x', 'retryable', false)
            WHEN i = 1 AND g % 100 BETWEEN 93 AND 94 THEN
            '{"type": "CarrierUnavailable", "message": "x", "retryable": true}'::jsonb END,
       ts, ts + interval '1 s',
       CASE WHEN i = 1 AND g % 100 BETWEEN 88 AND 92 THEN now() + interval '1 hour' END, NULL
FROM (SELECT g, now() - interval '30 days' + g * interval '20 s' AS ts
      FROM generate_series(%(lo)s, %(hi)s - 1) g) s
CROSS JOIN generate_series(0, 3) i
"""

# 12 history rows per saga; the waiting ones (g % 100 in 91, 92) began a wait on step 2.
INSERT_HISTORY = """
INSERT INTO saga_event (saga_id, at, kind, step, attempt, detail, message)
SELECT 'q-' || g, ts, CASE WHEN e = 4 AND g % 100 IN (91, 92) THEN 'waiting_for_signal'
                           WHEN e % 2 = 0 THEN 'step_dispatched' ELSE 'step_succeeded' END,
       (ARRAY['reserve','approval','charge','ship'])[1 + (e / 3) % 4], 1, NULL, NULL
FROM (SELECT g, now() - interval '30 days' + g * interval '20 s' AS ts
      FROM generate_series(%(lo)s, %(hi)s - 1) g) s
CROSS JOIN generate_series(0, 11) e
"""

CASES: list[tuple[str, dict[str, Any]]] = [
    ("newest page, no filter", {}),
    ("state=failed", {"state": "failed"}),
    ("state=pending,compensating", {"state": "pending,compensating"}),
    ("name", {"name": "saga_3"}),
    ("name + version", {"name": "saga_3", "version": 2}),
    ("correlation id", {"correlation_id": "c-4242"}),
    ("error type", {"error_type": "OutOfStock"}),
    ("error type, rare (retrying)", {"error_type": "CarrierUnavailable"}),
    ("step (where it is)", {"step": "approval", "state": "pending"}),
    ("step + step_state", {"step": "approval", "step_state": "compensation_failed"}),
    ("any step in a state", {"step_state": "compensation_failed"}),
    ("waiting for any signal", {"waiting": True}),
    ("waiting for signal approval", {"signal": "approval"}),
    ("parked", {"parked": True}),
    ("created since 1d", {"since": timedelta(days=1)}),
    ("created in a window", {"since": "2h", "until": "1h"}),
    ("updated since 1d, failed", {"updated_since": timedelta(days=1), "state": "failed"}),
]


def explain(conn: Any, stmt: Any) -> tuple[str, float, list[str]]:
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    # The store's own statement, compiled as it runs, with its bound values (bench-only text).
    sql = "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled)
    rows = conn.exec_driver_sql(sql, compiled.params).all()
    lines = [r[0] for r in rows]
    total = next(
        float(m.group(1)) for ln in lines if (m := re.search(r"Execution Time: ([\d.]+)", ln))
    )
    scans = r"(?:Index Only Scan|Index Scan|Bitmap Index Scan|Seq Scan)(?: Backward)? (?:using|on) (\w+)"
    indexes = sorted(
        {
            m.group(0).split()[-1] + ("" if "Seq" not in m.group(0) else " (seq)")
            for ln in lines
            for m in re.finditer(scans, ln)
        }
    )
    return "\n".join(lines), total, indexes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--label", default="")
    parser.add_argument("--jit-off", action="store_true", help="SET jit = off on the session")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with common.fresh_database("query") as name:
        common.migrate(name)
        engine = create_engine(common.sa_url(name))
        t = time.perf_counter()
        with engine.begin() as conn:
            for lo in range(0, args.n, 50_000):
                params = {"lo": lo, "hi": min(lo + 50_000, args.n)}
                for sql in (INSERT_SAGAS, INSERT_STEPS, INSERT_HISTORY):
                    conn.exec_driver_sql(sql.replace(" % ", " %% "), params)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        common.log(f"query_plans: {args.n} sagas inserted in {time.perf_counter() - t:.1f}s")
        with engine.connect() as conn:
            if args.jit_off:
                conn.exec_driver_sql("SET jit = off")
            deep = conn.execute(
                text(
                    "SELECT created_at, id FROM saga ORDER BY created_at DESC, id DESC OFFSET 50000 LIMIT 1"
                )
            ).one()
            cases = [
                *[
                    (label, search.list_query(SagaFilter.parse(f), None, limit=50, after=None))
                    for label, f in CASES
                ],
                (
                    "page 1000 deep (keyset)",
                    search.list_query(SagaFilter(), None, limit=50, after=Cursor(deep[0], deep[1])),
                ),
                ("counts per state, store-wide", search.counts_query(SagaFilter(), None)),
                ("counts per state, name", search.counts_query(SagaFilter(name="saga_1"), None)),
                ("stuck list (every class)", search.stuck_query(None, 300, classes=(), limit=100)),
            ]
            for label, stmt in cases:
                explain(conn, stmt)  # warm
                plan, ms, indexes = explain(conn, stmt)
                results.append({"case": label, "ms": ms, "indexes": indexes, "plan": plan})
                print(f"{label:34} {ms:8.2f} ms  {', '.join(indexes)}")
        engine.dispose()
    out = Path(__file__).parent / "results" / f"query_plans{args.label}.json"
    out.write_text(json.dumps({"n": args.n, "load": common.uptime(), "cases": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
