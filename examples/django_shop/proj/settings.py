"""Settings for a quick local try: SQLite and a ``filesystem://`` broker next to this project,
no servers. Point ``SHOP_DATABASE`` and ``CELERY_BROKER_URL`` elsewhere to change that; any saga
setting can also come from the environment as ``SAGAS_<NAME>`` (e.g. ``SAGAS_SWEEP_INTERVAL``).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-local-try-only")
DEBUG = os.environ.get("SHOP_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("SHOP_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
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

# The saga tables live in this database too (`python manage.py saga db upgrade`). The timeout
# lets the web process and the worker share one SQLite file.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DATABASE", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {"timeout": 30},
    }
}
# PostgreSQL instead (pip install "celery-sagas[django,postgres]"): SHOP_PG_NAME=shop and,
# where they differ from these defaults, SHOP_PG_HOST / _PORT / _USER / _PASSWORD.
if os.environ.get("SHOP_PG_NAME"):
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["SHOP_PG_NAME"],
        "HOST": os.environ.get("SHOP_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("SHOP_PG_PORT", "5432"),
        "USER": os.environ.get("SHOP_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("SHOP_PG_PASSWORD", ""),
    }
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

# Celery, read by proj/celery.py through the CELERY namespace. The default broker is a folder:
# fine for one machine; set CELERY_BROKER_URL=redis://localhost:6379/0 (pip install
# "celery-sagas[redis]") or amqp://... for a real one.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker = Path(os.environ.get("SHOP_BROKER_FOLDER", str(BASE_DIR / "broker")))
    (_broker / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker),
        "data_folder_out": str(_broker),
        "processed_folder": str(_broker / "processed"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]

# Saga settings: CELERY_SAGAS_<NAME> here, else SAGAS_<NAME> in the environment, else the
# default (coordinator queue "sagas"). With SHOP_MIGRATE_SAGAS=1, `manage.py migrate` also
# runs `manage.py saga db upgrade`.
SAGAS_MIGRATE_ON_MIGRATE = os.environ.get("SHOP_MIGRATE_SAGAS") == "1"
