"""The Django app: discovers every installed app's ``sagas.py`` when Django starts."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings as django_settings
from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_migrate
from django.utils.module_loading import module_has_submodule

from ...errors import ConfigurationError
from ...starter import join_transactions
from ...store import Store
from ...store.migrate import current_revision, upgrade
from .conf import settings
from .start import caller_transaction

SAGA_MODULE = "sagas"


class SagasConfig(AppConfig):  # type: ignore[misc]  # Django is untyped
    name = "sagas.contrib.django"
    label = "sagas"
    verbose_name = "Sagas"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        discover_saga_modules()
        # saga.start() inside transaction.atomic() writes the saga in that transaction.
        join_transactions(caller_transaction)
        post_migrate.connect(
            _upgrade_on_migrate, sender=self, dispatch_uid="sagas.contrib.django.upgrade"
        )


def discover_saga_modules() -> list[str]:
    """Import ``<app>.sagas`` of every installed app that has one (as Celery's autodiscovery
    imports ``tasks.py``, and as ``autodiscover_modules("sagas")`` would), so their sagas are
    declared in every process that runs Django: web, ``manage.py`` and the Celery worker (whose
    Django fixup calls ``django.setup()`` before it takes work). A module that fails to import
    raises ``ConfigurationError`` naming it."""
    found = []
    for config in apps.get_app_configs():
        if not module_has_submodule(config.module, SAGA_MODULE):
            continue
        module = f"{config.name}.{SAGA_MODULE}"
        try:
            import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import error: name the module, in one line
            raise ConfigurationError(
                f"saga module {module!r} failed to import: {type(exc).__name__}: {exc}",
                setting="modules",
            ) from exc
        found.append(module)
    return found


def _upgrade_on_migrate(sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """With ``SAGAS_MIGRATE_ON_MIGRATE = True``, ``manage.py migrate`` also runs
    ``saga db upgrade`` (the saga store's own migrations; idempotent)."""
    if not getattr(django_settings, "SAGAS_MIGRATE_ON_MIGRATE", False) or using != DEFAULT_DB_ALIAS:
        return
    cfg = settings()
    store = Store(cfg.database_url_sqlalchemy)
    try:
        upgrade(store.engine, settings=cfg)
        revision = current_revision(store.engine, settings=cfg)
    finally:
        store.dispose()
    if kwargs.get("verbosity", 1) >= 1 and kwargs.get("stdout") is not None:
        kwargs["stdout"].write(f"  Saga store at revision {revision} ({store!r})\n")
