"""What one hot statement costs the client: the store's driver path against SQLAlchemy's.

    bench/.venv/bin/python -m bench.statement_cost [--n 3000]

One fresh database with 100 finished sagas (bench.scale's bulk insert). For the load (the
read before every step) and the compare-and-set write, client CPU (process_time) and wall time
per call, over --n calls after 200 warm-up calls, alternating the paths twice:

- ``driver``: ``Store.load`` / ``Store.write`` as the engine runs them (``sagas.store.driver``:
  the compiled statement on the pooled psycopg connection);
- ``sqlalchemy``: the same calls with a no-op ``before_cursor_execute`` listener on the engine,
  which puts the store on SQLAlchemy's execution (``Connection.execute`` in autocommit);
- ``psycopg, held``: the same SQL on one psycopg connection held open (the floor of the
  statement itself: no pool, no row mapping);
- ``SELECT 1, held``: a trivial statement on that connection (the round trip alone).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import event

from bench import common
from bench.scale import bulk_insert


def _time(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    for i in range(200):
        fn(i)
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"cpu_us": round(cpu / n * 1e6, 1), "wall_us": round(wall / n * 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args(argv)

    from sagas.machine import HistoryRecord
    from sagas.state import HistoryKind
    from sagas.store import Store, Transition, statements

    rows: dict[str, list[dict[str, float]]] = {}
    with common.fresh_database("statement_cost") as db:
        common.migrate(db)
        admin = psycopg.connect(common.db_url(db), autocommit=True)
        with admin.transaction():
            bulk_insert(admin, 0, 100)
        store = Store(common.sa_url(db))
        held = psycopg.connect(common.db_url(db), autocommit=True)
        load_sql = statements.LOAD.compile(dialect=store.engine.dialect).string

        def load(i: int) -> Any:
            return store.load(f"fin-{i % 100}")

        def write(i: int) -> Any:
            # A transition that changes nothing but appends one history row (always applies).
            snap = store.load(f"fin-{i % 100}")
            assert snap is not None
            note = HistoryRecord(HistoryKind.REPLY_IGNORED, None, None, {"i": i})
            return store.write(
                Transition(snap.record, snap.status, snap.status, (note,)), now=snap.now()
            )

        def raw_load(i: int) -> Any:
            with held.cursor() as cur:
                cur.execute(load_sql, {"saga_id": f"fin-{i % 100}"})
                return cur.fetchone()

        def trivial(i: int) -> Any:
            with held.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone()

        def noop(*_: Any) -> None:
            pass

        for _ in range(2):
            for label, fn, listened in (
                ("load, driver", load, False),
                ("load, sqlalchemy", load, True),
                ("load + write, driver", write, False),
                ("load + write, sqlalchemy", write, True),
                ("load, psycopg held", raw_load, False),
                ("SELECT 1, psycopg held", trivial, False),
            ):
                if listened:
                    event.listen(store.engine, "before_cursor_execute", noop)
                try:
                    rows.setdefault(label, []).append(_time(fn, args.n))
                finally:
                    if listened:
                        event.remove(store.engine, "before_cursor_execute", noop)
        held.close()
        admin.close()
        store.dispose()
    out = {
        "bench": "statement_cost",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"statement_cost.py --n {args.n}",
        "n": args.n,
        "rows": rows,
        "machine": common.machine(),
        "load": common.uptime(),
    }
    common.write_result("statement_cost", out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
