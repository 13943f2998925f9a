"""Shared plumbing for the benchmark scripts: databases, brokers, worker processes, CPU, stats.

Everything here is bench-only. Workers are real ``celery worker`` processes started with
``start_new_session=True`` and stopped by PID (their process group), also on error.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = Path(os.environ.get("BENCH_RESULTS", BENCH / "results"))
PY = sys.executable

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_ADMIN_DSN = os.environ.get("BENCH_PG_ADMIN", f"postgresql://postgres@{PG_HOST}:5432/postgres")
# A Redis database and a RabbitMQ vhost of our own, so other people's test workers on the same
# servers neither steal our messages nor get ours.
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "11"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
# Completion records of the Celery baselines (one RPUSH by the last task of a chain).
REDIS_MARK_URL = f"redis://127.0.0.1:6379/{REDIS_DB + 1}"
RABBIT_VHOST = os.environ.get("BENCH_RABBIT_VHOST", "bench")
BROKERS = {
    "redis": REDIS_URL,
    "rabbitmq": f"amqp://guest:guest@127.0.0.1:5672/{RABBIT_VHOST}",
}


def _terminate(signum: int, _frame: Any) -> None:
    # SIGTERM (and SIGINT, which a shell's background job ignores) end a driver through its
    # finally blocks, so the workers it started are stopped by PID.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _terminate)
signal.signal(signal.SIGINT, _terminate)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def uptime() -> str:
    with open("/proc/loadavg") as f:
        a, b, c = f.read().split()[:3]
    return f"{a} {b} {c}"


# -- databases ---------------------------------------------------------------------------------


def _admin() -> Any:
    import psycopg

    return psycopg.connect(PG_ADMIN_DSN, autocommit=True)


def create_database(prefix: str) -> str:
    """A fresh, empty PostgreSQL database; returns its name."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}".lower()
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with contextlib.suppress(Exception), _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_url(name: str) -> str:
    return f"postgresql://postgres@{PG_HOST}:5432/{name}"


def sa_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@{PG_HOST}:5432/{name}"


@contextlib.contextmanager
def fresh_database(prefix: str, *, keep: bool = False) -> Iterator[str]:
    name = create_database(prefix)
    try:
        yield name
    finally:
        if not keep and not os.environ.get("BENCH_KEEP_DB"):
            drop_database(name)


def migrate(name: str) -> None:
    from sagas.store import make_engine
    from sagas.store.migrate import upgrade

    engine = make_engine(sa_url(name))
    try:
        upgrade(engine)
    finally:
        engine.dispose()


# -- brokers -----------------------------------------------------------------------------------


def ensure_rabbit_vhost() -> None:
    """Create the bench vhost if rabbitmqctl is at hand (else the default vhost is used)."""
    global BROKERS
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", RABBIT_VHOST], capture_output=True, timeout=30)
        r = subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", RABBIT_VHOST, "guest", ".*", ".*", ".*"],
            capture_output=True,
            timeout=30,
        )
        if r.returncode != 0:
            raise OSError(r.stderr)
    except (OSError, subprocess.SubprocessError):
        BROKERS["rabbitmq"] = "amqp://guest:guest@127.0.0.1:5672//"


def flush_redis_marks() -> None:
    import redis

    redis.Redis.from_url(REDIS_MARK_URL).flushdb()


def purge(app: Any, queues: Sequence[str]) -> int:
    """Empty our queues (declared first, so a missing one is not an error)."""
    total = 0
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for q in queues:
            with contextlib.suppress(Exception):
                channel.queue_declare(queue=q, durable=True, auto_delete=False)
            try:
                total += channel.queue_purge(q) or 0
            except Exception as exc:  # noqa: BLE001
                log(f"purge {q}: {exc}")
    return total


# -- worker processes ----------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    queues: str
    proc: subprocess.Popen[bytes]
    logfile: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class WorkerSet:
    workers: list[Worker] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def all_processes(self) -> list[Any]:
        """Every worker process: each main process and its prefork children."""
        import psutil

        procs = []
        for w in self.workers:
            try:
                p = psutil.Process(w.pid)
                procs.append(p)
                procs.extend(p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return procs

    def cpu_seconds(self) -> float:
        """utime+stime of all live worker processes (children included individually)."""
        total = 0.0
        for p in self.all_processes():
            with contextlib.suppress(Exception):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def cpu_by_worker(self) -> dict[str, float]:
        """utime+stime per worker (its main process and prefork children), by worker name."""
        import psutil

        out: dict[str, float] = {}
        for w in self.workers:
            total = 0.0
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(w.pid)
                for proc in (p, *p.children(recursive=True)):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        t = proc.cpu_times()
                        total += t.user + t.system
            out[w.name] = total
        return out

    def rss_bytes(self) -> dict[str, int]:
        out = {}
        for w in self.workers:
            import psutil

            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(w.pid)
                out[f"{w.name}:main"] = p.memory_info().rss
                for i, c in enumerate(p.children(recursive=True)):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        out[f"{w.name}:child{i}"] = c.memory_info().rss
        return out


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


POOL = os.environ.get("BENCH_POOL", "prefork")
# Processes (or threads) per worker; 2, one per core, unless BENCH_CONCURRENCY says otherwise.
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "2"))


def start_workers(
    app_module: str,
    specs: Sequence[tuple[str, str]],
    env: dict[str, str],
    *,
    concurrency: int = CONCURRENCY,
    tag: str = "bench",
    logdir: Path | None = None,
    loglevel: str = "WARNING",
    extra_args: Sequence[str] = (),
) -> WorkerSet:
    """Start one ``celery worker --pool prefork --concurrency N`` per (name, queues)
    (``BENCH_POOL=threads``: the thread pool instead, for I/O-bound step workers)."""
    logdir = logdir or RESULTS / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    ws = WorkerSet()
    for name, queues in specs:
        logfile = logdir / f"{tag}-{name}.log"
        cmd = [
            PY, "-m", "celery", "-A", app_module, "worker",
            "--pool", POOL, "--concurrency", str(concurrency),
            "-Q", queues, "-n", f"{tag}-{name}@%h", "--loglevel", loglevel,
            "--without-gossip", "--without-mingle", *extra_args,
        ]  # fmt: skip
        fh = open(logfile, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        ws.workers.append(Worker(name, queues, proc, logfile))
    return ws


def wait_ready(app: Any, ws: WorkerSet, tag: str, timeout: float = 90.0) -> None:
    """Ping until every worker answers (and its prefork children are up)."""
    import socket

    wanted = {f"{tag}-{w.name}@{socket.gethostname()}" for w in ws.workers}
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for w in ws.workers:
            if w.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {w.name} exited with {w.proc.returncode}; see {w.logfile}"
                )
        try:
            replies = app.control.ping(destination=sorted(wanted - seen), timeout=1.0) or []
        except Exception as exc:  # noqa: BLE001 - a broker restart (other people's fault tests)
            log(f"ping failed ({type(exc).__name__}); retrying")
            time.sleep(1.0)
            continue
        for r in replies:
            seen.update(r.keys())
        if seen >= wanted:
            return
    raise RuntimeError(f"workers not ready within {timeout}s: missing {sorted(wanted - seen)}")


def stop_workers(ws: WorkerSet, timeout: float = 20.0) -> None:
    """Stop by process group (each worker was started in its own session)."""
    for w in ws.workers:
        if w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in ws.workers:
        try:
            w.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGKILL)
            w.proc.wait(5)
        # any prefork child left behind in the group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(w.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_workers(
    app: Any,
    app_module: str,
    specs: Sequence[tuple[str, str]],
    env: dict[str, str],
    *,
    tag: str,
    concurrency: int = CONCURRENCY,
    **kwargs: Any,
) -> Iterator[WorkerSet]:
    ws = start_workers(app_module, specs, env, concurrency=concurrency, tag=tag, **kwargs)
    try:
        wait_ready(app, ws, tag)
        yield ws
    finally:
        stop_workers(ws)


# -- statistics ---------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summary_ms(values: Sequence[float]) -> dict[str, float | None]:
    """Seconds in, milliseconds out: p50, p99, mean."""
    if not values:
        return {"p50": None, "p99": None, "mean": None}
    return {
        "p50": round(pct(values, 50) * 1000, 2),  # type: ignore[operator]
        "p99": round(pct(values, 99) * 1000, 2),  # type: ignore[operator]
        "mean": round(statistics.fmean(values) * 1000, 2),
    }


# -- environment ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {"python": platform.python_version()}
    for pkg in ("celery", "kombu", "sqlalchemy", "psycopg", "pydantic", "redis", "dbos",
                "celery-saga"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    with contextlib.suppress(Exception), _admin() as conn:
        out["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
    with contextlib.suppress(Exception):
        import redis

        out["redis-server"] = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    with contextlib.suppress(Exception):
        from kombu import Connection

        with Connection(BROKERS["rabbitmq"]) as c:
            c.connect()
            props = c.connection.server_properties
            v = props.get("version")
            out["rabbitmq"] = v.decode() if isinstance(v, bytes) else str(v)
    return out


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "bench": name,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, default=str), flush=True)
    return path


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines.append("  ".join("-" * widths[c] for c in cols))
    for r in rows:
        lines.append("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols))
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


# -- other people's CPU use during a measurement ------------------------------------------------

SERVERS = ("postgres", "redis-server", "beam.smp", "epmd", "rabbitmq", "nats-server", "mosquitto")


class Foreign:
    """CPU used by processes that are neither ours nor the shared servers during a window
    (other sessions' test suites, their workers). ``cores()`` = CPU seconds / wall seconds."""

    def __init__(self, ours: WorkerSet | None = None) -> None:
        self.ours = ours
        self.t0 = time.monotonic()
        self.snap = self._snapshot()

    def _ours(self) -> set[int]:
        import psutil

        me = psutil.Process()
        pids = {me.pid, *(c.pid for c in me.children(recursive=True))}
        if self.ours is not None:
            pids.update(p.pid for p in self.ours.all_processes())
        return pids

    def _snapshot(self) -> dict[int, float]:
        import psutil

        out = {}
        for p in psutil.process_iter(["name", "cpu_times"]):
            with contextlib.suppress(Exception):
                if p.info["name"] and p.info["name"].startswith(SERVERS):
                    continue
                t = p.info["cpu_times"]
                if t is not None:
                    out[p.pid] = t.user + t.system
        return out

    def cores(self) -> float:
        now = self._snapshot()
        ours = self._ours()
        used = sum(v - self.snap.get(pid, 0.0) for pid, v in now.items() if pid not in ours)
        return round(max(used, 0.0) / max(time.monotonic() - self.t0, 1e-6), 2)


# -- robustness against other people's fault tests restarting the shared servers ------------------


def server_epochs() -> dict[str, str]:
    """PostgreSQL's postmaster start time and Redis's run id: a change during a measurement
    means someone restarted the server under it (other sessions run fault-injection tests)."""
    out: dict[str, str] = {}
    with contextlib.suppress(Exception), _admin() as conn:
        out["postgresql"] = str(conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0])
    with contextlib.suppress(Exception):
        import redis

        out["redis"] = str(redis.Redis.from_url(REDIS_URL).info("server")["run_id"])
    return out


def disturbed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [k for k in before if after.get(k) != before[k]]


class PollConn:
    """A psycopg connection for the driver's polling that reconnects when the server restarts."""

    def __init__(self, dsn: str, timeout: float = 60.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.conn: Any = None

    def execute(self, sql: str, params: Any = None) -> Any:
        import psycopg

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.dsn, autocommit=True)
                return self.conn.execute(sql, params)
            except psycopg.OperationalError:
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
