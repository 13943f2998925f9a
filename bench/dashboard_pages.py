"""Server time of the dashboard's pages (and the JSON API beside them) on PostgreSQL at 10^5
sagas: the same bulk data as ``bench.query_plans``, pages requested in-process through
Starlette's test client (the store's queries, the views, Jinja2 rendering; no network), each
case warmed once then timed ``--runs`` times. Writes bench/results/dashboard_pages.json.

    PYTHONPATH=$PWD .venv/bin/python -m bench.dashboard_pages --n 100000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from bench import common
from bench.query_plans import INSERT_HISTORY, INSERT_SAGAS, INSERT_STEPS
from sagas.store import Store
from sagas.web import create_app
from sagas.web.config import DashboardSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    results: dict[str, dict[str, float | None]] = {}
    with common.fresh_database("dash") as name:
        common.migrate(name)
        engine = create_engine(common.sa_url(name))
        with engine.begin() as conn:
            for lo in range(0, args.n, 50_000):
                params = {"lo": lo, "hi": min(lo + 50_000, args.n)}
                for sql in (INSERT_SAGAS, INSERT_STEPS, INSERT_HISTORY):
                    conn.exec_driver_sql(sql.replace(" % ", " %% "), params)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
            one = conn.execute(text("SELECT id FROM saga WHERE state = 'failed' LIMIT 1")).scalar()
        engine.dispose()
        store = Store(common.sa_url(name))
        cases = {
            "list, first page (50)": "/",
            "list, state=failed": "/?state=failed",
            "list, name + since 1d": "/?name=saga_1&since=1d",
            "list, next page": None,  # filled from the first page's cursor
            "saga page": f"/sagas/{one}",
            "stuck page": "/stuck",
            "API list (50)": "/api/sagas",
            "API one saga": f"/api/sagas/{one}",
        }
        with TestClient(create_app(store, dashboard=DashboardSettings())) as client:
            first = client.get("/").text
            cursor = first.split('id="next-page" href="', 1)[1].split('"', 1)[0]
            cases["list, next page"] = "/" + cursor.replace("&amp;", "&")
            for label, url in cases.items():
                assert url is not None
                assert client.get(url).status_code == 200, (label, url)  # warm
                times = []
                for _ in range(args.runs):
                    t = time.perf_counter()
                    client.get(url)
                    times.append(time.perf_counter() - t)
                results[label] = common.summary_ms(times)
                r = results[label]
                print(f"{label:26} p50 {r['p50']:8.1f} ms  p99 {r['p99']:8.1f} ms")
        store.dispose()
    out = Path(__file__).parent / "results" / "dashboard_pages.json"
    out.write_text(json.dumps({"n": args.n, "load": common.uptime(), "cases": results}, indent=1))


if __name__ == "__main__":
    main()
