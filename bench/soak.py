"""Worker memory over a long run: RSS of every worker process, sampled every 10 s.

    bench/.venv/bin/python -m bench.soak [--seconds 600] [--rate 20] [--broker redis]

Workers: coordinator (-Q sagas), 4 service workers (-Q bench_s1..4) and the inline worker
(-Q bench_inline), all prefork -c 2, plus ``celery beat`` running the sweeper every 5 s. The driver
starts sagas with ``start_saga.delay`` at --rate per second, alternating bench_spread and
bench_inline. RSS (psutil memory_info().rss) of each main process and prefork child is sampled
every --interval seconds. Reported: the first sample after the first minute, the last sample, and
the growth between them, in total and for the process that grew most.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

from bench import common
from bench.common import log

SPECS = [("coord", "sagas"), ("s1", "bench_s1"), ("s2", "bench_s2"), ("s3", "bench_s3"),
         ("s4", "bench_s4"), ("inline", "bench_inline")]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--broker", choices=sorted(common.BROKERS), default="redis")
    ap.add_argument("--label", default="", help="suffix of the results file name")
    args = ap.parse_args(argv)
    if args.broker == "rabbitmq":
        common.ensure_rabbit_vhost()

    with common.fresh_database("soak") as db:
        env_extra = {"CELERY_BROKER_URL": common.BROKERS[args.broker],
                     "SAGAS_DATABASE_URL": common.db_url(db), "SAGAS_SWEEP_INTERVAL": "5",
                     "BENCH_MARK_URL": common.REDIS_MARK_URL}  # fmt: skip
        os.environ.update(env_extra)
        common.migrate(db)
        import sagas
        from bench.app import ALL_QUEUES, app

        common.purge(app, ALL_QUEUES)
        env = common.worker_env(env_extra)
        tag = f"soak{os.getpid()}"
        (common.RESULTS / "logs").mkdir(parents=True, exist_ok=True)
        beat_log = open(common.RESULTS / "logs" / f"{tag}-beat.log", "wb")  # noqa: SIM115
        beat = None
        samples: list[dict[str, Any]] = []
        started = 0
        publish_errors = 0
        died: dict[str, float] = {}
        load0 = common.uptime()
        epochs = common.server_epochs()
        with common.running_workers(app, "bench.app", SPECS, env, tag=tag) as ws:
            try:
                beat = subprocess.Popen(
                    [common.PY, "-m", "celery", "-A", "bench.app", "beat", "--loglevel", "WARNING",
                     "-s", f"/tmp/{tag}-beat-schedule"],
                    cwd=common.ROOT, env=env, stdout=beat_log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                t_start = time.monotonic()
                next_sample = t_start
                tick = 0.1
                per_tick = args.rate * tick
                owed = 0.0
                while (now := time.monotonic()) - t_start < args.seconds:
                    owed += per_tick
                    while owed >= 1:
                        name = "bench_spread" if started % 2 == 0 else "bench_inline"
                        try:
                            sagas.start_saga.delay(name, {"n": started}, saga_id=f"soak-{started}")
                            started += 1
                        except Exception as exc:  # noqa: BLE001 - broker restarted under us
                            publish_errors += 1
                            log(f"soak: start failed ({type(exc).__name__})")
                            time.sleep(0.5)
                        owed -= 1
                    if now >= next_sample:
                        for w in ws.workers:
                            if w.proc.poll() is not None and w.name not in died:
                                died[w.name] = round(now - t_start, 1)
                                log(
                                    f"soak: worker {w.name} exited ({w.proc.returncode}); see {w.logfile}"
                                )
                        rss = ws.rss_bytes()
                        samples.append({"t": round(now - t_start, 1), "started": started,
                                        "total_mib": round(sum(rss.values()) / 2**20, 1),
                                        "procs_mib": {k: round(v / 2**20, 1) for k, v in rss.items()}})  # fmt: skip
                        log(
                            f"soak t={samples[-1]['t']}s started={started} rss={samples[-1]['total_mib']} MiB"
                        )
                        next_sample += args.interval
                    time.sleep(max(0.0, tick - (time.monotonic() - now)))
                # let the tail finish
                conn = common.PollConn(common.db_url(db))
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    done = conn.execute(
                        "SELECT count(*) FROM saga WHERE finished_at IS NOT NULL"
                    ).fetchone()[0]
                    if done >= started:
                        break
                    time.sleep(0.5)
                states = dict(conn.execute(
                    "SELECT state, count(*) FROM saga GROUP BY state").fetchall())  # fmt: skip
                conn.close()
                rss = ws.rss_bytes()
                samples.append({"t": round(time.monotonic() - t_start, 1), "started": started,
                                "total_mib": round(sum(rss.values()) / 2**20, 1),
                                "procs_mib": {k: round(v / 2**20, 1) for k, v in rss.items()}})  # fmt: skip
            finally:
                if beat is not None and beat.poll() is None:
                    os.killpg(beat.pid, 15)
                    try:
                        beat.wait(10)
                    except subprocess.TimeoutExpired:
                        os.killpg(beat.pid, 9)
                beat_log.close()
    base = next((s for s in samples if s["t"] >= 60), samples[0])
    last = samples[-1]
    growth = {
        k: round(last["procs_mib"][k] - v, 1)
        for k, v in base["procs_mib"].items()
        if k in last["procs_mib"]
    }
    worst = max(growth, key=lambda k: growth[k]) if growth else None
    out = {
        "seconds": args.seconds, "rate_per_s": args.rate, "broker": args.broker,
        "sagas_started": started, "states": states, "load_before": load0,
        "publish_errors": publish_errors,
        "workers_died": died,
        "disturbed": common.disturbed(epochs, common.server_epochs()),
        "load_after": common.uptime(),
        "rss_total_mib_at_60s": base["total_mib"], "rss_total_mib_end": last["total_mib"],
        "rss_growth_total_mib": round(last["total_mib"] - base["total_mib"], 1),
        "rss_growth_worst_process": {"process": worst, "mib": growth.get(worst) if worst else None},
        "samples": [{k: s[k] for k in ("t", "started", "total_mib")} for s in samples],
        "per_process_first_last": {k: [base["procs_mib"][k], last["procs_mib"].get(k)]
                                   for k in base["procs_mib"]},
        "machine": common.machine(), "versions": common.versions(),
    }  # fmt: skip
    common.write_result(f"soak{args.label}", out)
    print(common.table(out["samples"], ["t", "started", "total_mib"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
