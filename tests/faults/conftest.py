"""Fault injection against real processes: a reconfigurable Procfile topology per broker.

``fc`` (session scope, one per broker a test asks for with ``@pytest.mark.brokers(...)``;
Redis only by default) builds on the integration suite's building blocks (``Cluster``,
``poll``, ``redis_namespace``, ``rabbitmq_vhost``, ``scratch_database``): a scratch PostgreSQL
database with the fault probe's tables, a per-run Redis key prefix or RabbitMQ vhost, and one
``celery worker`` per queue (coordinator ``sagas``; ``inventory``, ``payment``, ``shipping``)
plus ``celery beat`` sweeping every 0.5 s with a 1.5 s outbox grace.

Unlike the integration topology, every process can be replaced one at a time: a test asks for
``fc.configure(sagas=Spec(...))`` (another pool, ``SAGAS_FAULTS``, local transitions off, a clock
skew, a tiny visibility timeout, ...) and only the processes whose spec differs are restarted;
before each test the topology is brought back to the default (dead processes restarted, extra
ones stopped). Processes are stopped by PID (SIGTERM to their process group, SIGKILL after a
timeout), never by name.

After every test the invariant checker (``invariants.py``) runs over every saga the test
created and fails the test if one is violated. ``@pytest.mark.invariants(settle=..,
duplicate_runs=True)`` adjusts it per test.

Services (``outage``/``restart_service``): Redis, RabbitMQ and PostgreSQL are shared with other
suites; an outage is kept to seconds and the service is always restarted, and waited for, in a
``finally`` block.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from celery import _state as celery_state
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

import sagas
import tests.faults.fprobe  # noqa: F401 - the test process validates starts client-side
from sagas import report
from sagas.errors import SagaError
from sagas.runtime import reset
from sagas.settings import Settings
from sagas.store import Store
from sagas.store.migrate import upgrade
from tests.faults import invariants
from tests.faults.fault_app import make_app
from tests.faults.fprobe import TABLES_DDL
from tests.integration.conftest import (
    Cluster,
    Snapshot,
    poll,
    rabbitmq_vhost,
    redis_namespace,
    tail,
)
from tests.services import AMQP_URL, PG_ADMIN_URL, require

ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
SERVICE_QUEUES = ("inventory", "payment", "shipping")
SWEEP_INTERVAL = 0.5
OUTBOX_GRACE = 1.5
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
TERMINAL = ("completed", "failed")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "brokers(*names): brokers the fault test runs on")
    config.addinivalue_line("markers", "invariants(**options): options for the invariant check")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fc" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("brokers")
        brokers = marker.args if marker else ("redis",)
        metafunc.parametrize("fc", brokers, indirect=True, scope="session")


# -- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How to run one process: a worker on ``queue`` (``None``: celery beat)."""

    queue: str | None
    pool: str = "prefork"
    concurrency: int = 2
    env: tuple[tuple[str, str], ...] = ()

    def with_env(self, **env: str) -> Spec:
        return replace(self, env=tuple(sorted({**dict(self.env), **env}.items())))


DEFAULT_SPECS: dict[str, Spec] = {
    "sagas": Spec("sagas"),
    **{q: Spec(q) for q in SERVICE_QUEUES},
    "beat": Spec(None),
}


@dataclass
class Proc:
    name: str
    spec: Spec
    popen: subprocess.Popen[bytes]
    log: Path
    nodename: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def children(pid: int) -> list[int]:
    done = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid="], capture_output=True, text=True, check=False
    )
    return [int(p) for p in done.stdout.split()]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def faketime_env(offset: str) -> dict[str, str]:
    """Environment that runs a process with its clock moved by ``offset`` (e.g. ``+1h``).

    libfaketime (``apt-get install faketime``) when present — every clock call of the process,
    C libraries included; otherwise ``tests/faults/skew/sitecustomize.py`` moves Python's
    ``time.time``/``datetime.now`` (what Celery and the engine read).
    """
    for lib in FAKETIME_LIBS:
        if os.path.exists(lib):
            return {
                "LD_PRELOAD": lib,
                "FAKETIME": offset,
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_DONT_RESET": "1",
            }
    return {"SAGAS_FT_SKEW": offset, "SAGAS_FT_SITECUSTOMIZE": "1"}


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class FaultCluster(Cluster):
    run: str = ""
    logdir: Path = Path()
    base_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    test_start: Any = None
    generation: int = 0
    # Act as a process supervisor while waiting: restart any process that died by itself.
    supervise: bool = False
    revived: list[str] = field(default_factory=list)

    # -- processes ----------------------------------------------------------------------------

    def configure(self, **changes: Spec | None) -> None:
        """Bring the topology to the defaults updated with ``changes`` (None: not running)."""
        wanted: dict[str, Spec] = dict(DEFAULT_SPECS)
        for name, spec in changes.items():
            if spec is None:
                wanted.pop(name, None)
            else:
                wanted[name] = spec
        stale = [
            name
            for name, proc in self.procs.items()
            if name not in wanted or proc.spec != wanted[name] or not proc.alive()
        ]
        for name in stale:
            self.stop(name)
        todo = [name for name in wanted if name not in self.procs]
        if todo:
            self._wait_ready([self._spawn(name, wanted[name]) for name in todo])

    def reset_client(self) -> None:
        """Forget this process's pooled broker connections (dead after a broker restart)."""
        from kombu import pools

        pools.reset()
        self.app._pool = None
        self.app.amqp._producer_pool = None

    def dead(self) -> dict[str, str]:
        """Processes that exited by themselves: name -> their last log lines."""
        return {
            name: "\n".join(p.log.read_text(errors="replace").splitlines()[-3:])
            for name, p in self.procs.items()
            if not p.alive()
        }

    def revive(self) -> list[str]:
        """What a process supervisor does: restart every process that died; returns their names
        (each one's last log lines go to the test report)."""
        self.reset_client()
        died = self.dead()
        for name, last in died.items():
            print(
                f"[{self.broker}] {name} died (exit {self.procs[name].popen.returncode}):\n{last}"
            )
        self.configure(**{n: p.spec for n, p in self.procs.items() if n not in DEFAULT_SPECS})
        return sorted(died)

    def spec(self, name: str) -> Spec:
        return self.procs[name].spec if name in self.procs else DEFAULT_SPECS[name]

    def _spawn(self, name: str, spec: Spec) -> Proc:
        self.generation += 1
        gen = self.generation
        nodename = f"{name}-{self.run}-{gen}@{HOST}"
        celery = [sys.executable, "-m", "celery", "-A", "tests.faults.fault_app"]
        if spec.queue is None:
            schedule = str(self.logdir / f"{name}-{gen}-schedule")
            argv = [*celery, "beat", "--loglevel", "INFO", "-s", schedule]
        else:
            argv = [
                *celery, "worker", "-Q", spec.queue, "-n", nodename, "-P", spec.pool,
                "--loglevel", "INFO", "--without-mingle", "--without-gossip",
            ]  # fmt: skip
            if spec.pool == "prefork":
                argv += ["-c", str(spec.concurrency)]
        env = {**self.base_env, **dict(spec.env)}
        if env.get("SAGAS_FT_SITECUSTOMIZE"):
            env["PYTHONPATH"] = f"{Path(__file__).parent / 'skew'}:{env['PYTHONPATH']}"
        log = self.logdir / f"{name}.{gen}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, spec, popen, log, nodename)
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def _wait_ready(self, procs: list[Proc]) -> None:
        pending = {p.nodename for p in procs if p.spec.queue is not None}
        beats = [p for p in procs if p.spec.queue is None]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited at start:\n{tail(p.log)}")
            if pending:
                try:
                    replies = self.app.control.ping(destination=sorted(pending), timeout=0.5)
                except Exception:  # noqa: BLE001 - a broker connection broken by a restart
                    self.reset_client()
                    replies = []
                for reply in replies or []:
                    pending -= set(reply)
            else:
                time.sleep(0.1)
            if not pending and all(
                "Sending due task" in b.log.read_text(errors="replace") for b in beats
            ):
                return
        raise RuntimeError(f"not ready after {START_TIMEOUT}s: {sorted(pending)} {beats}")

    def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop ``name`` and its whole process group; SIGKILL after STOP_TIMEOUT."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.alive():
            _signal_group(proc.pid, sig)
        try:
            proc.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.popen.wait(10)
        _signal_group(proc.pid, signal.SIGKILL)  # pool children left by a parent that died hard

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def children(self, name: str) -> list[int]:
        return children(self.procs[name].pid)

    def kill_run(self, saga_id: str, step: str, action: str = "forward") -> int:
        """SIGKILL the pool child running ``step`` of ``saga_id`` now; returns its pid."""
        with self.engine.connect() as conn:
            pid = conn.execute(
                text(
                    "SELECT pid FROM fault_run WHERE saga_id = :s AND step = :st "
                    "AND action = :a ORDER BY id DESC LIMIT 1"
                ),
                {"s": saga_id, "st": step, "a": action},
            ).scalar_one()
        owners = [name for name, p in self.procs.items() if pid in children(p.pid)]
        assert owners, f"pid {pid} running {step} is no pool child of ours"
        os.kill(pid, signal.SIGKILL)
        return int(pid)

    # -- sagas --------------------------------------------------------------------------------

    def start(self, name: str, payload: dict[str, Any], **kwargs: Any) -> str:
        saga_id = kwargs.pop("saga_id", None) or f"ft-{uuid.uuid4().hex}"
        self.started.append(saga_id)
        sagas.start_saga.delay(name, payload, saga_id=saga_id, **kwargs)
        return saga_id

    def send_start(self, name: str, payload: dict[str, Any], **kwargs: Any) -> str:
        """Start a saga by message, so the coordinator records it (as for a client without the
        saga's definition or with ``SAGAS_START_IN_CALLER=0``); ``start`` records it here."""
        saga_id = kwargs.pop("saga_id", None) or f"ft-{uuid.uuid4().hex}"
        self.started.append(saga_id)
        self.app.send_task(
            "sagas.start_saga", args=[name, payload], kwargs={"saga_id": saga_id, **kwargs}
        )
        return saga_id

    def get(self, saga_id: str) -> Snapshot | None:
        try:
            return self.store.get(saga_id)
        except (SQLAlchemyError, SagaError):
            return None

    def wait_for(self, saga_id: str, states: Iterable[str], timeout: float = 30.0) -> Snapshot:
        """Like ``Cluster.wait_for``, riding out a store that is restarting."""
        wanted = {str(s) for s in states}
        last: Snapshot | None = None

        def check() -> bool:
            nonlocal last
            if self.supervise and self.dead():
                self.revived += self.revive()
            last = self.get(saga_id) or last
            return last is not None and last[0].state.value in wanted

        if not poll(check, timeout, interval=0.1):
            detail = report.timeline(*last) if last else "the saga was never created"
            pytest.fail(
                f"[{self.broker}] saga {saga_id} not in {sorted(wanted)} after {timeout}s:\n"
                f"{detail}\n{self.log_tails()}"
            )
        assert last is not None
        return last

    def wait_settled(self, saga_ids: Iterable[str], timeout: float = 30.0) -> list[Snapshot]:
        return [self.wait_for(s, TERMINAL, timeout) for s in saga_ids]

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def runs(self, saga_id: str, step: str | None = None, action: str = "forward") -> list[Any]:
        """Every entry into a step function: (step, action, attempt, pid, at)."""
        return self.query(
            "SELECT step, action, attempt, pid, at FROM fault_run WHERE saga_id = :s "
            "AND (CAST(:st AS text) IS NULL OR step = :st) AND action = :a ORDER BY id",
            s=saga_id,
            st=step,
            a=action,
        )

    def fx(self, saga_id: str) -> list[tuple[str, str, int]]:
        """The probe's effects (at most one per step and action), in order."""
        rows = self.query(
            "SELECT step, action, attempt FROM fault_effect WHERE saga_id = :s ORDER BY at, id",
            s=saga_id,
        )
        return [tuple(r) for r in rows]

    def wait_run(self, saga_id: str, step: str, action: str = "forward", n: int = 1) -> None:
        """Until ``step`` has been entered at least ``n`` times."""
        assert poll(lambda: len(self.runs(saga_id, step, action)) >= n, 30), (
            f"{step} never ran {n} time(s):\n{self.log_tails()}"
        )

    def db_now(self) -> Any:
        return self.scalar("SELECT now()")

    def purge(self, queue: str) -> int:
        with self.app.connection_for_write() as conn:
            return int(conn.default_channel.queue_purge(queue) or 0)

    def log_tails(self, lines: int = 25) -> str:
        """The last lines of each process's current log, without the sweeper's chatter."""
        out = []
        for name, proc in self.procs.items():
            text_ = proc.log.read_text(errors="replace").splitlines()
            kept = [ln for ln in text_ if "sagas.sweep" not in ln and "sagas-sweep" not in ln]
            out.append(f"--- {name} ---\n" + "\n".join(kept[-lines:]))
        return "\n".join(out)

    def test_sagas(self) -> list[str]:
        created = [
            r[0]
            for r in self.query(
                "SELECT id FROM saga WHERE created_at >= :t AND name LIKE 'fprobe%%'",
                t=self.test_start,
            )
        ]
        return sorted(set(self.started) | set(created))


# -- services ----------------------------------------------------------------------------------


def _run(*argv: str, timeout: float = 60) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout)


def _pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def service_stop(service: str) -> None:
    if service == "redis":
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], timeout=30)
        assert poll(lambda: not _redis_up(), 10)
    elif service == "rabbitmq":
        _run("rabbitmqctl", "stop_app")
    elif service == "postgresql":
        _run(*_pg_cluster(), "stop", "-m", "fast")
    else:
        raise ValueError(service)


def service_start(service: str) -> None:
    """Start ``service`` (if down) and wait until it accepts connections."""
    if service == "redis":
        if not _redis_up():
            subprocess.run(
                [
                    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
                    "--port", "6379", "--save", "", "--appendonly", "no",
                    "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
                ],
                check=False, timeout=30,
            )  # fmt: skip
        assert poll(_redis_up, 30), "Redis did not come back"
    elif service == "rabbitmq":
        if not _amqp_up():
            _run("rabbitmqctl", "start_app", timeout=120)
        assert poll(_amqp_up, 60, interval=0.5), "RabbitMQ did not come back"
    elif service == "postgresql":
        if not _pg_up():
            subprocess.run([*_pg_cluster(), "start"], capture_output=True, timeout=60, check=False)
        assert poll(_pg_up, 60, interval=0.2), "PostgreSQL did not come back"
    else:
        raise ValueError(service)


@contextmanager
def outage(service: str) -> Iterator[None]:
    """``service`` is down inside the block; always back up (and answering) after it."""
    try:
        service_stop(service)
        yield
    finally:
        service_start(service)


def restart_service(service: str, down_for: float = 0.0) -> None:
    with outage(service):
        time.sleep(down_for)


def _redis_up() -> bool:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() == "PONG"


def _amqp_up() -> bool:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _pg_up() -> bool:
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


# -- fixtures ----------------------------------------------------------------------------------


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """``tests.services.scratch_database`` without a connection pool: PostgreSQL restarts in
    this suite, and a pooled admin connection would be dead when the database is dropped."""
    require("PostgreSQL", PG_ADMIN_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))  # generated name, not input
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        service_start("postgresql")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def fc(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultCluster]:
    broker: str = request.param
    with fault_cluster(broker, tmp_path_factory.mktemp(f"faults-{broker}")) as cluster:
        yield cluster


@contextmanager
def fault_cluster(
    broker: str, logdir: Path, env: dict[str, str] | None = None
) -> Iterator[FaultCluster]:
    """A scratch database, a broker namespace and the default topology, torn down on exit
    (also used by ``bench/chaos_soak.py``). ``env`` adds to every process's environment."""
    run = uuid.uuid4().hex[:8]
    with ExitStack() as stack:
        database_url = stack.enter_context(scratch_database("sagas_ft"))
        namespace = redis_namespace if broker == "redis" else rabbitmq_vhost
        broker_url, keyprefix = stack.enter_context(namespace(run))

        engine = create_engine(database_url, pool_pre_ping=True)
        stack.callback(engine.dispose)
        upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(TABLES_DDL)

        app = make_app(broker_url, keyprefix)
        stack.callback(app.close)
        stack.callback(celery_state.get_current_app().set_current)
        app.set_current()
        app.control.purge()

        store = Store(database_url)
        sagas.configure(settings=Settings(database_url=database_url), store=store, app=app)
        stack.callback(reset)

        base_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))},
            "PYTHONPATH": str(ROOT),
            "SAGAS_DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "SAGAS_IT_KEYPREFIX": keyprefix,
            "SAGAS_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
            "SAGAS_OUTBOX_GRACE": str(OUTBOX_GRACE),
            "SAGAS_IT_PARENT_PID": str(os.getpid()),
            **(env or {}),
        }
        cluster = FaultCluster(
            broker, broker_url, database_url, app, store, engine,
            run=run, logdir=logdir, base_env=base_env,
        )  # fmt: skip
        stack.callback(cluster.stop_all)
        # Whatever a test did to a service, it is up again before the next one.
        for service in ("redis", "rabbitmq", "postgresql"):
            stack.callback(service_start, service)
        cluster.configure()
        yield cluster


@pytest.fixture(autouse=True)
def _fault_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Default topology before each fault test; the invariant check after it."""
    if "fc" not in request.fixturenames:
        yield
        return
    fc: FaultCluster = request.getfixturevalue("fc")
    fc.reset_client()
    fc.configure()
    fc.supervise, fc.revived = False, []
    fc.started = []
    fc.test_start = fc.db_now()
    yield
    marker = request.node.get_closest_marker("invariants")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    options.setdefault("outbox_bound", OUTBOX_GRACE + 2 * SWEEP_INTERVAL + 2.0)
    findings = invariants.check(fc.engine, fc.store, fc.test_sagas(), **options)
    for note in findings.notes:
        request.node.add_report_section("teardown", "invariant notes", note)
    if not findings:
        pytest.fail(
            f"[{fc.broker}] invariants violated:\n"
            + "\n".join(findings.violations)
            + "\n"
            + fc.log_tails()
        )
