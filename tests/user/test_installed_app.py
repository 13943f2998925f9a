"""A team's own Celery project, set up the way the README says: its app calls
``sagas.install(app, modules=[...])``, settings live in ``app.conf``, and a real ``celery worker``
(with embedded beat) runs its saga. No servers: a ``filesystem://`` broker and a SQLite store in
a temporary directory, so nothing here shares state with the other tiers.

What this guards: the coordinator queue comes from the app's configuration for every engine
task (``start_saga.delay`` lands where the worker listens), the sweeper is scheduled by
``install``, saga modules are imported by name, a worker without a sweeper says so, and the
public reading API (``sagas.get``/``wait``) works from the caller's process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagas.store.migrate import head_revision
from tests.wheelhouse import spawn, stop_group

SAGAS_MODULE = """
from pydantic import BaseModel
from sagas import PermanentError, Saga, StepContext

class Order(BaseModel):
    order_id: str
    declined: bool = False

shop_order = Saga("shop_order", payload=Order)
RELEASED = []

def release(ctx: StepContext[Order]) -> None:
    RELEASED.append(ctx.saga_id)

@shop_order.step(queue="shop", timeout=10, compensation=release)
def reserve(ctx: StepContext[Order]) -> dict:
    return {"reserved": ctx.payload.order_id}

@shop_order.step(queue="shop", timeout=10, compensation=None)
def charge(ctx: StepContext[Order]) -> dict:
    if ctx.payload.declined:
        raise PermanentError("card declined")
    return {"charged": ctx.payload.order_id}
"""

CELERY_MODULE = """
import os
from celery import Celery
import sagas

root = os.environ["SHOP_ROOT"]
app = Celery("shop")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": os.path.join(root, "broker"),
        "data_folder_out": os.path.join(root, "broker"),
        "processed_folder": os.path.join(root, "processed"),
        "store_processed": False,
        "polling_interval": 0.05,
    },
    task_serializer="json",
    accept_content=["json"],
    result_backend="file://" + os.path.join(root, "results"),
    sagas_database_url=os.environ.get("SHOP_DATABASE_URL")
    or "sqlite:///" + os.path.join(root, "sagas.db"),
    sagas_coordinator_queue="shop-coordinator",
    sagas_sweep_interval=0.5,
)
sagas.install(app, modules=["shop_sagas"], beat=os.environ.get("SHOP_BEAT", "1") == "1")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "shop_sagas.py").write_text(textwrap.dedent(SAGAS_MODULE))
    (tmp_path / "shop_celery.py").write_text(textwrap.dedent(CELERY_MODULE))
    for folder in ("broker", "processed", "results"):
        (tmp_path / folder).mkdir()
    return tmp_path


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
    env.update(SHOP_ROOT=str(project), PYTHONPATH=str(project), **extra)
    return env


def _python(project: Path, code: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=project,
        env=_env(project, **extra),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture
def worker(project: Path) -> Iterator[subprocess.Popen[str]]:
    migrate = _python(
        project,
        """
        import shop_celery, sagas
        from sagas.store.migrate import upgrade
        upgrade(sagas.get_runtime().store.engine)
        """,
    )
    assert migrate.returncode == 0, migrate.stderr
    proc = _celery_worker(project)
    try:
        yield proc
    finally:
        _stop(proc)


def _celery_worker(project: Path, **extra: str) -> subprocess.Popen[str]:
    argv = ["worker", "-B", "-s", str(project / "beat-schedule"), "-Q", "shop-coordinator,shop"]
    argv += ["-P", "threads", "-c", "2", "--loglevel", "INFO"]
    log = project / "worker.log"
    celery = [sys.executable, "-m", "celery", "-A", "shop_celery", *argv]
    proc = spawn(celery, project, _env(project, **extra), log)
    proc.stdout_path = str(log)  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen[str]) -> str:
    """Stop the worker (by its process group) and return what it logged."""
    stop_group(proc)
    return _log(proc)


def _log(proc: subprocess.Popen[str]) -> str:
    return Path(proc.stdout_path).read_text()  # type: ignore[attr-defined]


def test_a_saga_completes_and_one_compensates_on_the_installed_app(
    project: Path, worker: subprocess.Popen[str]
) -> None:
    result = _python(
        project,
        """
        import shop_celery, sagas
        from sagas import start_saga
        start_saga.delay("shop_order", {"order_id": "o-1"}, saga_id="o-1")
        start_saga.delay("shop_order", {"order_id": "o-2", "declined": True}, saga_id="o-2")
        for sid in ("o-1", "o-2"):
            info = sagas.wait(sid, timeout=60)
            print(sid, info.state.value, [(s.name, s.state.value) for s in info.steps])
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:] + _stop(worker)[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "o-1 completed [('reserve', 'succeeded'), ('charge', 'succeeded')]"
    assert lines[1] == "o-2 failed [('reserve', 'compensated'), ('charge', 'failed')]"


def test_start_saga_results_carry_the_id_or_the_typed_error(
    project: Path, worker: subprocess.Popen[str]
) -> None:
    """``start_saga.delay(...).get()`` is the saga id, or raises the typed error the start hit.
    This app's store is configured, so the caller records the start itself; the result has
    the same contract as the start task's (``delay`` does not raise a conflict, ``get`` does)."""
    result = _python(
        project,
        """
        import shop_celery
        from sagas import SagaConflict, start_saga
        first = start_saga.delay("shop_order", {"order_id": "o-9"}, saga_id="o-9")
        print(first.get(timeout=60))
        again = start_saga.delay("shop_order", {"order_id": "o-10"}, saga_id="o-9")
        try:
            again.get(timeout=60)
        except SagaConflict as exc:
            print("conflict", exc)
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:] + _stop(worker)[-3000:]
    assert result.stdout.splitlines() == [
        "o-9",
        "conflict saga id 'o-9' already exists as a 'shop_order' saga with a different payload",
    ]


def _queued(project: Path) -> list[str]:
    """The queue of every message waiting in the filesystem broker (``<ts>_<id>.<queue>.msg``)."""
    return sorted(p.name.split(".")[-2] for p in (project / "broker").glob("*.msg"))


def test_with_the_store_configured_delay_records_the_saga_before_any_worker_runs(
    project: Path,
) -> None:
    """No worker at all: when ``delay`` returns the saga is in the table with its first step
    dispatched, and the only message is step 1's, on the service's queue."""
    result = _python(
        project,
        """
        import shop_celery, sagas
        from sagas import start_saga
        from sagas.store.migrate import upgrade
        upgrade(sagas.get_runtime().store.engine)
        r = start_saga.delay("shop_order", {"order_id": "o-20"}, saga_id="o-20")
        print(type(r).__name__, r.get())
        info = sagas.get("o-20")
        print(info.state.value, [(s.name, s.state.value) for s in info.steps])
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "EagerResult o-20",
        "pending [('reserve', 'running'), ('charge', 'pending')]",
    ]
    assert _queued(project) == ["shop"]


def test_an_unreachable_store_or_the_opt_out_sends_the_start_as_a_message(
    project: Path,
) -> None:
    """A store nobody listens on: ``delay`` still returns at once, with the start message on
    the coordinator's queue and a warning saying so. ``SAGAS_START_IN_CALLER=0``: the message,
    without touching the store."""
    script = """
        import time, shop_celery
        from sagas import start_saga
        t0 = time.monotonic()
        r = start_saga.delay("shop_order", {"order_id": "o-21"}, saga_id="o-21")
        print(type(r).__name__, time.monotonic() - t0 < 10)
        """
    down = _python(project, script, SHOP_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert down.returncode == 0, down.stderr[-3000:]
    assert down.stdout.splitlines() == ["AsyncResult True"]
    assert "start of shop_order sent as a message" in down.stderr
    assert _queued(project) == ["shop-coordinator"]
    opted_out = _python(project, script, SAGAS_START_IN_CALLER="0")
    assert opted_out.returncode == 0, opted_out.stderr[-3000:]
    assert opted_out.stdout.splitlines() == ["AsyncResult True"]
    assert _queued(project) == ["shop-coordinator", "shop-coordinator"]
    assert not (project / "sagas.db").exists()  # the opt-out never opened the store


def test_routes_queues_and_the_sweeper_come_from_install(project: Path) -> None:
    result = _python(
        project,
        """
        import shop_celery
        from shop_celery import app
        from sagas import get_runtime
        entry = app.conf.beat_schedule["sagas-sweep"]
        print(entry["task"], entry["schedule"], entry["options"]["queue"])
        print(app.amqp.router.route({}, "sagas.start_saga")["queue"].name)
        print(get_runtime().settings.coordinator_queue, get_runtime().app is app)
        print("saga.shop_order.reserve" in app.tasks, "saga.shop_order.reserve.compensate" in app.tasks)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "sagas.sweep 0.5 shop-coordinator",
        "shop-coordinator",
        "shop-coordinator True",
        "True True",
    ]


def test_a_worker_without_the_sweeper_says_so(project: Path) -> None:
    proc = _celery_worker(project, SHOP_BEAT="0")
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and "ready." not in _log(proc):
            assert proc.poll() is None, _log(proc)[-3000:]
            time.sleep(0.2)
    finally:
        output = _stop(proc)
    assert "ready." in output, output[-3000:]  # the check ran at start, before taking work
    assert "worker: no sagas.sweep entry in beat_schedule" in output, output[-3000:]


def test_a_saga_module_that_fails_to_import_is_named(project: Path) -> None:
    (project / "shop_sagas.py").write_text("raise RuntimeError('typo in the saga module')\n")
    result = _python(project, "import shop_celery")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "sagas.errors.ConfigurationError: saga module 'shop_sagas' failed to import: "
        "RuntimeError: typo in the saga module"
    )


def test_a_setting_of_the_wrong_type_is_named(project: Path) -> None:
    text = (project / "shop_celery.py").read_text()
    (project / "shop_celery.py").write_text(
        text.replace("sagas_sweep_interval=0.5", 'sagas_sweep_interval="soon"')
    )
    result = _python(project, "import shop_celery")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sagas.errors.ConfigurationError: setting sagas_sweep_interval")


def _saga(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = _env(project, SAGAS_DATABASE_URL=f"sqlite:///{project / 'sagas.db'}")
    saga = str(Path(sys.executable).with_name("saga"))
    return subprocess.run(
        [saga, *args], cwd=project, env=env, capture_output=True, text=True, timeout=90
    )


def test_doctor_passes_on_a_running_deployment(
    project: Path, worker: subprocess.Popen[str]
) -> None:
    deadline = time.monotonic() + 60
    while "ready." not in _log(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    out = _saga(project, "doctor", "--app", "shop_celery")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.split(":")[0] for line in out.stdout.splitlines()]
    assert lines == [
        "ok    store",
        "ok    broker",
        "ok    queue shop",
        "ok    queue shop-coordinator",
        "ok    sweeper",
    ], out.stdout


def test_doctor_names_what_is_missing(project: Path, worker: subprocess.Popen[str]) -> None:
    _stop(worker)  # nobody consumes the queues now
    out = _saga(project, "doctor", "--app", "shop_celery")
    assert out.returncode == 1
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == [
        "FAIL  queue shop: no running worker consumes it (shop_order)",
        "FAIL  queue shop-coordinator: no running worker consumes it (the coordinator)",
    ], out.stdout
    fresh = project / "other.db"
    unmigrated = subprocess.run(
        [str(Path(sys.executable).with_name("saga")), "doctor"],
        cwd=project,
        env=_env(project, SAGAS_DATABASE_URL=f"sqlite:///{fresh}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unmigrated.returncode == 1
    assert unmigrated.stdout.splitlines()[0].endswith(f"not {head_revision()}: run saga db upgrade")
