"""The example Flask shop (``examples/flask_shop/``), set up the way docs/flask.md's "Add sagas to
your Flask project" says: an app factory with Flask-SQLAlchemy, Flask's own ``celery_init_app`` and ``Sagas(app, celery=...)``; views that
start a saga with ``start_saga_after_commit``; a real ``celery worker -B`` running the saga's
steps inside the app context; operators using ``flask saga ...``.

The example is copied into a temporary directory and configured through environment variables,
as a user would run it. No servers: a ``filesystem://`` broker and one SQLite file (the shop's
database, which the saga store defaults to). Flask, Celery and the shop run in subprocesses
only, so nothing here touches this process's sagas runtime or Celery signals. The last test runs
the same example against a wheel of this checkout installed into a fresh virtualenv.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.services import require, scratch_database
from tests.wheelhouse import spawn, stop_group

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "flask_shop"
REDIS_BROKER = "redis://127.0.0.1:6379/10"  # this module's own Redis database
IGNORE = shutil.ignore_patterns("__pycache__", "*.db", "*.db-*", "instance", "celerybeat-schedule*")

# The example reads its configuration from the environment (SQLite in instance/ and a
# filesystem:// broker under instance/broker by default); sagas reads SAGAS_<NAME> from it.
SHOP_SETTINGS = {
    "CELERY_BROKER_URL": "filesystem://",
    "SAGAS_COORDINATOR_QUEUE": "shop-coordinator",
    "SAGAS_SWEEP_INTERVAL": "0.5",
    # The start runs step 1 (and step 2 inline) in the sagas.start_saga task, whose base is not
    # FlaskTask: the steps' app context then comes from the Sagas extension alone.
    "SAGAS_START_ON_STEP_QUEUE": "true",
}

# Imported by the driver scripts: records every task message the process publishes, and whether
# the order's row was committed (visible to another connection) when it went out.
SHOP_PROBE = """
import os
import sqlite3

from celery.signals import before_task_publish

PUBLISHED = []


@before_task_publish.connect(weak=False)
def _record(sender=None, body=None, **_):
    args, kwargs = (body[0], body[1]) if isinstance(body, (list, tuple)) else ((), {})
    command = args[0] if args and isinstance(args[0], dict) else {}
    saga_id = kwargs.get("saga_id") or command.get("saga_id")
    db = os.path.join(os.environ["SHOP_ROOT"], "instance", "shop.db")
    with sqlite3.connect(db, timeout=30) as conn:
        order = (saga_id or "").removeprefix("order-")
        row = conn.execute('SELECT status FROM "order" WHERE id = ?', (order,)).fetchone()
    PUBLISHED.append((sender, saga_id, row is not None))
"""


def _copy_shop(root: Path) -> None:
    """The example, copied as a user would (no build leftovers), plus the test's probe."""
    shutil.copytree(EXAMPLE, root, dirs_exist_ok=True, ignore=IGNORE)
    (root / "shop" / "probe.py").write_text(textwrap.dedent(SHOP_PROBE).lstrip())


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_", "FLASK_"))}
    env.update(SHOP_ROOT=str(root), PYTHONPATH=str(root), **SHOP_SETTINGS, **extra)
    return env


def _run(root: Path, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout, check=False
    )


def _python(
    root: Path, code: str, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return _run(root, [python, "-c", textwrap.dedent(code)], timeout=90)


def _flask(
    root: Path, *args: str, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    return _run(root, [python, "-m", "flask", "--app", "shop", "saga", *args])


def _stop(proc: subprocess.Popen[str], log: Path) -> str:
    """Stop the worker (by its process group) and return what it logged."""
    stop_group(proc)
    return log.read_text()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The shop's directory, with the saga tables created by ``flask saga db upgrade``."""
    root = tmp_path_factory.mktemp("flask-shop")
    _copy_shop(root)
    upgrade = _flask(root, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    return root, upgrade.stdout


@contextlib.contextmanager
def _worker(root: Path, python: str = sys.executable) -> Iterator[Path]:
    """The example's worker with beat (the sweeper), on the coordinator and the steps' queue."""
    log = root / "worker.log"
    argv = ["worker", "-B", "-s", str(root / "beat-schedule"), "-Q", "shop-coordinator,shop"]
    argv += ["-P", "threads", "-c", "2", "--loglevel", "INFO"]
    proc = spawn([python, "-m", "celery", "-A", "shop.celery_app", *argv], root, _env(root), log)
    try:
        yield log
    finally:
        _stop(proc, log)


@pytest.fixture(scope="module")
def worker(shop: tuple[Path, str]) -> Iterator[Path]:
    root, _ = shop
    with _worker(root) as log:
        yield log


def _last_lines(result: subprocess.CompletedProcess[str], log: Path) -> str:
    return result.stderr[-3000:] + "\n--- worker ---\n" + log.read_text()[-3000:]


def test_flask_saga_db_upgrade_creates_the_store_in_the_apps_database(
    shop: tuple[Path, str],
) -> None:
    root, upgrade = shop
    assert upgrade.startswith("saga store at revision ")
    assert f"(<Store sqlite:///{root}/instance/shop.db>)" in upgrade  # Flask-SQLAlchemy's file
    again = _flask(root, "db", "upgrade")
    assert again.returncode == 0 and again.stdout == upgrade  # idempotent
    assert _flask(root, "list").stdout.strip() == "no sagas"


def test_settings_queues_and_the_sweeper_come_from_the_flask_config(
    shop: tuple[Path, str],
) -> None:
    root, _ = shop
    result = _python(
        root,
        """
        from shop import create_app
        import sagas
        app = create_app()
        ext = app.extensions["sagas"]
        celery_app = app.extensions["celery"]
        print(ext.celery is celery_app, sagas.get_runtime() is ext.runtime)
        print(ext.settings.coordinator_queue, ext.settings.sweep_interval, ext.settings.broker_url)
        print(celery_app.amqp.router.route({}, "sagas.start_saga")["queue"].name)
        print(celery_app.conf.beat_schedule["sagas-sweep"]["options"]["queue"])
        print(sorted(n for n in celery_app.tasks if n.startswith("saga.")))
        tasks = celery_app.tasks
        print([isinstance(tasks[n], celery_app.Task) for n in ("saga.shop_order.reserve", "sagas.start_saga", "choreography.event")])
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "True True",
        "shop-coordinator 0.5 filesystem://",
        "shop-coordinator",
        "shop-coordinator",
        "['saga.shop_order.charge', 'saga.shop_order.reserve', "
        "'saga.shop_order.reserve.compensate']",
        # Step tasks get Flask's FlaskTask base (shared tasks take the app's Task); the engine's
        # tasks, which may run steps inline, and choreography handlers do not.
        "[True, False, False]",
    ]


def test_orders_complete_compensate_and_a_rolled_back_request_starts_none(
    shop: tuple[Path, str], worker: Path
) -> None:
    root, _ = shop
    result = _python(
        root,
        """
        import json
        from shop import create_app, db
        from shop.models import Charge, Order
        from shop.probe import PUBLISHED
        import sagas

        app = create_app()
        client = app.test_client()
        def post(url, **body):
            r = client.post(url, json={"item": "book", **body}, headers={"X-Request-ID": "req-" + body["order_id"]})
            return r.status_code, r.get_json()
        print(post("/orders", order_id="o1"))
        print(post("/orders", order_id="o2", declined=True))
        print(post("/orders-broken", order_id="o3"))
        print(post("/orders", order_id="o4", quantity=0))
        print(post("/orders/by-message", order_id="o7"))
        print(PUBLISHED)
        for sid in ("order-o1", "order-o2", "order-o7"):
            info = sagas.wait(sid, timeout=60)
            print(sid, info.state.value, info.correlation_id, [(s.name, s.state.value) for s in info.steps])
            print(json.dumps([s.result for s in info.steps]))
        with app.app_context():
            print(sorted((o.id, o.status) for o in db.session.scalars(db.select(Order))))
            print(sorted((c.order_id, c.charged_by) for c in db.session.scalars(db.select(Charge))))
        for sid in ("order-o3", "order-o4"):
            try:
                sagas.get(sid)
            except sagas.SagaNotFound as exc:
                print(type(exc).__name__)
        """,
    )
    assert result.returncode == 0, _last_lines(result, worker)
    lines = result.stdout.splitlines()
    assert lines[0] == "(202, {'saga_id': 'order-o1'})"
    assert lines[1] == "(202, {'saga_id': 'order-o2'})"
    assert lines[2] == "(500, None)"  # the view raised: the session was rolled back
    assert lines[3] == "(400, {'error': 'PayloadInvalid', 'field': 'payload.quantity'})"
    assert lines[4] == "(202, {'saga_id': 'order-o7'})"
    # Every message went out after its order's row was committed (visible to another
    # connection): o1 and o2 were written in the request's transaction and their first step
    # sent after the commit; o7 by a start message; none for the rolled-back or rejected ones.
    assert lines[5] == (
        "[('saga.shop_order.reserve', 'order-o1', True), "
        "('saga.shop_order.reserve', 'order-o2', True), ('sagas.start_saga', 'order-o7', True)]"
    )
    assert lines[6] == (
        "order-o1 completed req-o1 [('reserve', 'succeeded'), ('charge', 'succeeded')]"
    )
    # Step 1 ran as its own task (FlaskTask), step 2 inline after it: both in the app context.
    assert json.loads(lines[7]) == [
        {"reserved": "book", "task": "saga.shop_order.reserve"},
        {"charged": "o1", "by": "shop", "task": "saga.shop_order.reserve"},
    ]
    assert lines[8] == "order-o2 failed req-o2 [('reserve', 'compensated'), ('charge', 'failed')]"
    assert json.loads(lines[9]) == [{"reserved": "book", "task": "saga.shop_order.reserve"}, None]
    # The start message ran step 1 (and step 2 inline) in the sagas.start_saga task, whose base
    # is not FlaskTask: the steps' app context then comes from the Sagas extension alone.
    assert lines[10] == (
        "order-o7 completed req-o7 [('reserve', 'succeeded'), ('charge', 'succeeded')]"
    )
    assert json.loads(lines[11]) == [
        {"reserved": "book", "task": "sagas.start_saga"},
        {"charged": "o7", "by": "shop", "task": "sagas.start_saga"},
    ]
    # The step and the compensation wrote through db.session in the worker's app context.
    assert lines[12] == "[('o1', 'paid'), ('o2', 'released by shop'), ('o7', 'paid')]"
    assert lines[13] == "[('o1', 'shop'), ('o7', 'shop')]"
    assert lines[14:] == ["SagaNotFound", "SagaNotFound"]


def test_operator_retry_and_cancel_through_flask_saga(shop: tuple[Path, str], worker: Path) -> None:
    root, _ = shop
    held = _python(
        root,
        """
        import time
        from shop import create_app
        import sagas

        client = create_app().test_client()
        for order in ("o5", "o6"):
            assert client.post("/orders", json={"order_id": order, "item": "pen", "hold": True}).status_code == 202
        for sid in ("order-o5", "order-o6"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    info = sagas.get(sid)
                except sagas.SagaNotFound:
                    info = None
                if info and any(h.kind == "retry_scheduled" for h in info.history):
                    break
                time.sleep(0.1)
            print(sid, info.state.value, info.step("charge").state.value, info.step("charge").attempt)
        """,
    )
    assert held.returncode == 0, _last_lines(held, worker)
    assert held.stdout.splitlines() == [
        "order-o5 pending pending 1",
        "order-o6 pending pending 1",
    ]

    (root / "instance" / "go-o5").write_text(
        ""
    )  # the processor is back for o5: the operator re-drives it
    retry = _flask(root, "retry", "order-o5", "--reason", "processor back, ticket 42", "--yes")
    assert retry.returncode == 0, retry.stderr
    assert "will re-run charge" in retry.stdout  # the plan, printed before acting
    assert retry.stdout.splitlines()[-1] == "saga order-o5: retry dispatched (pending)"
    cancel = _flask(root, "cancel", "order-o6", "--reason", "customer called", "--yes")
    assert cancel.returncode == 0, cancel.stderr
    assert cancel.stdout.splitlines()[-1] == "saga order-o6: cancelled, now compensating"

    finished = _python(
        root,
        """
        import json
        from shop import create_app
        import sagas

        create_app()
        for sid in ("order-o5", "order-o6"):
            info = sagas.wait(sid, timeout=60)
            operator = [(h.kind, h.detail) for h in info.history if h.kind in ("operator_retry", "cancel_requested")]
            print(sid, info.state.value, [(s.name, s.state.value, s.attempt) for s in info.steps], operator)
        print(json.dumps(sagas.get("order-o5").step("charge").result))
        """,
    )
    assert finished.returncode == 0, _last_lines(finished, worker)
    lines = finished.stdout.splitlines()
    assert lines[0].startswith(
        "order-o5 completed [('reserve', 'succeeded', 1), ('charge', 'succeeded', 2)] "
        "[('operator_retry', {"
    ), lines[0]
    assert "'reason': 'processor back, ticket 42'" in lines[0]
    assert lines[1].startswith(
        "order-o6 failed [('reserve', 'compensated', 1), ('charge', 'failed', 1)] "
        "[('cancel_requested', {"
    ), lines[1]
    assert "'reason': 'customer called'" in lines[1]
    # The re-driven attempt ran in the step's own task (FlaskTask base plus the extension's
    # context: nested app contexts of the same app).
    assert json.loads(lines[2]) == {"charged": "o5", "by": "shop", "task": "saga.shop_order.charge"}

    listed = _flask(root, "list", "--name", "shop_order")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()[2:]}
    assert rows["order-o5"] == "completed" and rows["order-o6"] == "failed"
    shown = _flask(root, "show", "order-o5")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("saga order-o5  shop_order v1  state=completed")
    assert "correlation=" in shown.stdout
    assert "operator_retry" in shown.stdout and "processor back, ticket 42" in shown.stdout
    missing = _flask(root, "show", "order-o3")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no saga with id 'order-o3'"


AFTER_COMMIT = """
from shop import create_app, db
from shop.models import Order
from shop.probe import PUBLISHED
import sagas
from sagas.contrib.flask import start_saga_after_commit

app = create_app()

def start(order):
    return start_saga_after_commit("shop_order", {"order_id": order, "item": "x"}, saga_id="order-" + order)

def sent():
    found = [sid for _, sid, _ in PUBLISHED]
    PUBLISHED.clear()
    return found

with app.app_context():
    db.session.add(Order(id="a1", item="x")); start("a1")
    print("before commit", sent())
    db.session.commit()
    print("commit", sent())

    db.session.add(Order(id="a2", item="x")); start("a2")
    db.session.rollback()
    print("rollback", sent())

    db.session.add(Order(id="a3", item="x")); start("a3")
    savepoint = db.session.begin_nested()
    db.session.add(Order(id="a4", item="x")); start("a4")
    savepoint.rollback()
    savepoint = db.session.begin_nested()
    db.session.add(Order(id="a5", item="x")); start("a5")
    savepoint.commit()
    print("savepoints open", sent())
    db.session.commit()
    print("savepoints then commit", sent())

    db.session.add(Order(id="a6", item="x"))
    with db.session.begin_nested():
        start("a6")
    db.session.rollback()
    print("released savepoint, root rolled back", sent())

    db.session.add(Order(id="a7", item="x")); start("a7")
    db.session.close()
    db.session.add(Order(id="a8", item="x")); db.session.commit()
    print("closed uncommitted, next commit", sent())

    db.session.commit()  # ends the autobegun transaction: none in progress now
    print("no transaction", start("a9"), sent())

    for bad in ({"order_id": "b1"}, {"order_id": "b1", "item": "x", "quantity": -1}):
        try:
            start_saga_after_commit("shop_order", bad, saga_id="order-b1")
        except sagas.PayloadInvalid as exc:
            print(type(exc).__name__, exc.field)
    for name, sid in (("no_such_saga", "s1"), ("shop_order", "bad id")):
        try:
            start_saga_after_commit(name, {"order_id": "b2", "item": "x"}, saga_id=sid)
        except sagas.SagaInputError as exc:
            print(type(exc).__name__, exc.field)
    db.session.commit()
    print("after the rejected starts", sent())
"""


def test_start_after_commit_follows_the_session_transaction(tmp_path: Path) -> None:
    """Commit, rollback, savepoints, a close without commit and no transaction at all (no
    worker: what matters is what is published and when)."""
    _copy_shop(tmp_path)
    result = _python(tmp_path, AFTER_COMMIT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "before commit []",
        "commit ['order-a1']",
        "rollback []",
        "savepoints open []",
        "savepoints then commit ['order-a3', 'order-a5']",
        "released savepoint, root rolled back []",
        "closed uncommitted, next commit []",
        "no transaction order-a9 ['order-a9']",
        "PayloadInvalid payload.item",
        "PayloadInvalid payload.quantity",
        "UnknownSaga name",
        "InvalidSagaId saga_id",
        "after the rejected starts []",
    ]


JOINED = """
import os
import sqlite3

from sqlalchemy import text

import sagas
from shop import create_app, db
from shop.models import Order
from shop.probe import PUBLISHED
from shop.sagas import shop_order

app = create_app()
ctx = app.app_context()
ctx.push()
DB = os.path.join(app.instance_path, "shop.db")


def outside(saga_id):  # what another connection sees: committed rows only
    with sqlite3.connect(DB, timeout=30) as conn:
        row = conn.execute("SELECT state FROM saga WHERE id = ?", (saga_id,)).fetchone()
    return row[0] if row else "absent"


def inside(saga_id):  # what this session's transaction sees
    row = db.session.execute(text("SELECT state FROM saga WHERE id = :id"), {"id": saga_id}).first()
    return row[0] if row else "absent"


def sent():
    done = [saga_id for _, saga_id, _ in PUBLISHED]
    PUBLISHED.clear()
    return done


def order(ref, **extra):
    db.session.add(Order(id=ref, item="book"))
    return shop_order.start({"order_id": ref, "item": "book", **extra}, saga_id="order-" + ref)


# A session that has written: the saga joins its transaction.
sid = order("j1")
again = shop_order.start({"order_id": "j1", "item": "book"}, saga_id="order-j1")
try:
    shop_order.start({"order_id": "j1", "item": "lamp"}, saga_id="order-j1")
except sagas.SagaConflict as exc:
    conflict = type(exc).__name__
print("written", sid, again, conflict, inside(sid), outside(sid), sent())
db.session.commit()
print("committed", outside(sid), sent())

# Rolled back with the session: no saga, nothing sent.
order("j2")
db.session.rollback()
print("rolled back", outside("order-j2"), sent())

# Flushed earlier in the transaction (nothing pending now): still joined.
db.session.add(Order(id="j3", item="book"))
db.session.flush()
shop_order.start({"order_id": "j3", "item": "book"}, saga_id="order-j3")
print("after a flush", outside("order-j3"), sent())
db.session.commit()
print("committed", outside("order-j3"), sent())

# A savepoint that rolls back takes its saga with it; the root commits without it.
db.session.add(Order(id="j4", item="book"))
try:
    with db.session.begin_nested():
        order("j5")
        raise RuntimeError("undo the savepoint")
except RuntimeError:
    pass
db.session.commit()
print("savepoint rolled back", outside("order-j5"), sent())

# A session that has only read: the start commits at once, as with no session at all.
db.session.scalars(db.select(Order)).all()
shop_order.start({"order_id": "j6", "item": "book"}, saga_id="order-j6")
print("read only", outside("order-j6"), sent())
db.session.rollback()
print("after its rollback", outside("order-j6"))
"""


def test_start_joins_the_sessions_transaction(tmp_path: Path) -> None:
    """``saga.start()`` after the session has written: the saga row is in the session's
    transaction (seen inside it, not outside), a repeat is idempotent and a different payload a
    conflict without breaking the transaction; commit publishes the first step, rollback and a
    rolled-back savepoint leave nothing; a read-only session does not hold the start back."""
    _copy_shop(tmp_path)
    upgrade = _flask(tmp_path, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    result = _python(tmp_path, JOINED)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "written order-j1 order-j1 SagaConflict pending absent []",
        "committed pending ['order-j1']",
        "rolled back absent []",
        "after a flush absent []",
        "committed pending ['order-j3']",
        "savepoint rolled back absent []",
        "read only pending ['order-j6']",
        "after its rollback pending",
    ]


CONFIG_ERRORS = """
import os
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from celery import Celery
from sagas import ConfigurationError
from sagas.contrib.flask import Sagas

def attempt(make):
    try:
        make()
        print("ok")
    except ConfigurationError as exc:
        print(exc.setting, "|", exc)

def no_celery():
    Sagas(Flask("a"))

def db_after_sagas():
    app = Flask("b")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///b.db"
    Sagas(app, celery=Celery("b"))

def in_memory():
    app = Flask("c")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    SQLAlchemy(app)
    Sagas(app, celery=Celery("c"))

def explicit_url():
    app = Flask("d")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", SAGAS_DATABASE_URL="sqlite:///sagas-d.db")
    SQLAlchemy(app)
    print(Sagas(app, celery=Celery("d")).settings.database_url)

def wrong_type():
    app = Flask("e")
    app.config["SAGAS_SWEEP_INTERVAL"] = "soon"
    Sagas(app, celery=Celery("e"))

def factory_twice():
    import sagas.contrib.flask as contrib
    ext = Sagas()
    for name in ("f1", "f2"):
        app = Flask(name)
        app.extensions["celery"] = Celery(name)
        ext.init_app(app)
    with app.app_context():
        print(ext.celery.main, contrib.current_celery_app is ext.celery, app.extensions["sagas"] is ext)
    print("saga" in app.cli.commands, sorted(app.cli.commands["saga"].commands))
    try:
        contrib.current_celery_app
    except AttributeError as exc:
        print(exc)

for make in (no_celery, db_after_sagas, in_memory, explicit_url, wrong_type, factory_twice):
    attempt(make)
"""


def test_configuration_mistakes_are_named(tmp_path: Path) -> None:
    result = _python(tmp_path, CONFIG_ERRORS)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("celery | Sagas needs the Celery app")
    assert lines[1].startswith("database_url | SQLALCHEMY_DATABASE_URI is set but Flask-SQLAlchemy")
    assert lines[2].startswith("database_url | the app's database is an in-memory SQLite")
    assert lines[3:5] == ["sqlite:///sagas-d.db", "ok"]
    assert lines[5].startswith(
        "sweep_interval | setting sagas_sweep_interval / SAGAS_SWEEP_INTERVAL"
    )
    # An extension object made at module level, init_app'd per app (a factory called twice):
    # each app's own Celery app from app.extensions["celery"].
    assert lines[6:] == [
        "f2 True True",
        "True ['bulk', 'cancel', 'dashboard', 'db', 'dlq', 'doctor', 'fork', 'graph', 'list', "
        "'metrics', 'pause', 'prune', 'rerun', 'resume', 'retry', 'show', 'signal', 'stuck', "
        "'versions']",
        "current_celery_app needs a Flask app context",
        "ok",
    ]


def _plain_env(cwd: Path) -> dict[str, str]:
    """The environment of a user's shell: none of this checkout's settings or import path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_", "FLASK_"))}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    return env


def _check(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=_plain_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


WHEEL_DRIVER = """
import json
import os
import sys
import time

import sagas
from shop import create_app, db
from shop.models import Order
from shop.sagas import shop_order

app = create_app()
client = app.test_client()
phase = sys.argv[1]


def wait_for_retry(sid):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if any(h.kind == "retry_scheduled" for h in sagas.get(sid).history):
                return sagas.get(sid)
        except sagas.SagaNotFound:
            pass
        time.sleep(0.1)
    raise AssertionError(sid)


if phase == "views":
    for url, body in (
        ("/orders", {"order_id": "w1", "item": "book"}),
        ("/orders", {"order_id": "w2", "item": "lamp", "declined": True}),
        ("/orders-broken", {"order_id": "w3", "item": "pen"}),
        ("/orders", {"order_id": "w4", "item": "pen", "hold": True}),
    ):
        r = client.post(url, json=body)
        print(url, r.status_code, r.get_json())
    for sid in ("order-w1", "order-w2"):
        info = sagas.wait(sid, timeout=60)
        print(sid, info.state.value, [(s.name, s.state.value) for s in info.steps])
    info = wait_for_retry("order-w4")
    print("order-w4", info.state.value, info.step("charge").state.value)
    try:
        sagas.get("order-w3")
    except sagas.SagaNotFound as exc:
        print(type(exc).__name__)
    print(sagas.__file__)
elif phase == "crash":
    # SAGAS_FAULTS=coordinator.start_after_commit=exit: the process dies after the commit,
    # before the first step is published; the sweeper finds it in the row's outbox.
    with app.app_context():
        db.session.add(Order(id="w5", item="book"))
        shop_order.start({"order_id": "w5", "item": "book"}, saga_id="order-w5")
        print("written in the transaction", flush=True)
        db.session.commit()
    print("not reached")
elif phase == "finished":
    for sid in ("order-w4", "order-w5"):
        info = sagas.wait(sid, timeout=60)
        kinds = [h.kind for h in info.history]
        print(sid, info.state.value, [(s.name, s.state.value, s.attempt) for s in info.steps],
              "operator_retry" in kinds, "commands_republished" in kinds)
    with app.app_context():
        print(sorted((o.id, o.status) for o in db.session.scalars(db.select(Order))))
"""


def test_the_example_runs_from_a_plain_install(
    wheel_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The README's steps exactly: ``pip install "celery-sagas[flask]"`` (no database driver,
    no broker client), the example's defaults (SQLite in ``instance/``, a ``filesystem://``
    broker), ``flask saga db upgrade``, ``celery worker -B``, then the views."""
    root = tmp_path_factory.mktemp("shop-plain")
    shutil.copytree(EXAMPLE, root, dirs_exist_ok=True, ignore=IGNORE)
    upgrade = _check(
        [str(wheel_venv / "flask"), "--app", "shop", "saga", "db", "upgrade"], root, 60
    )
    assert f"(<Store sqlite:///{root}/instance/shop.db>)" in upgrade.stdout
    log = root / "worker.log"
    worker = [str(wheel_venv / "celery"), "-A", "shop.celery_app", "worker", "-B"]
    worker += ["-Q", "sagas,shop", "-s", str(root / "beat-schedule"), "-P", "threads", "-c", "2"]
    proc = spawn([*worker, "-l", "INFO"], root, _plain_env(root), log)
    try:
        views = subprocess.run(
            [str(wheel_venv / "python"), "-c", WHEEL_DRIVER, "views"], cwd=root,
            env=_plain_env(root), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        logged = _stop(proc, log)
    assert views.returncode == 0, views.stderr[-3000:] + "\n--- worker ---\n" + logged[-3000:]
    lines = views.stdout.splitlines()
    assert lines[:8] == VIEWS_OUTPUT, views.stdout
    assert Path(lines[8]).is_relative_to(wheel_venv.parent)  # the installed wheel


VIEWS_OUTPUT = [
    "/orders 202 {'saga_id': 'order-w1'}",
    "/orders 202 {'saga_id': 'order-w2'}",
    "/orders-broken 500 None",  # the view raised after starting: rolled back, nothing sent
    "/orders 202 {'saga_id': 'order-w4'}",
    "order-w1 completed [('reserve', 'succeeded'), ('charge', 'succeeded')]",
    "order-w2 failed [('reserve', 'compensated'), ('charge', 'failed')]",
    "order-w4 pending pending",
    "SagaNotFound",
]


def test_the_example_runs_from_the_wheel_on_postgresql_and_redis(
    wheel_venv_services: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The README's path, from outside the checkout: the wheel installed into a fresh
    virtualenv, the example copied out and pointed at PostgreSQL (the shop's database and the
    saga store) and Redis, ``flask saga db upgrade``, ``celery worker -B``, then orders through
    the test client, a crash between a start's commit and its publish (the sweeper repairs
    it) and an operator retry with ``flask saga retry``."""
    require("Redis", REDIS_BROKER)
    redis = Redis.from_url(REDIS_BROKER)
    redis.flushdb()
    bin_dir = wheel_venv_services
    python = str(bin_dir / "python")
    root = tmp_path_factory.mktemp("shop-from-wheel")
    shutil.copytree(EXAMPLE, root, dirs_exist_ok=True, ignore=IGNORE)
    flask = [str(bin_dir / "flask"), "--app", "shop", "saga"]
    with scratch_database("sagas_flask_shop") as url:
        env = _plain_env(root)
        env.update(
            SHOP_DATABASE_URL=url,
            CELERY_BROKER_URL=REDIS_BROKER,
            SAGAS_SWEEP_INTERVAL="1",
            SAGAS_OUTBOX_GRACE="1",
        )

        def run(argv: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                argv, cwd=root, env={**env, **extra}, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip

        upgrade = run([*flask, "db", "upgrade"])
        assert upgrade.returncode == 0, upgrade.stderr[-3000:]
        assert f"(<Store {url}>)" in upgrade.stdout, upgrade.stdout

        log = root / "worker.log"
        worker = [str(bin_dir / "celery"), "-A", "shop.celery_app", "worker", "-B"]
        worker += ["-Q", "sagas,shop", "-s", str(root / "beat-schedule")]
        worker += ["-P", "threads", "-c", "2", "-l", "INFO"]
        proc = spawn(worker, root, env, log)
        try:
            views = run([python, "-c", WHEEL_DRIVER, "views"])
            assert views.returncode == 0, (
                views.stderr[-3000:] + "\n--- worker ---\n" + (log.read_text()[-3000:])
            )
            crash = run(
                [python, "-c", WHEEL_DRIVER, "crash"],
                SAGAS_FAULTS="coordinator.start_after_commit=exit",
            )
            (root / "instance").mkdir(exist_ok=True)
            (root / "instance" / "go-w4").write_text("")  # the processor is back for w4
            retry = run([*flask, "retry", "order-w4", "--reason", "processor back", "--yes"])
            finished = run([python, "-c", WHEEL_DRIVER, "finished"])
            listed = run([*flask, "list"])
        finally:
            logged = _stop(proc, log)
    redis.flushdb()

    lines = views.stdout.splitlines()
    assert lines[:8] == VIEWS_OUTPUT, views.stdout
    assert Path(lines[8]).is_relative_to(bin_dir.parent)  # the installed wheel, not this checkout
    assert (crash.returncode, crash.stdout) == (1, "written in the transaction\n"), crash.stderr
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.splitlines()[-1] == "saga order-w4: retry dispatched (pending)"
    assert finished.returncode == 0, finished.stderr[-3000:] + logged[-3000:]
    assert finished.stdout.splitlines() == [
        "order-w4 completed [('reserve', 'succeeded', 1), ('charge', 'succeeded', 2)] True False",
        "order-w5 completed [('reserve', 'succeeded', 1), ('charge', 'succeeded', 1)] False True",
        "[('w1', 'paid'), ('w2', 'released by shop'), ('w4', 'paid'), ('w5', 'paid')]",
    ], finished.stdout
    assert "saga.shop_order.charge" in logged and "beat: Starting" in logged
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()[2:]}
    assert rows == {
        "order-w1": "completed",
        "order-w2": "failed",
        "order-w4": "completed",
        "order-w5": "completed",
    }


def test_the_examples_own_tests_use_the_testing_kit(tmp_path: Path) -> None:
    """``examples/flask_shop/tests`` run as the shop's developers would (``pytest`` in the
    project, the kit's fixtures from its ``pytest.ini``): through the views, with a step
    double, and the crash-point harness over the order saga."""
    shutil.copytree(EXAMPLE, tmp_path, dirs_exist_ok=True, ignore=IGNORE)
    env = _plain_env(tmp_path)
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].startswith("5 passed"), done.stdout[-2000:]
