"""A Django project that already runs Celery, set up the way docs/django.md's "Add sagas to your
Django project" says: ``INSTALLED_APPS += ["sagas.contrib.django"]``, ``sagas.install`` in the
standard ``proj/celery.py``, a ``shop`` app with ``shop/sagas.py`` and a checkout view using
``start_saga_on_commit``, ``manage.py saga db upgrade``, a real ``celery -A proj worker -B`` and
the admin.

Django's settings are process-global, so nothing here configures Django in the pytest process:
every Django interaction runs in a subprocess (``manage.py``, the worker, a driver script using
``django.test.Client``). No servers: SQLite (the project's database is the saga store) and a
``filesystem://`` broker in a temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sagas.store.migrate import head_revision

pytestmark = pytest.mark.workers

FILES: dict[str, str] = {
    "manage.py": """
        import os
        import sys

        if __name__ == "__main__":
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
            from django.core.management import execute_from_command_line

            execute_from_command_line(sys.argv)
    """,
    "proj/__init__.py": """
        from .celery import app as celery_app

        __all__ = ("celery_app",)
    """,
    "proj/celery.py": """
        import os

        from celery import Celery

        import sagas
        import sagas.contrib.django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

        app = Celery("proj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        app.autodiscover_tasks()
        sagas.install(app, settings=sagas.contrib.django.settings())
    """,
    "proj/settings.py": """
        import os
        from pathlib import Path

        BASE_DIR = Path(__file__).resolve().parent.parent
        SECRET_KEY = "test-only-not-secret"
        DEBUG = False
        ALLOWED_HOSTS = ["testserver"]
        INSTALLED_APPS = [
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "sagas.contrib.django",
            "shop",
        ]
        MIDDLEWARE = [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ]
        ROOT_URLCONF = "proj.urls"
        TEMPLATES = [
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ]
        DATABASES = {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": BASE_DIR / "db.sqlite3",
                "OPTIONS": {"timeout": 30},
            }
        }
        USE_TZ = True
        TIME_ZONE = "UTC"
        DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
        STATIC_URL = "static/"

        CELERY_BROKER_URL = "filesystem://"
        CELERY_BROKER_TRANSPORT_OPTIONS = {
            "data_folder_in": str(BASE_DIR / "broker"),
            "data_folder_out": str(BASE_DIR / "broker"),
            "processed_folder": str(BASE_DIR / "processed"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
        CELERY_TASK_SERIALIZER = "json"
        CELERY_ACCEPT_CONTENT = ["json"]
        CELERY_SAGAS_COORDINATOR_QUEUE = "shop-coordinator"
        CELERY_SAGAS_SWEEP_INTERVAL = 0.5
        SAGAS_MIGRATE_ON_MIGRATE = os.environ.get("SHOP_MIGRATE_SAGAS") == "1"
        PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # tests only: fast
    """,
    "proj/urls.py": """
        from django.contrib import admin
        from django.urls import path

        from shop import views

        urlpatterns = [
            path("admin/", admin.site.urls),
            path("checkout/", views.checkout),
            path("checkout-then-fail/", views.checkout_then_fail),
        ]
    """,
    "shop/__init__.py": "",
    "shop/models.py": """
        from django.db import models


        class Order(models.Model):
            ref = models.CharField(max_length=32, unique=True)
            total_cents = models.IntegerField()
            declined = models.BooleanField(default=False)
            status = models.CharField(max_length=16, default="new")
    """,
    "shop/migrations/__init__.py": "",
    "shop/migrations/0001_initial.py": """
        from django.db import migrations, models


        class Migration(migrations.Migration):
            initial = True
            dependencies = []
            operations = [
                migrations.CreateModel(
                    name="Order",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("ref", models.CharField(max_length=32, unique=True)),
                        ("total_cents", models.IntegerField()),
                        ("declined", models.BooleanField(default=False)),
                        ("status", models.CharField(default="new", max_length=16)),
                    ],
                ),
            ]
    """,
    # Imports the app's models: saga modules are imported once Django's apps are ready.
    "shop/sagas.py": """
        from pydantic import BaseModel, Field

        from sagas import PermanentError, Saga, StepContext
        from shop.models import Order


        class OrderPayload(BaseModel):
            ref: str
            total_cents: int = Field(gt=0)
            declined: bool = False


        shop_order = Saga("shop_order", payload=OrderPayload)
        shop_approval = Saga("shop_approval", payload=OrderPayload)


        def release(ctx: StepContext[OrderPayload]) -> None:
            Order.objects.filter(ref=ctx.payload.ref).update(status="released")


        def reserve(ctx: StepContext[OrderPayload]) -> dict:
            Order.objects.filter(ref=ctx.payload.ref).update(status="reserved")
            return {"reserved": ctx.payload.ref}


        shop_order.step(queue="shop", timeout=10, compensation=release)(reserve)


        @shop_order.step(queue="shop", timeout=10, compensation=None)
        def charge(ctx: StepContext[OrderPayload]) -> dict:
            if ctx.payload.declined:
                raise PermanentError("card declined")
            Order.objects.filter(ref=ctx.payload.ref).update(status="paid")
            return {"charged": ctx.payload.total_cents}


        shop_approval.step(queue="shop", timeout=10, compensation=release)(reserve)


        # Nobody consumes "approvals" in this test: the saga stays active for the admin.
        @shop_approval.step(queue="approvals", timeout=300, compensation=None)
        def approve(ctx: StepContext[OrderPayload]) -> dict:
            return {}
    """,
    "shop/views.py": """
        from django.db import transaction
        from django.http import JsonResponse
        from django.views.decorators.http import require_POST

        from sagas import SagaInputError
        from sagas.contrib.django import start_saga_on_commit
        from shop.models import Order


        @require_POST
        def checkout(request):
            ref = request.POST["ref"]
            total = int(request.POST.get("total_cents", "500"))
            declined = request.POST.get("declined") == "1"
            payload = {"ref": ref, "total_cents": total, "declined": declined}
            try:
                with transaction.atomic():
                    order = Order.objects.create(ref=ref, total_cents=total, declined=declined)
                    saga_id = start_saga_on_commit(
                        request.POST.get("saga", "shop_order"),
                        payload,
                        saga_id=f"order-{ref}",
                        correlation_id=request.headers.get("X-Request-ID"),
                    )
            except SagaInputError as exc:
                return JsonResponse({"error": type(exc).__name__, "field": exc.field}, status=400)
            return JsonResponse({"saga_id": saga_id, "order": order.pk}, status=202)


        @require_POST
        def checkout_then_fail(request):
            ref = request.POST["ref"]
            with transaction.atomic():
                Order.objects.create(ref=ref, total_cents=500)
                start_saga_on_commit(
                    "shop_order", {"ref": ref, "total_cents": 500}, saga_id=f"order-{ref}"
                )
                raise RuntimeError("the view failed after queueing the saga")
    """,
}

DRIVER = r"""
import html
import os
import re
import time

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
r = c.post("/checkout/", {"ref": "5", "saga": "shop_approval"})
out("approval", r.status_code, r.json()["saga_id"])

for sid in ("order-1", "order-2"):
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


def _write(root: Path) -> None:
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    (root / "driver.py").write_text(DRIVER)
    for folder in ("broker", "processed"):
        (root / folder).mkdir()


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_", "DJANGO_"))
    }
    env.update(PYTHONPATH=str(root), DJANGO_SETTINGS_MODULE="proj.settings", **extra)
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
    _write(tmp_path)
    return tmp_path


@contextmanager
def _worker(project: Path) -> Iterator[subprocess.Popen[str]]:
    """A real ``celery -A proj worker -B`` (stopped by its process group)."""
    log = (project / "worker.log").open("w")
    argv = ["worker", "-B", "-s", str(project / "beat-schedule"), "-Q", "shop-coordinator,shop"]
    argv += ["-P", "threads", "-c", "2", "--loglevel", "INFO"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "proj", *argv],
        cwd=project,
        env=_env(project),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _worker_log(project: Path) -> str:
    return (project / "worker.log").read_text()[-4000:]


def test_checkout_admin_and_manage_py_saga(project: Path) -> None:
    migrate = _manage(project, "migrate", "--noinput")
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    upgrade = _manage(project, "saga", "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    db = project / "db.sqlite3"
    assert upgrade.stdout == f"saga store at revision {head_revision()} (<Store sqlite:///{db}>)\n"

    started = time.monotonic()
    with _worker(project):
        driver = _run(project, "driver.py", timeout=120)
        assert driver.returncode == 0, driver.stderr[-4000:] + _worker_log(project)
        listed, shown, bad_retry = _manage_all(
            project,
            ["saga", "list"],
            ["saga", "show", "order-2"],
            ["saga", "retry", "order-1", "--reason", "again"],
        )
    assert time.monotonic() - started < 80

    lines = driver.stdout.splitlines()
    assert lines == [
        "checkout 202 order-1",
        "declined 202 order-2",
        "invalid 400 {'error': 'PayloadInvalid', 'field': 'payload.total_cents'} False",
        "rolled back 500 False",
        "approval 202 order-5",
        "order-1 completed req-1 [('reserve', 'succeeded'), ('charge', 'succeeded')]",
        "order-2 failed - [('reserve', 'compensated'), ('charge', 'failed')]",
        "orders [('1', 'paid'), ('2', 'released'), ('5', 'reserved')]",
        "order-4 not found",
        "failed list 200 True False False",
        "search 200 True False",
        "detail 200 True True True",
        "timeline ['saga_started', 'step_failed', 'step_compensated', 'saga_failed']",
        "add 403",
        "delete 403 failed",
        "confirm page 200 True True True",
        "no reason 200 True 0",
        "retry 200 [('error', \"Saga order-1: nothing to retry: saga 'order-1' is completed\"), "
        "('success', 'Saga order-5: retried (pending)')]",
        "retry history [{'reason': 'approvals were stuck (by ops via admin)', 'was': 'running'}]",
        "no csrf 403 0",
        "cancel 200 [('success', 'Saga order-5: cancelled (compensating)')]",
        "cancelled failed [('reserve', 'compensated'), ('approve', 'timed_out')] "
        "[{'reason': 'customer changed their mind (by ops via admin)'}]",
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
    db = project / "db.sqlite3"
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
