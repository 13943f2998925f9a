"""DBOS baseline: a workflow of 4 no-op steps on the same PostgreSQL server.

    bench/.venv/bin/python -m bench.dbos_bench [--n 1000] [--seq-n 1000]
        [--modes direct1,direct2,queue]

Modes (each on a fresh system database; the best burst throughput is DBOS's "best mode"):

- ``direct1``: one process, ``DBOS.start_workflow(wf, i)`` for every workflow (at most
  ``--window`` in flight), then ``get_result`` on each handle. Sequential: ``wf(i)`` called
  directly, one after another (DBOS's lowest-latency path).
- ``direct2``: the same split over 2 processes (one per core), started together.
- ``queue``: 2 worker processes (DBOS launched, listening on a registered queue with
  ``worker_concurrency`` and ``polling_interval_sec``); a client process enqueues with
  ``DBOSClient.enqueue`` (the enqueue overlaps with execution). Sequential: enqueue one, wait
  for its result.

Timings come from dbos.workflow_status (created_at / completed_at, epoch ms written by DBOS)
and dbos.operation_outputs (per step started/completed epoch ms); the submit time of each
workflow is taken in the process that submits it. CPU = utime+stime of the DBOS processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log

QUEUE = "bench"


# -- the workflow (imported by every DBOS process) -------------------------------------------------


def _define() -> Any:
    from dbos import DBOS

    @DBOS.step()
    def step1() -> None:
        return None

    @DBOS.step()
    def step2() -> None:
        return None

    @DBOS.step()
    def step3() -> None:
        return None

    @DBOS.step()
    def step4() -> None:
        return None

    @DBOS.workflow(name="bench_wf")
    def bench_wf(n: int) -> None:
        step1()
        step2()
        step3()
        step4()

    return bench_wf


def _launch(db: str, name: str, executor: str, *, queue: dict[str, Any] | None = None) -> Any:
    from dbos import DBOS

    wf = _define()
    DBOS(
        config={
            "name": "sagas-bench",
            "system_database_url": common.db_url(db),
            "executor_id": executor,
            "log_level": "WARNING",
            "sys_db_pool_size": 20,
        }
    )
    DBOS.launch()
    if queue is not None:
        DBOS.register_queue(QUEUE, **queue)
    return wf


def _wait_file(path: Path, timeout: float = 120, procs: list[Any] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not path.exists():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(
                f"a DBOS process exited with {dead[0].returncode} before {path.name}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {path} within {timeout}s")
        time.sleep(0.005)


def child_direct(args: argparse.Namespace) -> None:
    from dbos import DBOS, SetWorkflowID

    wf = _launch(args.db, "direct", f"direct-{args.offset}")
    Path(args.ready).touch()
    _wait_file(Path(args.go))
    sent: dict[str, float] = {}
    handles: list[Any] = []
    cpu0 = os.times()
    for i in range(args.n):
        if len(handles) >= args.window:
            handles.pop(0).get_result()
        wid = f"burst-{args.offset + i}"
        sent[wid] = time.time()
        with SetWorkflowID(wid):
            handles.append(DBOS.start_workflow(wf, i))
    for h in handles:
        h.get_result()
    cpu1 = os.times()
    seq: dict[str, list[float]] = {}
    for i in range(args.seq_n):
        wid = f"seq-{i}"
        t = time.time()
        with SetWorkflowID(wid):
            wf(i)
        seq[wid] = [t, time.time()]
    cpu2 = os.times()
    print("RESULT " + json.dumps({
        "sent": sent, "seq": seq,
        "cpu_burst": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "cpu_seq": (cpu2.user + cpu2.system) - (cpu1.user + cpu1.system),
    }), flush=True)  # fmt: skip
    DBOS.destroy()


def child_queue_worker(args: argparse.Namespace) -> None:
    from dbos import DBOS

    _launch(
        args.db,
        "queue",
        f"worker-{args.offset}",
        queue={"worker_concurrency": args.window, "polling_interval_sec": args.poll},
    )
    Path(args.ready).touch()
    _wait_file(Path(args.go), timeout=1800)  # here "go" means "stop"
    DBOS.destroy()


def _client_enqueue(db: str, ids: list[str], wait_each: bool) -> dict[str, list[float]]:
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=common.db_url(db))
    out: dict[str, list[float]] = {}
    try:
        for i, wid in enumerate(ids):
            t = time.time()
            h = client.enqueue(
                {"workflow_name": "bench_wf", "queue_name": QUEUE, "workflow_id": wid}, i
            )
            if wait_each:
                h.get_result(polling_interval_sec=0.001)
            out[wid] = [t, time.time()]
    finally:
        client.destroy()
    return out


# -- driver -----------------------------------------------------------------------------------


def _spawn(args: list[str], tmp: Path, tag: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.dbos_bench", *args],
        cwd=common.ROOT,
        env=common.worker_env({}),
        stdout=subprocess.PIPE,
        stderr=open(tmp / f"{tag}.log", "w"),  # noqa: SIM115
        text=True,
        start_new_session=True,
    )


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    import signal

    for p in procs:
        if p.poll() is None:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _stats(db: str, prefix: str, sent: dict[str, float], t0: float) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(common.db_url(db)) as conn:
        rows = conn.execute(
            "SELECT workflow_uuid, status, created_at, completed_at, updated_at"
            " FROM dbos.workflow_status WHERE workflow_uuid LIKE %s",
            (prefix + "-%",),
        ).fetchall()
        steps = conn.execute(
            "SELECT function_id, completed_at_epoch_ms - started_at_epoch_ms"
            " FROM dbos.operation_outputs WHERE workflow_uuid LIKE %s",
            (prefix + "-%",),
        ).fetchall()
    done = [r for r in rows if r[1] == "SUCCESS"]
    fin = {r[0]: (r[3] or r[4]) / 1000.0 for r in done}
    e2e = [fin[w] - max(sent[w], t0) for w in fin if w in sent]
    inner = [(r[3] or r[4]) / 1000.0 - r[2] / 1000.0 for r in done]
    last = max(fin.values())
    per_idx: dict[int, list[float]] = {}
    for fid, d in steps:
        if d is not None:
            per_idx.setdefault(int(fid), []).append(d / 1000.0)
    return {
        "sagas_per_s": round(len(done) / (last - t0), 1),
        "elapsed_s": round(last - t0, 3),
        "completed": len(done),
        "statuses": sorted({r[1] for r in rows}),
        "e2e_ms": common.summary_ms(e2e),
        "created_to_finished_ms": common.summary_ms(inner),
        "step_ms": {str(k): common.summary_ms(v) for k, v in sorted(per_idx.items())},
        "step_ms_all": common.summary_ms([d for v in per_idx.values() for d in v]),
    }


def run_direct(procs_n: int, n: int, seq_n: int, window: int) -> dict[str, Any]:
    import tempfile

    with common.fresh_database(f"dbos_d{procs_n}") as db, tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        go = tmp / "go"
        share = n // procs_n
        procs = []
        try:
            for k in range(procs_n):
                procs.append(_spawn(
                    ["--child", "direct", "--db", db, "--n", str(share), "--offset",
                     str(k * share), "--seq-n", str(seq_n if k == 0 else 0), "--window",
                     str(window), "--ready", str(tmp / f"ready{k}"), "--go", str(go)],
                    tmp, f"direct{k}",
                ))  # fmt: skip
                if k == 0:
                    # the first launch creates the system database schema
                    _wait_file(tmp / "ready0", procs=procs)
            for k in range(procs_n):
                _wait_file(tmp / f"ready{k}", procs=procs)
            load = common.uptime()
            foreign = common.Foreign()
            t0 = time.time()
            go.touch()
            outs = []
            for p in procs:
                line = [ln for ln in p.stdout.read().splitlines() if ln.startswith("RESULT ")]  # type: ignore[union-attr]
                if not line:
                    raise RuntimeError(
                        f"dbos child failed; see logs in {tmp}: "
                        + (tmp / "direct0.log").read_text()[-2000:]
                    )
                outs.append(json.loads(line[-1][7:]))
            foreign_cores = foreign.cores()
        finally:
            _stop(procs)
        sent = {k: v for o in outs for k, v in o["sent"].items()}
        burst = _stats(db, "burst", sent, t0)
        burst["cpu_s_per_saga"] = round(sum(o["cpu_burst"] for o in outs) / n, 5)
        burst["foreign_cpu_cores"] = foreign_cores
        seq_sent = {k: v[0] for o in outs for k, v in o["seq"].items()}
        seq: dict[str, Any] = {}
        if seq_sent:
            seq = _stats(db, "seq", seq_sent, min(seq_sent.values()))
            wall = [v[1] - v[0] for o in outs for v in o["seq"].values()]
            seq["call_ms"] = common.summary_ms(wall)
            seq["cpu_s_per_saga"] = round(outs[0]["cpu_seq"] / seq_n, 5)
        return {"mode": f"direct{procs_n}", "processes": procs_n, "window": window,
                "load_before": load, "load_after": common.uptime(),
                "burst": burst, "sequential": seq}  # fmt: skip


def run_queue(workers: int, n: int, seq_n: int, concurrency: int, poll: float) -> dict[str, Any]:
    import tempfile

    import psutil

    with common.fresh_database("dbos_q") as db, tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        stop = tmp / "stop"
        procs = []
        try:
            for k in range(workers):
                procs.append(_spawn(
                    ["--child", "queue", "--db", db, "--offset", str(k), "--window",
                     str(concurrency), "--poll", str(poll), "--ready", str(tmp / f"ready{k}"),
                     "--go", str(stop)],
                    tmp, f"queue{k}",
                ))  # fmt: skip
                if k == 0:
                    _wait_file(tmp / "ready0", procs=procs)
            for k in range(workers):
                _wait_file(tmp / f"ready{k}", procs=procs)
            time.sleep(1.5)  # the queue threads pick up the registered queue (1 s check)
            ps = [psutil.Process(p.pid) for p in procs]

            def cpu() -> float:
                return sum(sum(p.cpu_times()[:2]) for p in ps)

            load = common.uptime()
            c0 = cpu()
            foreign = common.Foreign()
            t0 = time.time()
            sent = _client_enqueue(db, [f"burst-{i}" for i in range(n)], wait_each=False)
            _wait_done(db, "burst", n)
            c1 = cpu()
            foreign_cores = foreign.cores()
            seq_sent = _client_enqueue(db, [f"seq-{i}" for i in range(seq_n)], wait_each=True)
            c2 = cpu()
        finally:
            stop.touch()
            _stop(procs)
        burst = _stats(db, "burst", {k: v[0] for k, v in sent.items()}, t0)
        burst["cpu_s_per_saga"] = round((c1 - c0) / n, 5)
        burst["foreign_cpu_cores"] = foreign_cores
        seq = _stats(db, "seq", {k: v[0] for k, v in seq_sent.items()}, 0.0)
        seq["sagas_per_s"] = None
        seq["cpu_s_per_saga"] = round((c2 - c1) / max(seq_n, 1), 5)
        return {"mode": "queue", "processes": workers, "worker_concurrency": concurrency,
                "polling_interval_sec": poll, "load_before": load,
                "load_after": common.uptime(), "burst": burst, "sequential": seq}  # fmt: skip


def _wait_done(db: str, prefix: str, n: int, timeout: float = 300) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(common.db_url(db), autocommit=True) as conn:
        while time.monotonic() < deadline:
            done = conn.execute(
                "SELECT count(*) FROM dbos.workflow_status WHERE workflow_uuid LIKE %s"
                " AND status = 'SUCCESS'",
                (prefix + "-%",),
            ).fetchone()[0]
            if done >= n:
                return
            time.sleep(0.1)
    raise RuntimeError(f"dbos queue: only {done}/{n} done")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seq-n", type=int, default=1000)
    ap.add_argument("--modes", default="direct1,direct2,queue")
    ap.add_argument(
        "--window",
        type=int,
        default=32,
        help="direct: workflows in flight per process; queue: worker_concurrency",
    )
    ap.add_argument("--poll", type=float, default=0.05, help="queue polling_interval_sec")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    for a in ("--db", "--ready", "--go"):
        ap.add_argument(a, help=argparse.SUPPRESS)
    ap.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "direct":
        child_direct(args)
        return 0
    if args.child == "queue":
        child_queue_worker(args)
        return 0

    results = {}
    for mode in args.modes.split(","):
        log(f"dbos {mode}, load {common.uptime()}")
        try:
            if mode.startswith("direct"):
                r = run_direct(
                    int(mode[6:] or 1), args.n, args.seq_n if mode == "direct1" else 0, args.window
                )
            else:
                # its sequential latency is bound by result polling: 300 are plenty
                r = run_queue(2, args.n, min(args.seq_n, 300), args.window, args.poll)
        except Exception as exc:  # noqa: BLE001 - report and go on
            log(f"dbos {mode} failed: {exc}")
            r = {"mode": mode, "error": str(exc)[:1000]}
        results[mode] = r
        if "error" not in r:
            log(
                f"  burst {r['burst']['sagas_per_s']}/s"
                + (f", seq p50 {r['sequential']['e2e_ms']['p50']} ms" if r["sequential"] else "")
            )
    ok = {k: v for k, v in results.items() if "error" not in v}
    best_burst = max(ok, key=lambda k: ok[k]["burst"]["sagas_per_s"]) if ok else None
    seqs = {k: v for k, v in ok.items() if v["sequential"]}
    best_seq = min(seqs, key=lambda k: seqs[k]["sequential"]["e2e_ms"]["p50"]) if seqs else None
    out = {"n": args.n, "seq_n": args.seq_n, "machine": common.machine(),
           "versions": common.versions(), "results": results,
           "best_burst_mode": best_burst, "best_seq_mode": best_seq}  # fmt: skip
    common.write_result("dbos", out)
    rows = []
    for k, v in ok.items():
        for m in ("burst", "sequential"):
            if v[m]:
                rows.append({"mode": k, "run": m, "per_s": v[m]["sagas_per_s"],
                             "p50 ms": v[m]["e2e_ms"]["p50"], "p99 ms": v[m]["e2e_ms"]["p99"],
                             "step p50 ms": v[m]["step_ms_all"]["p50"],
                             "cpu ms": v[m]["cpu_s_per_saga"] * 1000, "load": v["load_before"]})  # fmt: skip
    if rows:
        print(common.table(rows, list(rows[0])), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
