"""Where one PostgreSQL stops: the engine's own statements per step transition under pgbench.

    PYTHONPATH=$PWD .venv/bin/python -m bench.pg_limit [--sagas 10000] [--clients 2,4,8,16]
        [--seconds 20]

The Python client would be the limit long before the server is, so the load is driven by
``/usr/bin/pgbench`` (C, libpq), with script files made of the statements the engine runs:

1. A fresh database (migrated), K in-flight ``bench_spread`` sagas started through the engine
   (``sagas.starter.start`` with Celery's in-memory transport: each is inserted, its first
   command published to memory, its outbox cleared, exactly as in production).
2. One more saga is started and taken through two step transitions
   (``coordinator.handle_reply``) while a SQLAlchemy ``before_cursor_execute`` hook records the
   statement text and bound parameters the engine sends. Those texts (the same as
   ``tests/store/golden/*.sql``; which file each matches is recorded) become the scripts:
   - ``transition``: LOAD (``\\gset`` keeps ``lock_version`` and ``db_now``), the
     compare-and-set SAVE with an outbox on ``lock_version = <loaded>`` setting ``<loaded> + 1``,
     CLEAR_OUTBOX keyed on the outbox's write time: one spread step's three statements.
   - ``start``: PEEK, INSERT_SAGA, CLEAR_OUTBOX for a new saga id: the start's three.
3. Each script runs ``pgbench -M prepared -c N -j 2 -T S`` per client count. ``-M prepared``
   because psycopg 3 prepares a statement server-side from its 5th execution (the engine keeps
   the default ``prepare_threshold``); parameters go as separate values (``$n``), as psycopg
   sends them, not spliced into the text.

How the captured parameters are templated (everything else is the captured value, sent as a
``-D`` variable, so the server parses the same JSON for steps, history and outbox every time):
- saga id: ``1000000000000000000 + random(1, K)`` (19-digit decimal strings; the engine's
  default ids are 32 hex characters); a start uses a random id above 2e18 (collisions among
  the ~10^5 started in a run are ~10^-8 likely);
- ``s_expected`` / ``s_lock_version``: the loaded ``lock_version`` and that + 1, so the
  compare-and-set matches unless another client wrote the same saga since its load (the
  engine's conflict, counted: the sum of ``lock_version`` over the K sagas before and after);
- every timestamp parameter: the ``db_now`` the LOAD (or PEEK) just returned, so each write
  stores a new value as the engine's does (index entries are not all duplicates); the
  timestamps inside the steps JSON stay the captured ones;
- parameters the engine sent as None: a literal ``NULL`` in the script (pgbench variables
  cannot be NULL).

Server CPU: utime + stime from ``/proc/<pid>/stat`` of this run's PostgreSQL backends
(``pg_stat_activity``: our database, application ``pgbench``) and of every ``postgres``
process (other people's backends on this shared server included), sampled from 2 s after
pgbench starts to 2 s before it ends; pgbench's own CPU from ``getrusage(RUSAGE_CHILDREN)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log

PGBENCH = "/usr/bin/pgbench"
GOLDEN = common.ROOT / "tests" / "store" / "golden"
ID_BASE = 1_000_000_000_000_000_000  # in-flight saga i has id str(ID_BASE + i)
START_BASE = 2_000_000_000_000_000_000  # started ids: START_BASE + random(0, START_SPAN)
START_SPAN = 999_999_999_999_999_999
CLK_TCK = os.sysconf("SC_CLK_TCK")
_PARAM = re.compile(r"%\((\w+)\)s")
_WS = re.compile(r"\s+")
# Parameters that carry the saga id in each statement the engine sends.
ID_PARAMS = {"saga_id", "s_key", "s_id", "t_saga", "e_saga"}


@dataclass
class Captured:
    sql: str
    params: dict[str, Any]


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(f"not JSON: {type(v).__name__}")


def _text(v: Any) -> str:
    """A bound value as the text pgbench sends for it (the server casts it as psycopg's would)."""
    from psycopg.types.json import Json, Jsonb

    if isinstance(v, Json | Jsonb):
        return json.dumps(v.obj, default=_json_default)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, dict | list):
        return json.dumps(v, default=_json_default)
    return str(v)


def capture(db: str) -> tuple[list[Captured], list[Captured]]:
    """Start one saga and run two of its step transitions, recording the
    statements. Returns (start: peek, insert, clear; step 2's transition: load, save, clear)."""
    from celery import Celery
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from bench import saga_defs
    from sagas import coordinator, starter
    from sagas.install import configure
    from sagas.messages import StepReply
    from sagas.settings import Settings
    from sagas.state import Action

    seen: list[Captured] = []

    def hook(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append(Captured(statement, dict(params or {})))

    app = Celery("pg_limit", broker="memory://", set_as_current=False)
    app.conf.task_serializer = "json"
    rt = configure(settings=Settings(database_url=common.sa_url(db)), app=app)
    saga = saga_defs.bench_spread
    sid = str(ID_BASE)  # id 0: not among the K the scripts pick
    event.listen(Engine, "before_cursor_execute", hook)
    try:
        starter.start(saga.name, {"n": 0}, saga_id=sid, rt=rt)
        start = list(seen)
        # Step 2's transition, not step 1's: mid-saga, with one step already succeeded in
        # the steps JSON (the first transition of a saga is no more typical than the last).
        for step in saga.steps[:2]:
            seen.clear()
            snap = rt.store.load(sid)
            reply = StepReply(
                saga_id=sid, step=step.name, action=Action.FORWARD, attempt=1, ok=True
            )
            coordinator.handle_reply(reply, rt=rt, snapshot=snap)
        step = list(seen)
    finally:
        event.remove(Engine, "before_cursor_execute", hook)
        rt.store.dispose()
    for got, shape in ((start, ("SELECT", "WITH", "UPDATE")), (step, ("SELECT", "WITH", "UPDATE"))):
        if tuple(c.sql.split(None, 1)[0] for c in got) != shape:
            raise RuntimeError(f"unexpected statements: {[c.sql[:60] for c in got]}")
    return start, step


def fill(db: str, k: int) -> float:
    """K in-flight bench_spread sagas through the engine's start; returns seconds taken."""
    from celery import Celery

    from bench import saga_defs
    from sagas import starter
    from sagas.install import configure
    from sagas.settings import Settings

    app = Celery("pg_limit_fill", broker="memory://", set_as_current=False)
    app.conf.task_serializer = "json"
    rt = configure(settings=Settings(database_url=common.sa_url(db)), app=app)
    t = time.perf_counter()
    try:
        for i in range(1, k + 1):
            starter.start(saga_defs.bench_spread.name, {"n": i}, saga_id=str(ID_BASE + i), rt=rt)
    finally:
        rt.store.dispose()
    return time.perf_counter() - t


def golden_name(sql: str) -> str | None:
    """Which golden file renders the same statement (whitespace aside: the golden files are
    pretty-printed), if any."""
    flat = _WS.sub("", sql)
    for path in sorted(GOLDEN.glob("*.sql")):
        body = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("--"))
        if _WS.sub("", body) == flat:
            return path.name
    return None


def templated(c: Captured, role: str, special: dict[str, str], defines: dict[str, str]) -> str:
    """The statement with each %(name)s replaced by a pgbench variable or NULL."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        value = c.params[name]
        if name in ID_PARAMS:
            return ":sid"
        if name in special:
            return special[name]
        if value is None:
            return "NULL"
        if isinstance(value, datetime):
            return ":p_db_now"
        var = f"{role}_{name}"
        defines[var] = _text(value)
        return f":{var}"

    return _PARAM.sub(sub, c.sql)


def scripts(
    start: list[Captured], step: list[Captured], k: int
) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    """(script texts by name, -D variables, golden file of each captured statement)."""
    defines: dict[str, str] = {}
    load, save, clear = step
    peek, insert, sclear = start
    cas = {"s_expected": ":p_lock_version", "s_lock_version": ":next_version"}
    transition = "\n".join([
        f"\\set sid {ID_BASE} + random(1, {k})",
        templated(load, "l", {}, defines),
        "\\gset p_",
        "\\set next_version :p_lock_version + 1",
        templated(save, "w", cas, defines) + ";",
        templated(clear, "c", {}, defines) + ";",
        "",
    ])  # fmt: skip
    begin = "\n".join([
        f"\\set sid {START_BASE} + random(0, {START_SPAN})",
        templated(peek, "p", {}, defines),
        "\\gset p_",
        templated(insert, "i", {}, defines) + ";",
        templated(sclear, "c", {}, defines) + ";",
        "",
    ])  # fmt: skip
    golden = {
        role: golden_name(c.sql)
        for role, c in (("load", load), ("save", save), ("clear", clear), ("peek", peek),
                        ("insert", insert), ("start_clear", sclear))
    }  # fmt: skip
    return {"transition": transition, "start": begin}, defines, golden


# -- CPU sampling ------------------------------------------------------------------------------


def _ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "postgres":
                    pids.append(int(entry))
    return pids


def _machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


class CpuSample:
    """CPU of our backends, of all postgres processes and of the machine over a window."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.result: dict[str, Any] = {}

    def _ours(self) -> list[int]:
        with common._admin() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                (self.db, "pgbench"),
            ).fetchall()
        return [r[0] for r in rows]

    def run(self, delay: float, window: float) -> None:
        time.sleep(delay)
        ours, every = self._ours(), _postgres_pids()
        t0 = time.monotonic()
        a0 = {p: _ticks(p) for p in ours}
        e0 = {p: _ticks(p) for p in every}
        m0 = _machine_busy()
        time.sleep(window)
        a1 = {p: _ticks(p) for p in ours}
        e1 = {p: _ticks(p) for p in every}
        m1 = _machine_busy()
        dt = time.monotonic() - t0

        def cores(before: dict[int, int | None], after: dict[int, int | None]) -> float:
            used = sum(
                (after[p] or 0) - (b or 0) for p, b in before.items() if b and after.get(p)
            )  # a process gone meanwhile is left out
            return round(used / CLK_TCK / dt, 3)

        self.result = {
            "window_s": round(dt, 1),
            "our_backends": len(ours),
            "our_backends_cores": cores(a0, a1),
            "all_postgres_cores": cores(e0, e1),
            "machine_busy_cores": round(
                (m1[0] - m0[0]) / max(m1[1] - m0[1], 1) * (os.cpu_count() or 1), 3
            ),
        }


# -- pgbench -----------------------------------------------------------------------------------


def parse(out: str) -> dict[str, Any]:
    def num(pattern: str) -> float | None:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None

    per_statement = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("statement latencies"):
            for s in lines[i + 1 :]:
                m = re.match(r"^\s+([\d.]+)\s+(\d+)\s+(.*)$", s)
                if m:
                    per_statement.append({"ms": float(m.group(1)), "failures": int(m.group(2)),
                                          "statement": m.group(3)[:70]})  # fmt: skip
            break
    return {
        "tps": num(r"tps = ([\d.]+) \(without initial connection time\)"),
        "latency_avg_ms": num(r"latency average = ([\d.]+) ms"),
        "latency_stddev_ms": num(r"latency stddev = ([\d.]+) ms"),
        "transactions": num(r"number of transactions actually processed: (\d+)"),
        "failed": num(r"number of failed transactions: (\d+)"),
        "per_statement_ms": per_statement,
    }


def lock_version_sum(db: str) -> int:
    import psycopg

    with psycopg.connect(common.db_url(db), autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(lock_version), 0) FROM saga WHERE id::numeric BETWEEN %s AND %s",
            (ID_BASE + 1, START_BASE - 1),
        ).fetchone()
    return int(row[0]) if row else 0


def command(
    script: Path, clients: int, seconds: int, db: str, defines: dict[str, str]
) -> list[str]:
    cmd = [PGBENCH, "-h", common.PG_HOST, "-U", "postgres", "-n", "-M", "prepared", "-r",
           "-P", "5", "-c", str(clients), "-j", "2", "-T", str(seconds), "-f", str(script)]  # fmt: skip
    for k, v in sorted(defines.items()):
        cmd += ["-D", f"{k}={v}"]
    return [*cmd, db]


def shown(cmd: list[str]) -> str:
    """The command line for the record, -D values elided (they are in the JSON's defines)."""
    out, skip = [], False
    for part in cmd:
        if skip:
            out.append(part.split("=", 1)[0] + "=…")
            skip = False
        elif part == "-D":
            out.append(part)
            skip = True
        else:
            out.append(part)
    return " ".join(out)


def run_pgbench(cmd: list[str], db: str, seconds: int) -> dict[str, Any]:
    sampler = CpuSample(db)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = common.uptime()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        thread = threading.Thread(target=sampler.run, args=(2.0, max(seconds - 4.0, 1.0)))
        thread.start()
        out, _ = proc.communicate(timeout=seconds + 60)
        thread.join()
    finally:
        if proc.poll() is None:  # our pgbench only, by its PID
            proc.kill()
            proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench exited {proc.returncode}:\n{out[-3000:]}")
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu = sampler.result
    if cpu:
        # What neither PostgreSQL nor pgbench used: other people's work on this shared machine.
        cpu["others_cores"] = round(
            cpu["machine_busy_cores"] - cpu["all_postgres_cores"] - client_cpu / seconds, 3
        )
    return {
        "load_before": load,
        "load_after": common.uptime(),
        **parse(out),
        "cpu": cpu,
        "pgbench_cores": round(client_cpu / seconds, 3),
        "progress": [ln for ln in out.splitlines() if ln.startswith("progress:")],
    }


def server_settings(db: str) -> dict[str, str]:
    import psycopg

    names = ["synchronous_commit", "fsync", "wal_sync_method", "shared_buffers",
             "max_connections", "full_page_writes", "max_wal_size", "server_version"]  # fmt: skip
    with psycopg.connect(common.db_url(db), autocommit=True) as conn:
        return {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}  # noqa: S608 (constant names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sagas", type=int, default=10_000, help="in-flight sagas (K)")
    ap.add_argument("--clients", default="2,4,8,16")
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]

    rows: list[dict[str, Any]] = []
    with common.fresh_database("pglimit") as db, tempfile.TemporaryDirectory() as tmp:
        common.migrate(db)
        start, step = capture(db)
        log(f"pg_limit: filling {args.sagas} in-flight sagas, load {common.uptime()}")
        fill_s = fill(db, args.sagas)
        import psycopg
        from psycopg import sql

        with psycopg.connect(common.db_url(db), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        texts, defines, golden = scripts(start, step, args.sagas)
        paths = {}
        for name, body in texts.items():
            paths[name] = Path(tmp) / f"{name}.sql"
            paths[name].write_text(body)
        settings = server_settings(db)
        for script in ("transition", "start"):
            for n in clients:
                cmd = command(paths[script], n, args.seconds, db, defines)
                v0 = lock_version_sum(db) if script == "transition" else 0
                r = run_pgbench(cmd, db, args.seconds)
                if script == "transition":
                    # Writes whose compare-and-set matched: each bumps one lock_version by 1.
                    r["cas_writes_applied"] = lock_version_sum(db) - v0
                rows.append({"script": script, "clients": n, "command": shown(cmd), **r})
                log(f"pg_limit: {script} c={n}: {r['tps']} tps, {r['latency_avg_ms']} ms, "
                    f"cpu {r['cpu']}, load {r['load_before']}")  # fmt: skip
        sizes = {}
        with psycopg.connect(common.db_url(db), autocommit=True) as conn:
            for t in ("saga", "saga_step", "saga_event"):
                query = sql.SQL(
                    "SELECT count(*), pg_size_pretty(pg_total_relation_size({name})) FROM {table}"
                ).format(name=sql.Literal(t), table=sql.Identifier(t))
                sizes[t] = conn.execute(query).fetchone()
    out = {
        "sagas_in_flight": args.sagas,
        "fill_s": round(fill_s, 1),
        "fill": "sagas.starter.start(bench_spread, ...) per saga, Celery memory:// transport",
        "seconds": args.seconds,
        "server_settings": settings,
        "scripts": texts,
        "defines": defines,
        "golden_match": golden,
        "rows": rows,
        "tables_at_end": {t: {"rows": c, "size": s} for t, (c, s) in sizes.items()},
        "machine": common.machine(),
        "versions": common.versions(),
    }
    common.write_result("pg_limit", out)
    print(common.table(
        [{"script": r["script"], "clients": r["clients"], "tps": r["tps"],
          "lat avg ms": r["latency_avg_ms"], "our backends cores": r["cpu"].get("our_backends_cores"),
          "all pg cores": r["cpu"].get("all_postgres_cores"),
          "machine cores": r["cpu"].get("machine_busy_cores"),
          "others cores": r["cpu"].get("others_cores"), "pgbench cores": r["pgbench_cores"],
          "load": r["load_before"]} for r in rows],
        ["script", "clients", "tps", "lat avg ms", "our backends cores", "all pg cores",
         "machine cores", "others cores", "pgbench cores", "load"]), file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
