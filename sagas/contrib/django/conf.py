"""Django settings → ``sagas.Settings``, the project's Celery app, and the runtime built on both.

``settings()`` reads each ``sagas.Settings`` field from the Django setting
``CELERY_SAGAS_<NAME>`` (the broker from ``CELERY_BROKER_URL``), then the environment
(``SAGAS_<NAME>``), then its default; except that the store's URL, unless
``CELERY_SAGAS_DATABASE_URL`` or ``SAGAS_DATABASE_URL`` is set, is built from
``DATABASES["default"]`` (SQLite and PostgreSQL), so the saga tables live in the project's own
database. These are the same names ``sagas.install(app)`` reads from a Celery app configured
with ``config_from_object("django.conf:settings", namespace="CELERY")``.

``settings()`` needs Django's settings, not its apps: it works in ``proj/celery.py`` while the
Celery app is being created, before ``django.setup()`` has loaded the apps.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings as django_settings

from ...errors import ConfigurationError
from ...runtime import Runtime, current_runtime
from ...settings import Settings
from ...store import Store
from ...transport import CeleryApp, current_app

SQLITE_ENGINES = frozenset(
    {"django.db.backends.sqlite3", "django.contrib.gis.db.backends.spatialite"}
)
POSTGRES_ENGINES = frozenset(
    {"django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis"}
)
# libpq connection options that may ride along from DATABASES["default"]["OPTIONS"] as URL
# query parameters (Django-only keys such as "pool" or "isolation_level" are not libpq's).
LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "service",
        "passfile",
        "keepalives",
        "keepalives_idle",
    }
)
APP_SETTING = "SAGAS_CELERY_APP"
CURRENT_APP_PATH = "sagas.contrib.django.conf:current_celery_app"
"""What ``manage.py saga`` hands the CLI as ``SAGAS_CELERY_APP`` when none is configured: this
module's ``current_celery_app`` attribute, resolved by ``__getattr__`` to ``celery_app()``."""


def settings() -> Settings:
    """The sagas settings of this Django project (see the module docstring); a wrong value
    raises ``ConfigurationError`` naming the setting."""
    given: dict[str, Any] = {}
    for name in Settings.model_fields:
        if name == "broker_url":
            key, django_name = "broker_url", "CELERY_BROKER_URL"
        else:
            key, django_name = f"sagas_{name}", f"CELERY_SAGAS_{name.upper()}"
        value = getattr(django_settings, django_name, None)
        if value is not None:
            given[key] = value
    if "sagas_database_url" not in given and not os.environ.get("SAGAS_DATABASE_URL"):
        given["sagas_database_url"] = database_url(django_settings.DATABASES["default"])
    return Settings.from_config(given)


def database_url(db: Mapping[str, Any]) -> str:
    """The SQLAlchemy URL of a Django ``DATABASES`` entry (SQLite or PostgreSQL)."""
    engine = str(db.get("ENGINE", ""))
    if engine in SQLITE_ENGINES:
        name = os.fspath(db.get("NAME") or "")
        if not name or name == ":memory:" or name.startswith("file:"):
            raise ConfigurationError(
                f"setting CELERY_SAGAS_DATABASE_URL / SAGAS_DATABASE_URL: DATABASES['default'] is "
                f"an in-memory SQLite database ({name!r}), which workers cannot share: set the "
                "saga store's URL explicitly",
                setting="database_url",
            )
        return "sqlite:///" + os.path.abspath(name)
    if engine in POSTGRES_ENGINES:
        return _postgres_url(db)
    raise ConfigurationError(
        f"setting CELERY_SAGAS_DATABASE_URL / SAGAS_DATABASE_URL: DATABASES['default'] uses "
        f"{engine!r}; the saga store runs on PostgreSQL or SQLite: set its URL explicitly",
        setting="database_url",
    )


def _postgres_url(db: Mapping[str, Any]) -> str:
    user = quote(str(db.get("USER") or ""), safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    host = str(db.get("HOST") or "")
    port = str(db.get("PORT") or "")
    query: dict[str, str] = {}
    if host.startswith("/"):  # a Unix socket directory
        query["host"] = host
        host = ""
    elif ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    options = db.get("OPTIONS") or {}
    query.update({k: str(v) for k, v in options.items() if k in LIBPQ_OPTIONS and v is not None})
    auth = f"{user}:{password}@" if password else f"{user}@" if user else ""
    netloc = host + (f":{port}" if port else "")
    name = quote(str(db.get("NAME") or ""), safe="")
    return f"postgresql+psycopg://{auth}{netloc}/{name}" + (f"?{urlencode(query)}" if query else "")


def celery_app_path() -> str | None:
    """``SAGAS_CELERY_APP`` (``module:attribute``) from the Django settings or the environment."""
    value = getattr(django_settings, APP_SETTING, None) or os.environ.get(APP_SETTING)
    return str(value) if value else None


def celery_app() -> CeleryApp:
    """The project's Celery app: ``SAGAS_CELERY_APP`` when set, else the app ``sagas.install``
    was called with in this process, else Celery's current app (the one ``proj/celery.py``
    created, with the standard ``proj/__init__.py`` importing it)."""
    path = celery_app_path()
    if path and path != CURRENT_APP_PATH:
        module, _, attr = path.partition(":")
        try:
            app: CeleryApp = getattr(importlib.import_module(module), attr or "app")
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                f"setting {APP_SETTING}: {path!r}: {type(exc).__name__}: {exc}",
                setting="celery_app",
            ) from exc
        return app
    installed = current_runtime()
    if installed is not None and installed.app is not None:
        return installed.app
    return current_app()


_lock = threading.Lock()
_own: Runtime | None = None


def runtime() -> Runtime:
    """The runtime for this project's settings and Celery app: the one ``sagas.install`` set up
    when it was given the same settings (``sagas.install(app, settings=settings())``), else one
    built here once (and rebuilt if the settings change, as under ``override_settings``)."""
    global _own
    wanted, app = settings(), celery_app()
    installed = current_runtime()
    if installed is not None and installed.settings == wanted and installed.app is app:
        return installed
    with _lock:
        if _own is None or _own.settings != wanted or _own.app is not app:
            if _own is not None:
                _own.store.dispose()
            _own = Runtime(settings=wanted, store=Store(wanted.database_url_sqlalchemy), app=app)
        return _own


def environment(cfg: Settings) -> dict[str, str]:
    """``cfg`` as the ``SAGAS_<NAME>`` environment variables the ``saga`` CLI reads."""
    env: dict[str, str] = {}
    for name, value in cfg.model_dump().items():
        if name == "broker_url" or value is None:
            continue  # the CLI's operator commands publish with the Celery app, not a URL
        env[f"SAGAS_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def __getattr__(name: str) -> Any:
    # ``SAGAS_CELERY_APP=sagas.contrib.django.conf:current_celery_app`` (see CURRENT_APP_PATH).
    if name == "current_celery_app":
        return celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dashboard_url() -> str | None:
    """Where the saga dashboard is served (``SAGAS_DASHBOARD_URL``: the Django setting, else
    the environment), e.g. ``/ops/sagas/`` when it is mounted in the project's ASGI app; the
    admin links to it. None: no link."""
    url = getattr(django_settings, "SAGAS_DASHBOARD_URL", None) or os.environ.get(
        "SAGAS_DASHBOARD_URL"
    )
    if not url:
        return None
    return str(url) if str(url).endswith("/") else f"{url}/"
