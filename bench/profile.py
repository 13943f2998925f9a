"""Where a step's time goes: py-spy on every worker process during a burst, plus statement and
message counts per saga.

    bench/.venv/bin/python -m bench.profile --config sagas_inline [--broker redis] [--n 2000]

Runs the throughput topology of --config (see bench.throughput) with BENCH_SQL_COUNT on (each
prefork child counts its SQL statements, transactions and task publishes), pre-queues --n starts,
then records every worker (``py-spy record --subprocesses --nonblocking --idle`` off, i.e. on-CPU
samples only) while the burst drains. Writes:

- bench/results/profile_<config>.txt.gz : collapsed stacks (py-spy raw format), gzipped
- bench/profile_<config>.svg          : flamegraph
- bench/results/profile_<config>.json : breakdowns (by library, by engine phase) in percent of
  on-CPU samples, ms of CPU per saga and per step for each, statements/transactions/publishes
  per saga.
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common
from bench.throughput import SAGA_CONFIGS, _hold, _release

PYSPY = str(Path(sys.executable).with_name("py-spy"))

# Leaf-most frame decides the library; checked from the leaf upwards, first match wins.
LIBRARIES = [
    (
        "PostgreSQL round trip (psycopg send/wait: server time + socket)",
        (
            "Connection.wait (psycopg",
            "_execute_send (psycopg",
            "_exec_command (psycopg",
            "_communicate_gen (psycopg",
            "Connection._start_query (psycopg",
        ),
    ),
    ("psycopg CPU (query conversion, results)", ("psycopg/", "psycopg_binary/", "psycopg_c")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("json", ("json/", "kombu/utils/json")),
    ("kombu/amqp/redis (broker I/O)", ("kombu/", "amqp/", "redis/", "vine/")),
    ("bench statement counter (BENCH_SQL_COUNT)", ("bench/sqlcount.py",)),
    ("logging", ("logging/",)),
    ("celery/billiard worker machinery", ("celery/", "billiard/")),
    ("sagas pure core (machine.py)", ("sagas/machine.py",)),
    ("sagas other", ("sagas/",)),
]
# Innermost engine/celery function on the stack decides the phase.
PHASES = [
    ("celery task events (send_event)", ("send_event", "dispatcher.py")),
    ("pool checkout", ("_checkout", "_connection_for_bind")),
    ("stale-command check: read the saga before the step (open_snapshot)", ("open_snapshot",)),
    ("read: saga + steps + clock, 1 query (Store.load)", ("Store.load (sagas/store/",)),
    ("decide() (pure core)", ("decide (sagas/machine.py",)),
    ("write: compare-and-set statement (Store.write)", ("Store.write (sagas/store/",)),
    ("start: peek + insert (Store.peek/create)", ("Store.peek", "Store.create")),
    (
        "clear_outbox UPDATE (one per publish, or batched by the clears thread)",
        ("clear_outbox", "_clear_many", "DeferredClears"),
    ),
    ("publish next command (send_step/_publish)", ("send_step", "_publish (/work/main/sagas")),
    ("build_command (StepCommand)", ("build_command",)),
    ("run_step (context, pydantic payload, user fn)", ("run_step",)),
    ("parse message (StepCommand.model_validate)", ("model_validate",)),
    ("start validation (prepare_start)", ("prepare_start",)),
    ("logging", ("logging/",)),
]


def _frames(stack: str) -> list[str]:
    return stack.split(";")


def analyse(collapsed: Path) -> dict[str, Any]:
    libs: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        frames = _frames(stack)
        lib = "other (interpreter, stdlib)"
        for fr in reversed(frames):
            hit = next((name for name, pats in LIBRARIES if any(p in fr for p in pats)), None)
            if hit:
                lib = hit
                break
        libs[lib] += count
        phase = ""
        for fr in reversed(frames):
            hit = next((name for name, pats in PHASES if any(p in fr for p in pats)), None)
            if hit:
                phase = hit
                break
        if not phase:
            if any("sagas/" in fr for fr in frames):
                phase = "sagas, other (task body, saga_context, definitions)"
            elif any("celery/" in fr or "billiard/" in fr for fr in frames):
                phase = "celery worker machinery outside the task body (receive, ack, trace)"
            else:
                phase = "other"
        phases[phase] += count
    return {
        "samples": total,
        "by_library_pct": {k: round(100 * v / total, 1) for k, v in libs.most_common()},
        "by_phase_pct": {k: round(100 * v / total, 1) for k, v in phases.most_common()},
    }


def main(argv: list[str] | None = None) -> int:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="sagas_inline", choices=sorted(SAGA_CONFIGS))
    ap.add_argument("--broker", choices=sorted(common.BROKERS), default="redis")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument(
        "--loglevel",
        default="WARNING",
        help="the workers' log level (INFO: what a deployment at Celery's usual level logs)",
    )
    ap.add_argument(
        "--analyse-only",
        action="store_true",
        help="rebuild the breakdowns from the saved stacks and JSON",
    )
    args = ap.parse_args(argv)
    if args.analyse_only:
        return reanalyse(args.config)
    if args.broker == "rabbitmq":
        common.ensure_rabbit_vhost()
    cfg = SAGA_CONFIGS[args.config]
    # A run at another log level is kept beside the default one, not over it.
    level = "" if args.loglevel.upper() == "WARNING" else f"_{args.loglevel.lower()}"
    stem = f"profile_{args.config}{level}"
    out_txt = common.RESULTS / f"{stem}.txt"
    out_svg = common.BENCH / f"{stem}.svg"
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    with common.fresh_database("profile") as db, tempfile.TemporaryDirectory() as countdir:
        env_extra = {"CELERY_BROKER_URL": common.BROKERS[args.broker],
                     "SAGAS_DATABASE_URL": common.db_url(db), "BENCH_SQL_COUNT": countdir,
                     "BENCH_MARK_URL": common.REDIS_MARK_URL, **cfg["env"]}  # type: ignore[dict-item]  # fmt: skip
        os.environ.update(env_extra)
        common.migrate(db)

        import sagas
        from bench.app import ALL_QUEUES, app

        common.purge(app, ALL_QUEUES)
        tag = f"p{os.getpid()}"
        specs = cfg["workers"]
        conn = common.PollConn(common.db_url(db))
        load = common.uptime()
        epochs = common.server_epochs()
        with common.running_workers(
            app,
            "bench.app",
            specs,
            common.worker_env(env_extra),
            tag=tag,
            loglevel=args.loglevel.upper(),
        ) as ws:  # type: ignore[arg-type]
            entry_queue = specs[0][1]  # type: ignore[index]
            entry = f"{tag}-{specs[0][0]}@{socket.gethostname()}"  # type: ignore[index]
            for i in range(20):
                sagas.start_saga.delay(cfg["saga"], {"n": i}, saga_id=f"warm-{i}")
            _wait(conn, "warm", 20)
            _hold(app, entry_queue, entry)
            for i in range(args.n):
                sagas.start_saga.delay(cfg["saga"], {"n": i}, saga_id=f"burst-{i}")
            spies = []
            targets = _targets(ws, args.config)
            for name, pid in targets:
                spies.append(subprocess.Popen(
                    [PYSPY, "record", "--pid", str(pid), "--nonblocking", "--rate",
                     str(args.rate), "--format", "raw", "-o", f"{out_txt}.{name}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                ))  # fmt: skip
            # one flamegraph: the first child of the busiest kind of worker
            spies.append(subprocess.Popen(
                [PYSPY, "record", "--pid", str(targets[-1][1]), "--nonblocking", "--rate",
                 str(args.rate), "--format", "flamegraph", "-o", str(out_svg)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            ))  # fmt: skip
            time.sleep(1.0)
            atexit.register(
                lambda: [os.kill(sp.pid, signal.SIGKILL) for sp in spies if sp.poll() is None]
            )
            cpu0 = ws.cpu_seconds()
            wcpu0 = _cpu_by_worker(ws)
            t0 = time.time()
            _release(app, entry_queue, entry)
            _wait(conn, "burst", args.n)
            elapsed = time.time() - t0
            cpu = ws.cpu_seconds() - cpu0
            wcpu = {k: v - wcpu0[k] for k, v in _cpu_by_worker(ws).items()}
            for s in spies:
                os.kill(s.pid, signal.SIGINT)
            for s in spies:
                try:
                    s.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(s.pid, signal.SIGKILL)
        # workers stopped (warm shutdown): each child wrote its counters
        counts: Counter[str] = Counter()
        by_queue: dict[str, Counter[str]] = {}
        traces = {}
        for f in Path(countdir).glob("*.json"):
            data = json.loads(f.read_text())
            traces[f.stem] = data.pop("trace", [])
            queues = data.pop("queues", "")
            counts.update(data)
            by_queue.setdefault(queues, Counter()).update(data)
        (common.RESULTS / f"{stem}_sqltrace.json").write_text(json.dumps(traces, indent=0))
        conn.close()
    # merge the per-worker collapsed stacks; keep one flamegraph per worker (the busiest first)
    merged: Counter[str] = Counter()
    for name, _pid in targets:
        p = Path(f"{out_txt}.{name}")
        if p.exists():
            for line in p.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                if stack:
                    merged[f"{name.split('.')[0]};{stack}"] += int(n)
            p.unlink()
    # collapsed stacks, gzipped (several MB as text)
    with gzip.open(f"{out_txt}.gz", "wt") as fz:
        fz.write("\n".join(f"{k} {v}" for k, v in merged.items()) + "\n")
    n_all = args.n + 20
    cpu_ms = cpu / args.n * 1000
    breakdown = _breakdown(merged, wcpu, args.n, args.config)
    res = {
        "config": args.config, "broker": args.broker, "loglevel": args.loglevel.upper(), "n": args.n, "load_before": load,
        "disturbed": common.disturbed(epochs, common.server_epochs()),
        "load_after": common.uptime(), "elapsed_s": round(elapsed, 2),
        "sagas_per_s_under_profiler": round(args.n / elapsed, 1),
        "cpu_ms_per_saga_under_profiler": round(cpu_ms, 2),
        "cpu_ms_per_saga_by_worker": {k: round(v / args.n * 1000, 2) for k, v in wcpu.items()},
        "breakdown": breakdown,
        "per_saga": {k: round(v / n_all, 2) for k, v in sorted(counts.items())},
        # Per hop: what the workers of one queue did per saga (a service worker of the spread
        # topology runs one step per saga, so this is its cost per step).
        "per_saga_by_queue": {
            q: {k: round(v / n_all, 2) for k, v in sorted(c.items())}
            for q, c in sorted(by_queue.items())
        },
        "profiled": [name for name, _ in targets],
        "flamegraph": f"bench/{out_svg.name} ({targets[-1][0]})",
    }  # fmt: skip
    common.write_result(stem, res)
    for kind, a in breakdown.items():
        for title, key in (("by library", "by_library_pct"), ("by phase", "by_phase_pct")):
            print(
                f"\n{args.config} worker {kind} {title} (% of on-CPU samples; "
                f"{a['cpu_ms_per_unit']} ms CPU per {a['unit']})",
                file=sys.stderr,
            )
            for k, v in a[key].items():
                print(f"  {v:5.1f}%  {k}", file=sys.stderr)
    print("\nper saga:", json.dumps(res["per_saga"], indent=1), file=sys.stderr)
    return 0


def _breakdown(merged: Counter[str], wcpu: dict[str, float], n: int, config: str) -> dict[str, Any]:
    breakdown = {}
    for kind in sorted({k.split(";", 1)[0] for k in merged}):
        part = common.RESULTS / f"profile_{config}.{kind}.tmp"
        part.write_text(
            "\n".join(
                f"{k.split(';', 1)[1]} {v}" for k, v in merged.items() if k.split(";", 1)[0] == kind
            )
        )
        a = analyse(part)
        part.unlink()
        steps = 1 if kind in ("coord", "s2") else 4
        per = wcpu.get(kind, 0.0) / n * 1000 / steps
        a["cpu_ms_per_unit"] = round(per, 3)
        a["unit"] = "start" if kind == "coord" else "step"
        a["cpu_ms_per_unit_by_phase"] = {
            k: round(per * v / 100, 3) for k, v in a["by_phase_pct"].items()
        }
        a["cpu_ms_per_unit_by_library"] = {
            k: round(per * v / 100, 3) for k, v in a["by_library_pct"].items()
        }
        breakdown[kind] = a
    return breakdown


def reanalyse(config: str) -> int:
    res = json.loads((common.RESULTS / f"profile_{config}.json").read_text())
    merged: Counter[str] = Counter()
    with gzip.open(common.RESULTS / f"profile_{config}.txt.gz", "rt") as fz:
        lines = fz.read().splitlines()
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if stack:
            merged[stack] += int(n)
    wcpu = {k: v * res["n"] / 1000 for k, v in res["cpu_ms_per_saga_by_worker"].items()}
    res["breakdown"] = _breakdown(merged, wcpu, res["n"], config)
    (common.RESULTS / f"profile_{config}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res["breakdown"], indent=1))
    return 0


def _targets(ws: common.WorkerSet, config: str) -> list[tuple[str, int]]:
    """Prefork children to record: the coordinator's and one service worker's (the busiest kind
    last). For the spread topology, bench_s2 stands for every service worker (s1..s3 do the same
    work; s4 ends the saga)."""
    import psutil

    want = ["coord", "s2"] if config.startswith("sagas_spread") else ["coord", "inline"]
    out = []
    for w in ws.workers:
        if w.name in want:
            for i, child in enumerate(psutil.Process(w.pid).children()):
                out.append((f"{w.name}.{i}", child.pid))
    out.sort(key=lambda t: want.index(t[0].split(".")[0]))
    return out


def _cpu_by_worker(ws: common.WorkerSet) -> dict[str, float]:
    import psutil

    out = {}
    for w in ws.workers:
        total = 0.0
        try:
            p = psutil.Process(w.pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
        out[w.name] = total
    return out


def _wait(conn: Any, prefix: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = conn.execute(
            "SELECT count(*) FROM saga WHERE id LIKE %s AND finished_at IS NOT NULL",
            (prefix + "-%",),
        ).fetchone()[0]
        if done >= n:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{prefix}: only {done}/{n} finished")


if __name__ == "__main__":
    sys.exit(main())
