"""The Procfile topology as real processes, once per broker.

``cluster`` (session scope, parametrised over Redis and RabbitMQ) creates a scratch PostgreSQL
database, applies the migrations, creates ``probe_effect`` and ``probe_gate`` and the example
inventory and payment services' tables (their ``*_DATABASE_URL`` point at the same scratch
database, so tests can read reservations and charges), then starts one ``celery worker`` per
queue (the coordinator on ``sagas``; each service worker on its queue and its choreography event
queue, ``-Q inventory,sagas.events.inventory`` as in the Procfile) and a ``celery beat`` running
the sweeper every 0.5 s. Each process logs to its own file under the test's tmp dir. Readiness
is polled (``control.ping`` for the workers, the first sweep in beat's log), never slept for.
Teardown stops every process by PID (SIGTERM to its process group, SIGKILL after a timeout).

Isolation from other runs: Redis keys live under a per-run ``global_keyprefix`` and RabbitMQ
gets a per-run vhost (the default vhost, purged, if ``rabbitmqctl`` is unavailable). The queues
are purged at start in every case.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from celery import Celery
from celery import _state as celery_state
from sqlalchemy import Engine, create_engine, text

import sagas
import sagas.examples.notification  # noqa: F401
import sagas.examples.order_choreography  # noqa: F401
import sagas.examples.order_fulfillment  # noqa: F401
import tests.integration.choreo_probe  # noqa: F401 - registered here as in the workers
import tests.integration.probe  # noqa: F401 - the test process validates starts client-side
from sagas import receipts, report
from sagas.choreography.definition import event_queue_name
from sagas.examples import inventory, payment
from sagas.machine import SagaStatus
from sagas.runtime import reset
from sagas.settings import Settings
from sagas.store import HistoryEntry, SagaRecord, Store
from sagas.store.migrate import upgrade
from tests.integration.choreo_probe import GATE_TABLE_DDL
from tests.integration.probe import EFFECT_TABLE_DDL
from tests.integration.worker_app import make_app
from tests.services import AMQP_URL, REDIS_URL, require, scratch_database

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR = "sagas"
SERVICE_QUEUES = ("inventory", "payment", "shipping", "notification")
QUEUES = (COORDINATOR, *SERVICE_QUEUES)
BROKERS = ("redis", "rabbitmq")
SWEEP_INTERVAL = "0.5"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

Snapshot = tuple[SagaRecord, SagaStatus, list[HistoryEntry]]


@dataclass
class Effect:
    id: int
    step: str
    action: str
    attempt: int
    at: Any


@dataclass
class Cluster:
    """Handles on one running topology: its broker, store, client app and log files."""

    broker: str
    broker_url: str
    database_url: str
    app: Celery
    store: Store
    engine: Engine
    logs: dict[str, Path] = field(default_factory=dict)
    keyprefix: str = ""  # Redis: every key of this run starts with it

    # -- starting --------------------------------------------------------------------------

    def start(self, name: str, payload: dict[str, Any], **kwargs: Any) -> str:
        """Start a saga as a web app would: ``start_saga.delay``. Returns the saga id."""
        saga_id = kwargs.pop("saga_id", None) or f"it-{uuid.uuid4().hex}"
        sagas.start_saga.delay(name, payload, saga_id=saga_id, **kwargs)
        return saga_id

    def send_start(self, name: str, payload: dict[str, Any], **kwargs: Any) -> str:
        """Start a saga by message to the coordinator, as a client without the saga's
        definition (or with ``SAGAS_START_IN_CALLER=0``) does. Returns the saga id."""
        saga_id = kwargs.pop("saga_id", None) or f"it-{uuid.uuid4().hex}"
        kwargs = {"saga_id": saga_id, **kwargs}
        self.app.send_task("sagas.start_saga", args=[name, payload], kwargs=kwargs)
        return saga_id

    # -- waiting (polling with a deadline; never a bare sleep) -----------------------------

    def wait_for(self, saga_id: str, states: Iterable[str], timeout: float = 30.0) -> Snapshot:
        wanted = {str(s) for s in states}
        last: Snapshot | None = None

        def check() -> bool:
            nonlocal last
            try:
                last = self.store.get(saga_id)
            except sagas.SagaNotFound:
                return False
            return last[0].state.value in wanted

        if not poll(check, timeout):
            detail = report.timeline(*last) if last else "the saga was never created"
            pytest.fail(
                f"[{self.broker}] saga {saga_id} not in {sorted(wanted)} after {timeout}s:\n"
                f"{detail}\n{self.log_tails()}"
            )
        assert last is not None
        return last

    def wait_for_history(
        self,
        saga_id: str,
        predicate: Callable[[list[HistoryEntry]], bool],
        timeout: float = 30.0,
        what: str = "history condition",
    ) -> Snapshot:
        last: Snapshot | None = None

        def check() -> bool:
            nonlocal last
            last = self.store.get(saga_id)
            return predicate(last[2])

        if not poll(check, timeout):
            detail = report.timeline(*last) if last else ""
            pytest.fail(f"[{self.broker}] {what} not met for {saga_id} in {timeout}s:\n{detail}")
        assert last is not None
        return last

    def wait_for_log(self, name: str, *needles: str, timeout: float = 30.0) -> list[str]:
        """Lines of ``name``'s log that contain every needle (at least one such line)."""
        found: list[str] = []

        def check() -> bool:
            nonlocal found
            found = [
                line for line in self.log(name).splitlines() if all(n in line for n in needles)
            ]
            return bool(found)

        if not poll(check, timeout):
            pytest.fail(
                f"[{self.broker}] no line with {needles!r} in the {name} log after {timeout}s:\n"
                + tail(self.logs[name])
            )
        return found

    # -- reading ----------------------------------------------------------------------------

    def effects(self, saga_id: str) -> list[Effect]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, step, action, attempt, at FROM probe_effect "
                    "WHERE saga_id = :s ORDER BY id"
                ),
                {"s": saga_id},
            )
            return [Effect(*row) for row in rows]

    def saga_rows(self, *saga_ids: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM saga WHERE id = ANY(:ids)"), {"ids": list(saga_ids)}
                ).scalar_one()
            )

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def log_tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{tail(path)}" for name, path in self.logs.items())


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


# -- brokers: a namespace of our own per run ---------------------------------------------------


@contextmanager
def redis_namespace(run: str) -> Iterator[tuple[str, str]]:
    """(broker URL, key prefix): every key this run creates starts with the prefix."""
    import redis

    require("Redis", REDIS_URL)
    prefix = f"sagas-it-{run}:"
    try:
        yield REDIS_URL, prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=500))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@contextmanager
def rabbitmq_vhost(run: str) -> Iterator[tuple[str, str]]:
    """(broker URL, ""): a fresh vhost, deleted afterwards; the default vhost without rabbitmqctl."""
    require("RabbitMQ", AMQP_URL)
    ctl = shutil.which("rabbitmqctl")
    vhost = f"sagas_it_{run}"
    if ctl is None or not _rabbitmqctl(ctl, "add_vhost", vhost):
        yield AMQP_URL, ""
        return
    try:
        user = urlsplit(AMQP_URL).username or "guest"
        if not _rabbitmqctl(ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
            raise RuntimeError(f"could not grant {user} access to vhost {vhost}")
        parts = urlsplit(AMQP_URL)
        yield urlunsplit(parts._replace(path="/" + vhost)), ""
    finally:
        _rabbitmqctl(ctl, "delete_vhost", vhost)


def _rabbitmqctl(ctl: str, *args: str) -> bool:
    done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60, check=False)
    return done.returncode == 0


# -- processes ---------------------------------------------------------------------------------


@contextmanager
def topology(app: Celery, env: dict[str, str], logdir: Path, run: str) -> Iterator[dict[str, Path]]:
    """Start the coordinator, the four service workers and beat; stop them by PID on exit."""
    celery = [sys.executable, "-m", "celery", "-A", "tests.integration.worker_app"]
    commands: dict[str, list[str]] = {
        queue: [
            *celery, "worker", "-Q", worker_queues(queue), "-n", f"{queue}-{run}@%h", "-c", "2",
            "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ]
        for queue in QUEUES
    }  # fmt: skip
    commands["beat"] = [
        *celery, "beat", "--loglevel", "INFO", "-s", str(logdir / "beat-schedule"),
    ]  # fmt: skip
    logs = {name: logdir / f"{name}.log" for name in commands}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    files: list[IO[bytes]] = []
    try:
        for name, argv in commands.items():
            out = open(logs[name], "wb")  # noqa: SIM115 - closed in finally
            files.append(out)
            procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_ready(app, procs, logs, run)
        yield logs
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited during the tests (code {proc.returncode}):\n{tail(logs[name])}"
                )
    finally:
        _stop(procs)
        for out in files:
            out.close()


def worker_queues(queue: str) -> str:
    """``-Q`` for the worker named after ``queue``: a service also consumes its event queue."""
    return queue if queue == COORDINATOR else f"{queue},{event_queue_name(queue)}"


def _wait_ready(
    app: Celery, procs: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path], run: str
) -> None:
    expected = {f"{queue}-{run}@" for queue in QUEUES}
    answered: set[str] = set()
    deadline = time.monotonic() + START_TIMEOUT
    beat_ready = False
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited at start (code {proc.returncode}):\n{tail(logs[name])}"
                )
        for reply in app.control.ping(timeout=0.5) or []:
            answered.update(p for host in reply for p in expected if host.startswith(p))
        beat_ready = beat_ready or "Sending due task sagas-sweep" in logs["beat"].read_text(
            errors="replace"
        )
        if answered == expected and beat_ready:
            return
    missing = sorted(expected - answered) + ([] if beat_ready else ["beat"])
    raise RuntimeError(f"not ready after {START_TIMEOUT}s: {missing}")


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in procs.values():
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(10)
        # A prefork child left behind by a parent that died hard is still in the group.
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group led by the process we started
    except (ProcessLookupError, PermissionError):
        pass


# -- the fixture -------------------------------------------------------------------------------


@pytest.fixture(scope="session", params=BROKERS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    broker: str = request.param
    run = uuid.uuid4().hex[:8]
    logdir = tmp_path_factory.mktemp(f"workers-{broker}")
    with ExitStack() as stack:
        database_url = stack.enter_context(scratch_database("sagas_it"))
        namespace = redis_namespace if broker == "redis" else rabbitmq_vhost
        broker_url, keyprefix = stack.enter_context(namespace(run))

        engine = create_engine(database_url)
        stack.callback(engine.dispose)
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text(EFFECT_TABLE_DDL))
            conn.execute(text(GATE_TABLE_DDL))
        # The example services keep their tables in the scratch database too. Created here, once,
        # so no two worker processes race to create them.
        for metadata in (inventory.metadata, payment.metadata, receipts.metadata):
            metadata.create_all(engine)

        app = make_app(broker_url, keyprefix)
        stack.callback(app.close)
        # ``sagas.start_saga`` is a shared task: it publishes through the current app.
        stack.callback(celery_state.get_current_app().set_current)
        app.set_current()
        app.control.purge()  # nothing left over from an earlier run reaches these workers

        store = Store(database_url)
        sagas.configure(settings=Settings(database_url=database_url), store=store, app=app)
        stack.callback(reset)

        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SAGAS_DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "SAGAS_IT_KEYPREFIX": keyprefix,
            "SAGAS_SWEEP_INTERVAL": SWEEP_INTERVAL,
            "SAGAS_IT_PARENT_PID": str(os.getpid()),
            "INVENTORY_DATABASE_URL": database_url,
            "PAYMENT_DATABASE_URL": database_url,
        }
        env.pop("CELERY_RESULT_BACKEND", None)
        logs = stack.enter_context(topology(app, env, logdir, run))
        yield Cluster(broker, broker_url, database_url, app, store, engine, logs, keyprefix)
