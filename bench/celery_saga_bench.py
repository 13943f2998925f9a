"""celery-saga baseline: a saga of 4 no-op steps with its Redis state backend.

    bench/.venv/bin/python -m bench.celery_saga_bench --broker redis [--n 1000] [--seq-n 1000]

One worker ``celery -A bench.cs_app worker --pool prefork --concurrency 2 -Q bench_cs``. Sagas are
started with ``Saga.run(queue="bench_cs", n=i)`` (saves the state in Redis, publishes a chain of
6 tasks). Burst: consumer held, N runs published, consumer released (t0). Completion and per step
times come from the saga state celery-saga keeps in Redis (``updated_at`` when status becomes
``completed``; steps' ``started_at``/``completed_at``; ISO strings from the workers' clocks).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import datetime
from typing import Any

from bench import common
from bench.common import log

STATE_URL = f"redis://127.0.0.1:6379/{common.REDIS_DB + 2}"


def _ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def run(broker: str, n: int, seq_n: int) -> dict[str, Any]:
    import redis

    if broker == "rabbitmq":
        common.ensure_rabbit_vhost()
    env_extra = {"CELERY_BROKER_URL": common.BROKERS[broker], "BENCH_CS_STATE_URL": STATE_URL}
    os.environ.update(env_extra)
    from bench.cs_app import QUEUE, app, bench_saga

    r = redis.Redis.from_url(STATE_URL)
    r.flushdb()
    common.purge(app, [QUEUE, "celery"])
    tag = f"cs{os.getpid()}"
    worker = f"{tag}-cs@{socket.gethostname()}"
    load = common.uptime()
    epochs = common.server_epochs()
    with common.running_workers(
        app, "bench.cs_app", [("cs", QUEUE)], common.worker_env(env_extra), tag=tag
    ) as ws:

        def start(i: int) -> tuple[str, float]:
            t = time.time()
            res = bench_saga.run(queue=QUEUE, n=i)
            return res.saga_id, t

        def states(ids: list[str]) -> list[dict[str, Any] | None]:
            out = []
            for k in range(0, len(ids), 500):
                vals = r.mget([f"celery_saga:{i}" for i in ids[k : k + 500]])
                out.extend(json.loads(v) if v else None for v in vals)
            return out

        def wait(ids: list[str], poll: float) -> list[dict[str, Any]]:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = states(ids)
                if all(s and s["status"] in ("completed", "failed", "compensated") for s in st):
                    return st  # type: ignore[return-value]
                time.sleep(poll)
            raise RuntimeError("celery-saga: sagas did not finish within 120 s")

        for i in range(20):  # warm-up
            sid, _ = start(i)
            wait([sid], 0.002)
        # burst
        app.control.cancel_consumer(QUEUE, destination=[worker], reply=True, timeout=5)
        sent = dict(start(i) for i in range(n))
        c0 = ws.cpu_seconds()
        foreign = common.Foreign(ws)
        t0 = time.time()
        app.control.add_consumer(QUEUE, destination=[worker], reply=True, timeout=5)
        st = wait(list(sent), 0.1)
        c1 = ws.cpu_seconds()
        burst = _stats(st, {k: max(v, t0) for k, v in sent.items()}, t0)
        burst["cpu_s_per_saga"] = round((c1 - c0) / n, 5)
        burst["foreign_cpu_cores"] = foreign.cores()
        seq_sent = {}
        seq_st = []
        for i in range(seq_n):
            sid, t = start(i)
            seq_sent[sid] = t
            seq_st.extend(wait([sid], 0.002))
        c2 = ws.cpu_seconds()
        seq = _stats(seq_st, seq_sent, min(seq_sent.values()))
        seq["cpu_s_per_saga"] = round((c2 - c1) / max(seq_n, 1), 5)
    return {"config": "celery_saga", "broker": broker, "state_backend": "redis", "n": n,
            "seq_n": seq_n, "start": "Saga.run(queue=...)", "load_before": load,
            "load_after": common.uptime(), "burst": burst, "sequential": seq,
            "disturbed": common.disturbed(epochs, common.server_epochs())}  # fmt: skip


def _stats(st: list[dict[str, Any]], sent: dict[str, float], t0: float) -> dict[str, Any]:
    fin = {s["saga_id"]: _ts(s["updated_at"]) for s in st}
    e2e = [fin[k] - sent[k] for k in fin]
    per_idx: dict[int, list[float]] = {}
    for s in st:
        for step in s["steps"]:
            if step["started_at"] and step["completed_at"]:
                per_idx.setdefault(step["step_index"], []).append(
                    _ts(step["completed_at"]) - _ts(step["started_at"])
                )
    last = max(fin.values())
    return {
        "sagas_per_s": round(len(fin) / (last - t0), 1),
        "elapsed_s": round(last - t0, 3),
        "statuses": sorted({s["status"] for s in st}),
        "e2e_ms": common.summary_ms(e2e),
        "step_ms": {str(k): common.summary_ms(v) for k, v in sorted(per_idx.items())},
        "step_ms_all": common.summary_ms([d for v in per_idx.values() for d in v]),
        "note": "step_ms = the step task's own run inside the orchestrator task (eager apply)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", choices=sorted(common.BROKERS), default="redis")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seq-n", type=int, default=1000)
    args = ap.parse_args(argv)
    log(f"celery-saga on {args.broker}, load {common.uptime()}")
    try:
        res = run(args.broker, args.n, args.seq_n)
    except Exception as exc:  # noqa: BLE001
        res = {"config": "celery_saga", "broker": args.broker, "error": repr(exc)[:1000]}
        log(f"celery-saga failed: {exc!r}")
    res["versions"] = common.versions()
    common.write_result(f"celery_saga_{args.broker}", res)
    if "error" not in res:
        rows = [{"run": m, "per_s": res[m]["sagas_per_s"], "p50 ms": res[m]["e2e_ms"]["p50"],
                 "p99 ms": res[m]["e2e_ms"]["p99"], "cpu ms": res[m]["cpu_s_per_saga"] * 1000}
                for m in ("burst", "sequential")]  # fmt: skip
        print(common.table(rows, list(rows[0])), file=sys.stderr)
    return 0 if "error" not in res else 1


if __name__ == "__main__":
    sys.exit(main())
