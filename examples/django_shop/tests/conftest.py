"""The shop under test with plain pytest (no pytest-django needed): Django set up once on a
SQLite file of this test session, which is the saga store too (the store defaults to
DATABASES["default"]); sagas' test runtime on the project's Celery app (in-process broker,
fake clock, no servers)."""

import os
import tempfile

import django
import pytest

_folder = tempfile.mkdtemp(prefix="django-shop-tests-")
os.environ["SHOP_DATABASE"] = os.path.join(_folder, "shop.sqlite3")
os.environ["SHOP_BROKER_FOLDER"] = os.path.join(_folder, "broker")
os.environ["SHOP_ALLOWED_HOSTS"] = "testserver"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from proj.celery import app as celery_app  # noqa: E402

import sagas.contrib.django  # noqa: E402

call_command("migrate", verbosity=0)


@pytest.fixture
def sagas_celery_app():
    return celery_app


@pytest.fixture
def saga_settings():
    return {"database_url": sagas.contrib.django.settings().database_url}


@pytest.fixture
def client():
    return Client(raise_request_exception=False)
