"""The Django example project, ``examples/django_shop/`` (the code docs/django.md walks through:
``INSTALLED_APPS += ["sagas.contrib.django"]``, ``sagas.install`` in the standard
``proj/celery.py``, a ``shop`` app with ``shop/sagas.py`` and checkout views using
``start_saga_on_commit``), copied to a temporary directory and configured through its environment
variables: ``manage.py migrate``, ``manage.py saga db upgrade``, a real
``celery -A proj worker -B``, the admin and ``manage.py saga``; and once more against a wheel
installed into a fresh virtualenv, as a user who copies the example gets it.

Django's settings are process-global, so nothing here configures Django in the pytest process:
every Django interaction runs in a subprocess (``manage.py``, the worker, a driver script using
``django.test.Client``). No servers: SQLite (the project's database is the saga store) and a
``filesystem://`` broker in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import make_url

from sagas.store.migrate import head_revision
from tests.services import require, scratch_database
from tests.wheelhouse import spawn, stop_group

pytestmark = pytest.mark.workers

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "django_shop"
REDIS_BROKER = "redis://127.0.0.1:6379/11"  # this module's own Redis database

DRIVER = r"""
import html
import os
import re
import time
import venv

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
django.setup()

from django.contrib.auth.models import Permission, User
from django.test import Client

import sagas
from sagas import SagaNotFound
from shop.models import Order


def out(*parts):
    print(*parts, flush=True)


def html_of(response):
    return response.content.decode()


def messages_of(response):
    found = re.findall(r'<li class="(success|error)">(.*?)</li>', html_of(response))
    return sorted((level, html.unescape(text)) for level, text in found)


def history(saga_id, kind):
    return [h.detail for h in sagas.get(saga_id).history if h.kind == kind]


ops = User.objects.create_superuser("ops", "ops@example.com", "pw")
c = Client(raise_request_exception=False)
c.force_login(ops)

# -- starting from views ---------------------------------------------------------------------
r = c.post("/checkout/", {"ref": "1"}, headers={"X-Request-ID": "req-1"})
out("checkout", r.status_code, r.json()["saga_id"])
r = c.post("/checkout/", {"ref": "2", "declined": "1"})
out("declined", r.status_code, r.json()["saga_id"])
r = c.post("/checkout/", {"ref": "3", "total_cents": "-5"})
out("invalid", r.status_code, r.json(), Order.objects.filter(ref="3").exists())
r = c.post("/checkout-then-fail/", {"ref": "4"})
out("rolled back", r.status_code, Order.objects.filter(ref="4").exists())
r = c.post("/checkout/approval/", {"ref": "5"})
out("approval", r.status_code, r.json()["saga_id"])
r = c.post("/checkout/by-message/", {"ref": "7"})
out("by message", r.status_code, r.json()["saga_id"])

# -- saga.start() inside atomic(): the saga row is written in that transaction -----------------
from django.db import connection, transaction
from sagas import SagaConflict
from shop.sagas import shop_order


def seen_by_the_store(saga_id):
    try:
        return sagas.get(saga_id).state.value
    except SagaNotFound:
        return "absent"


with transaction.atomic():
    Order.objects.create(ref="6", total_cents=700)
    first = shop_order.start({"ref": "6", "total_cents": 700}, saga_id="order-6")
    again = shop_order.start({"ref": "6", "total_cents": 700}, saga_id="order-6")
    try:
        shop_order.start({"ref": "6", "total_cents": 701}, saga_id="order-6")
    except SagaConflict as exc:
        conflict = type(exc).__name__
    with connection.cursor() as cur:  # this transaction sees its own uncommitted saga row
        cur.execute("SELECT state, outbox IS NOT NULL FROM saga WHERE id = %s", ["order-6"])
        state, has_outbox = cur.fetchone()
        inside = (state, bool(has_outbox))
    Order.objects.create(ref="6b", total_cents=1)  # the transaction is still usable
    out("in transaction", first, again, conflict, inside, seen_by_the_store("order-6"))
out("after commit", sagas.wait("order-6", timeout=30).state.value)

for sid in ("order-1", "order-2", "order-7"):
    info = sagas.wait(sid, timeout=30)
    out(sid, info.state.value, info.correlation_id if sid == "order-1" else "-",
        [(s.name, s.state.value) for s in info.steps])
deadline = time.monotonic() + 30
while sagas.get("order-5").steps[1].state.value != "running":  # reserved, awaiting approval
    assert time.monotonic() < deadline, sagas.get("order-5")
    time.sleep(0.05)
out("orders", sorted(Order.objects.values_list("ref", "status")))
time.sleep(1.0)  # a start sent before the rollback would have been recorded by now
try:
    sagas.get("order-4")
    out("order-4 exists")
except SagaNotFound:
    out("order-4 not found")

# -- the admin: list, filters, search, detail page --------------------------------------------
r = c.get("/admin/sagas/saga/?state__exact=failed")
page = html_of(r)
out("failed list", r.status_code, "order-2" in page, "order-1" in page, "order-5" in page)
r = c.get("/admin/sagas/saga/?q=req-1")
out("search", r.status_code, "order-1" in html_of(r), "order-2" in html_of(r))
r = c.get("/admin/sagas/saga/order-2/change/")
page = html_of(r)
steps = page[page.index('class="saga-steps"'):page.index('class="saga-history"')]
out("detail", r.status_code, "charge" in steps, "compensated" in steps, "card declined" in steps)
kinds = re.findall(r"<td>(saga_started|step_failed|step_compensated|saga_failed)</td>", page)
out("timeline", kinds)
out("dashboard links", 'href="/ops/sagas/sagas/order-2"' in page,
    'id="sagas-dashboard"' in html_of(c.get("/admin/sagas/saga/")))
r = c.get("/admin/sagas/saga/add/")
out("add", r.status_code)
r = c.post("/admin/sagas/saga/order-2/delete/", {"post": "yes"})
out("delete", r.status_code, sagas.get("order-2").state.value)

# -- operator actions -------------------------------------------------------------------------
changelist = "/admin/sagas/saga/"
r = c.post(changelist, {"action": "retry_sagas", "_selected_action": ["order-5"], "index": "0"})
page = html_of(r)
out("confirm page", r.status_code, "Retry sagas" in page, 'name="reason"' in page,
    "csrfmiddlewaretoken" in page)
r = c.post(changelist, {"action": "retry_sagas", "_selected_action": ["order-5"], "confirm": "yes",
                        "reason": ""})
out("no reason", r.status_code, "This field is required." in html_of(r),
    len(history("order-5", "operator_retry")))
r = c.post(changelist, {"action": "retry_sagas", "_selected_action": ["order-5", "order-1"],
                        "confirm": "yes", "reason": "approvals were stuck"}, follow=True)
out("retry", r.status_code, messages_of(r))
out("retry history", history("order-5", "operator_retry"))

# CSRF: the same confirmation refused without the token, accepted with it.
strict = Client(enforce_csrf_checks=True)
strict.force_login(ops)
form = {"action": "cancel_sagas", "_selected_action": ["order-5"], "confirm": "yes",
        "reason": "customer changed their mind"}
r = strict.post(changelist, form)
out("no csrf", r.status_code, len(history("order-5", "cancel_requested")))
strict.get(changelist)
token = strict.cookies["csrftoken"].value
r = strict.post(changelist, {**form, "csrfmiddlewaretoken": token}, follow=True)
out("cancel", r.status_code, messages_of(r))
info = sagas.wait("order-5", timeout=30)
out("cancelled", info.state.value, [(s.name, s.state.value) for s in info.steps],
    history("order-5", "cancel_requested"))
out("order-5 status", Order.objects.get(ref="5").status)

# A staff user who may only view sagas is offered no actions and cannot run them.
viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
viewer.user_permissions.add(Permission.objects.get(codename="view_saga"))
v = Client(raise_request_exception=False)
v.force_login(viewer)
r = v.get(changelist)
out("viewer list", r.status_code, "order-1" in html_of(r), "retry_sagas" in html_of(r))
r = v.post(changelist, {"action": "retry_sagas", "_selected_action": ["order-5"],
                        "confirm": "yes", "reason": "x"}, follow=True)
out("viewer retry", r.status_code, messages_of(r), len(history("order-5", "operator_retry")))
"""


def _copy_example(dest: Path) -> Path:
    """The example as a user copies it: without what a local try left in the checkout."""
    ignore = shutil.ignore_patterns(
        "__pycache__", "*.db", "*.sqlite3", "broker", "celerybeat-schedule*"
    )
    shutil.copytree(EXAMPLE, dest, ignore=ignore)
    return dest


def _clean_env() -> dict[str, str]:
    prefixes = ("SAGAS_", "CELERY_", "DJANGO_", "SHOP_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _env(root: Path, **extra: str) -> dict[str, str]:
    """The example configured through its environment: the database and the broker's folder
    outside the project, the coordinator on its own queue, a fast sweeper."""
    env = _clean_env()
    env.update(
        PYTHONPATH=str(root),
        DJANGO_SETTINGS_MODULE="proj.settings",
        SHOP_DATABASE=str(root.parent / "shop.sqlite3"),
        CELERY_BROKER_URL="filesystem://",
        SHOP_BROKER_FOLDER=str(root.parent / "broker"),
        SHOP_ALLOWED_HOSTS="testserver",
        SHOP_DEBUG="0",
        SAGAS_COORDINATOR_QUEUE="shop-coordinator",
        SAGAS_SWEEP_INTERVAL="0.5",
        SAGAS_DASHBOARD_URL="/ops/sagas",  # the admin links there (a mounted dashboard)
        **extra,
    )
    return env


def _run(
    root: Path, *argv: str, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=root,
        env=_env(root, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _manage(root: Path, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return _run(root, "manage.py", *argv, **extra)


def _manage_all(root: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Several independent ``manage.py`` commands at once (each one's start-up is most of it)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", *argv],
            cwd=root,
            env=_env(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in commands
    ]
    done = []
    for argv, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return done


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = _copy_example(tmp_path / "django_shop")
    (root / "driver.py").write_text(DRIVER)
    return root


@contextmanager
def _worker(
    project: Path, argv: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A real ``celery -A proj worker -B`` (stopped by its process group)."""
    if argv is None:
        argv = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-B"]
        argv += ["-s", str(project / "beat-schedule"), "-Q", "shop-coordinator,shop"]
        argv += ["-P", "threads", "-c", "2", "--loglevel", "INFO"]
    proc = spawn(argv, project, _env(project) if env is None else env, project / "worker.log")
    try:
        yield proc
    finally:
        stop_group(proc)


def _worker_log(project: Path) -> str:
    return (project / "worker.log").read_text()[-4000:]


def test_checkout_admin_and_manage_py_saga(project: Path) -> None:
    migrate = _manage(project, "migrate", "--noinput")
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    upgrade = _manage(project, "saga", "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    db = project.parent / "shop.sqlite3"
    assert upgrade.stdout == f"saga store at revision {head_revision()} (<Store sqlite:///{db}>)\n"

    with _worker(project):
        driver = _run(project, "driver.py", timeout=120)
        assert driver.returncode == 0, driver.stderr[-4000:] + _worker_log(project)
        listed, shown, bad_retry = _manage_all(
            project,
            ["saga", "list"],
            ["saga", "show", "order-2"],
            ["saga", "retry", "order-1", "--reason", "again"],
        )

    lines = driver.stdout.splitlines()
    assert lines == [
        "checkout 202 order-1",
        "declined 202 order-2",
        "invalid 400 {'error': 'PayloadInvalid', 'field': 'payload.total_cents'} False",
        "rolled back 500 False",
        "approval 202 order-5",
        "by message 202 order-7",
        "in transaction order-6 order-6 SagaConflict ('pending', True) absent",
        "after commit completed",
        "order-1 completed req-1 [('reserve', 'succeeded'), ('charge', 'succeeded')]",
        "order-2 failed - [('reserve', 'compensated'), ('charge', 'failed')]",
        "order-7 completed - [('reserve', 'succeeded'), ('charge', 'succeeded')]",
        "orders [('1', 'paid'), ('2', 'released'), ('5', 'reserved'), ('6', 'paid'), "
        "('6b', 'new'), ('7', 'paid')]",
        "order-4 not found",
        "failed list 200 True False False",
        "search 200 True False",
        "detail 200 True True True",
        "timeline ['saga_started', 'step_failed', 'step_compensated', 'saga_failed']",
        "dashboard links True True",
        "add 403",
        "delete 403 failed",
        "confirm page 200 True True True",
        "no reason 200 True 0",
        "retry 200 [('error', \"Saga order-1: nothing to retry: saga 'order-1' is completed\"), "
        "('success', 'Saga order-5: retried (pending)')]",
        "retry history [{'by': 'ops (admin)', 'reason': 'approvals were stuck', 'was': 'running'}]",
        "no csrf 403 0",
        "cancel 200 [('success', 'Saga order-5: cancelled (compensating)')]",
        "cancelled failed [('reserve', 'compensated'), ('approve', 'timed_out')] "
        "[{'by': 'ops (admin)', 'reason': 'customer changed their mind'}]",
        "order-5 status released",
        "viewer list 200 True False",
        "viewer retry 200 [] 1",
    ]

    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in listed.stdout.splitlines()[2:]}
    assert rows == {
        "order-1": ["shop_order", "completed"],
        "order-2": ["shop_order", "failed"],
        "order-5": ["shop_approval", "failed"],
        "order-6": ["shop_order", "completed"],
        "order-7": ["shop_order", "completed"],
    }
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("saga order-2  shop_order v1  state=failed\n"), shown.stdout
    assert "failure: PermanentError: card declined" in shown.stdout
    assert "step_compensated         reserve" in shown.stdout, shown.stdout
    assert bad_retry.returncode == 1
    assert bad_retry.stderr == "error: nothing to retry: saga 'order-1' is completed\n"


def test_manage_py_saga_errors_are_the_clis_and_migrate_can_upgrade(project: Path) -> None:
    no_tables, bad_id, usage = _manage_all(
        project,
        ["saga", "show", "order-1"],
        ["saga", "show", "no such id"],
        ["saga", "frobnicate"],
    )
    assert no_tables.returncode == 1
    assert no_tables.stderr.startswith("error: saga store "), no_tables.stderr
    assert no_tables.stderr.endswith("no such table: saga (run `saga db upgrade`?)\n")
    assert bad_id.returncode == 1
    assert bad_id.stderr.startswith("error: ID must be 1-128 characters"), bad_id.stderr
    assert usage.returncode == 2
    assert "Usage: manage.py saga [OPTIONS] COMMAND [ARGS]..." in usage.stderr
    assert "No such command 'frobnicate'" in usage.stderr

    # SAGAS_MIGRATE_ON_MIGRATE = True: `manage.py migrate` runs `saga db upgrade` as well.
    migrate = _manage(project, "migrate", "--noinput", SHOP_MIGRATE_SAGAS="1")
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    db = project.parent / "shop.sqlite3"
    store = f"revision {head_revision()} (<Store sqlite:///{db}>)"
    assert f"  Saga store at {store}\n" in migrate.stdout, migrate.stdout
    upgrade = _manage(project, "saga", "db", "upgrade")  # idempotent
    assert upgrade.returncode == 0, upgrade.stderr
    assert upgrade.stdout == f"saga store at {store}\n"


SETTINGS_SCRIPT = r"""
import os
import sys

from django.conf import settings

settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop db",
            "USER": "shop@eu",
            "PASSWORD": "p:a/ss%w@rd",
            "HOST": "db.internal",
            "PORT": 5433,
            "OPTIONS": {"sslmode": "require", "pool": True},
        },
    },
    CELERY_SAGAS_SWEEP_INTERVAL=2.5,
    CELERY_BROKER_URL="memory://",
)
from sqlalchemy.engine import make_url

import sagas.contrib.django as sd
from sagas import ConfigurationError

s = sd.settings()
url = make_url(s.database_url)
print(s.database_url)
print(url.username, url.password, url.host, url.port, url.database, dict(url.query))
print(s.sweep_interval, s.coordinator_queue)
print(sd.database_url({"ENGINE": "django.db.backends.postgresql", "NAME": "shop",
                       "HOST": "/var/run/postgresql"}))
print(sd.database_url({"ENGINE": "django.db.backends.sqlite3", "NAME": "rel/db.sqlite3"}))
os.environ["SAGAS_DATABASE_URL"] = "sqlite:///from-env.db"
os.environ["SAGAS_COORDINATOR_QUEUE"] = "env-queue"
print(sd.settings().database_url, sd.settings().coordinator_queue)
settings.CELERY_SAGAS_DATABASE_URL = "postgresql://explicit/db"
print(sd.settings().database_url)
for bad in ({"ENGINE": "django.db.backends.mysql", "NAME": "x"},
            {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}):
    try:
        sd.database_url(bad)
    except ConfigurationError as exc:
        print(type(exc).__name__, str(exc).split(":")[0], exc.setting)
settings.CELERY_SAGAS_SWEEP_INTERVAL = "soon"
try:
    sd.settings()
except ConfigurationError as exc:
    print(str(exc).split(":")[0])
"""


def test_settings_bridge(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SETTINGS_SCRIPT],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        "postgresql+psycopg://shop%40eu:p%3Aa%2Fss%25w%40rd@db.internal:5433/shop%20db"
        "?sslmode=require",
        "shop@eu p:a/ss%w@rd db.internal 5433 shop db {'sslmode': 'require'}",
        "2.5 sagas",
        "postgresql+psycopg:///shop?host=%2Fvar%2Frun%2Fpostgresql",
        f"sqlite:///{tmp_path.resolve()}/rel/db.sqlite3",
        "sqlite:///from-env.db env-queue",
        "postgresql://explicit/db",
        "ConfigurationError setting CELERY_SAGAS_DATABASE_URL / SAGAS_DATABASE_URL database_url",
        "ConfigurationError setting CELERY_SAGAS_DATABASE_URL / SAGAS_DATABASE_URL database_url",
        "setting sagas_sweep_interval / SAGAS_SWEEP_INTERVAL",
    ]


# -- the example against the package as a user installs it --------------------------------------

WHEEL_DRIVER = r"""
import os
import sys
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
django.setup()

from django.db import transaction
from django.test import Client

import sagas
from sagas import SagaNotFound
from shop.models import Order
from shop.sagas import shop_order


def steps(info):
    return [(s.name, s.state.value, s.result) for s in info.steps]


def history(saga_id):
    return [h.kind for h in sagas.get(saga_id).history]


phase = sys.argv[1]
if phase == "views":
    print("sagas from", os.path.dirname(sagas.__file__), flush=True)
    c = Client(raise_request_exception=False)
    r = c.post("/checkout/", {"ref": "1", "total_cents": "1250"})
    print("checkout", r.status_code, r.json()["saga_id"], flush=True)
    r = c.post("/checkout/", {"ref": "2", "declined": "1"})
    print("declined", r.status_code, r.json()["saga_id"], flush=True)
    r = c.post("/checkout-then-fail/", {"ref": "3"})
    print("rolled back", r.status_code, Order.objects.filter(ref="3").exists(), flush=True)
    r = c.post("/checkout/approval/", {"ref": "5"})
    print("approval", r.status_code, r.json()["saga_id"], flush=True)
    for sid in ("order-1", "order-2"):
        info = sagas.wait(sid, timeout=45)
        print(sid, info.state.value, steps(info))
    deadline = time.monotonic() + 45
    while sagas.get("order-5").steps[1].state.value != "running":  # awaiting approval
        assert time.monotonic() < deadline, sagas.get("order-5")
        time.sleep(0.05)
    time.sleep(1.0)  # a start sent before the rollback would have been recorded by now
    try:
        sagas.get("order-3")
        print("order-3 exists")
    except SagaNotFound:
        print("order-3 not found")
elif phase == "crash":
    # SAGAS_FAULTS=coordinator.start_after_commit=exit: this process dies after the commit,
    # before it publishes the first step; the sweeper finds the command in the row's outbox.
    with transaction.atomic():
        Order.objects.create(ref="8", total_cents=800)
        shop_order.start({"ref": "8", "total_cents": 800}, saga_id="order-8")
        print("written in the transaction", flush=True)
    print("not reached")
elif phase == "recovered":
    info = sagas.wait("order-8", timeout=45)
    print("order-8", info.state.value, steps(info), "commands_republished" in history("order-8"))
elif phase == "operated":
    info = sagas.wait("order-5", timeout=45)
    kinds = history("order-5")
    print("order-5", info.state.value, [(s.name, s.state.value) for s in info.steps],
          "operator_retry" in kinds, "cancel_requested" in kinds)
    print("orders", sorted(Order.objects.values_list("ref", "status")))
"""


def _run_in(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_example_runs_from_a_plain_install(wheel_venv: Path, tmp_path: Path) -> None:
    """The README's first steps exactly: ``pip install "celery-sagas[django]"`` (no database
    driver, no broker client), the defaults (``db.sqlite3`` and a ``filesystem://`` broker in
    the project), a worker with beat, then the views."""
    project = _copy_example(tmp_path / "django_shop")
    (project / "driver.py").write_text(WHEEL_DRIVER)
    env = _clean_env()
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update(
        PATH=f"{wheel_venv}{os.pathsep}{env.get('PATH', '')}", SHOP_ALLOWED_HOSTS="testserver"
    )
    python = str(wheel_venv / "python")
    for argv in (["migrate", "--noinput"], ["saga", "db", "upgrade"]):
        done = _run_in([python, "manage.py", *argv], project, env, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
    celery = [str(wheel_venv / "celery"), "-A", "proj", "worker", "-B", "-Q", "sagas,shop"]
    celery += ["-c", "2", "--loglevel", "INFO", "-s", str(project / "beat-schedule")]
    with _worker(project, celery, env):
        views = _run_in([python, "driver.py", "views"], project, env, timeout=90)
    assert views.returncode == 0, views.stderr[-4000:] + _worker_log(project)
    assert views.stdout.splitlines()[1:] == VIEWS_OUTPUT, views.stdout


VIEWS_OUTPUT = [
    "checkout 202 order-1",
    "declined 202 order-2",
    "rolled back 500 False",
    "approval 202 order-5",
    "order-1 completed [('reserve', 'succeeded', {'reserved': '1'}), "
    "('charge', 'succeeded', {'charged': 1250})]",
    "order-2 failed [('reserve', 'compensated', {'reserved': '2'}), ('charge', 'failed', None)]",
    "order-3 not found",
]


def test_the_example_runs_from_the_wheel_on_postgresql_and_redis(
    wheel_venv_services: Path, tmp_path: Path
) -> None:
    """The README's steps run by the fresh virtualenv's python and ``celery`` (coordinator queue
    ``sagas``), with the project on PostgreSQL (the saga store in the same database) and Redis
    as the broker: views, a crash between a start's commit and its publish repaired by beat's
    sweeper, and ``manage.py saga retry`` / ``cancel``."""
    require("Redis", REDIS_BROKER)
    wheel_venv = wheel_venv_services
    redis = Redis.from_url(REDIS_BROKER)
    redis.flushdb()
    project = _copy_example(tmp_path / "django_shop")
    (project / "driver.py").write_text(WHEEL_DRIVER)
    with scratch_database("sagas_django_shop") as url:
        env = _clean_env()
        for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        env.update(
            PATH=f"{wheel_venv}{os.pathsep}{env.get('PATH', '')}",
            SHOP_ALLOWED_HOSTS="testserver",
            SHOP_PG_NAME=str(make_url(url).database),
            CELERY_BROKER_URL=REDIS_BROKER,
            SAGAS_SWEEP_INTERVAL="1",
            SAGAS_OUTBOX_GRACE="1",
        )
        python = str(wheel_venv / "python")

        def run(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return _run_in([python, *argv], project, {**env, **extra}, timeout=90)

        migrate = run("manage.py", "migrate", "--noinput")
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        assert "Applying shop.0001_initial... OK" in migrate.stdout, migrate.stdout
        upgrade = run("manage.py", "saga", "db", "upgrade")
        assert upgrade.returncode == 0, upgrade.stderr[-3000:]
        store = f"postgresql+psycopg://postgres@127.0.0.1:5432/{make_url(url).database}"
        assert upgrade.stdout == f"saga store at revision {head_revision()} (<Store {store}>)\n"

        celery = [str(wheel_venv / "celery"), "-A", "proj", "worker", "-B", "-Q", "sagas,shop"]
        celery += ["-c", "2", "--loglevel", "INFO", "-s", str(project / "beat-schedule")]
        with _worker(project, celery, env):
            views = run("driver.py", "views")
            assert views.returncode == 0, views.stderr[-4000:] + _worker_log(project)
            crash = run("driver.py", "crash", SAGAS_FAULTS="coordinator.start_after_commit=exit")
            recovered = run("driver.py", "recovered")
            retry = run(
                "manage.py", "saga", "retry", "order-5", "--reason", "approver back", "--yes"
            )
            cancel = run(
                "manage.py", "saga", "cancel", "order-5", "--reason", "out of stock", "--yes"
            )
            operated = run("driver.py", "operated")
    redis.flushdb()

    lines = views.stdout.splitlines()
    site = lines.pop(0)
    assert site.startswith(f"sagas from {wheel_venv.parent}/lib/"), site
    assert site.endswith("/site-packages/sagas"), site
    assert lines == VIEWS_OUTPUT, views.stdout + _worker_log(project)
    assert (crash.returncode, crash.stdout) == (1, "written in the transaction\n"), crash.stderr
    assert recovered.returncode == 0, recovered.stderr[-3000:] + _worker_log(project)
    assert recovered.stdout == (
        "order-8 completed [('reserve', 'succeeded', {'reserved': '8'}), "
        "('charge', 'succeeded', {'charged': 800})] True\n"
    )
    assert retry.returncode == 0, retry.stderr
    assert cancel.returncode == 0, cancel.stderr
    assert operated.returncode == 0, operated.stderr[-3000:]
    assert operated.stdout.splitlines() == [
        "order-5 failed [('reserve', 'compensated'), ('approve', 'timed_out')] True True",
        "orders [('1', 'paid'), ('2', 'released'), ('5', 'released'), ('8', 'paid')]",
    ], operated.stdout
    log = (project / "worker.log").read_text()
    assert "celery@" in log and "beat: Starting" in log, log[-4000:]


def test_the_examples_own_tests_use_the_testing_kit(tmp_path: Path) -> None:
    """``examples/django_shop/tests`` run as the shop's developers would (``pytest`` in the
    project, the kit's fixtures from its ``pytest.ini``, no pytest-django): views, step
    doubles and the crash-point harness over the order saga."""
    project = _copy_example(tmp_path / "django_shop")
    env = _clean_env()
    env["PYTHONPATH"] = str(project)
    done = _run_in(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project, env, 300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].startswith("6 passed"), done.stdout[-2000:]
