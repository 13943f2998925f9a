"""sagas for a Django project that already runs Celery: ``INSTALLED_APPS += ["sagas.contrib.django"]``.

What the app does, and what the project writes:

- **Settings** (``settings()``): a ``sagas.Settings`` from the Django settings
  ``CELERY_SAGAS_<NAME>`` (then ``SAGAS_<NAME>`` in the environment, then the default), whose
  store, unless ``CELERY_SAGAS_DATABASE_URL``/``SAGAS_DATABASE_URL`` is set, is the project's
  ``DATABASES["default"]`` (SQLite, or PostgreSQL as ``postgresql+psycopg://``).
- **The Celery app** stays the project's, in Django's standard ``proj/celery.py``, which adds
  one line; ``proj/__init__.py`` imports the app as usual::

      import os
      from celery import Celery
      import sagas
      import sagas.contrib.django

      os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
      app = Celery("proj")
      app.config_from_object("django.conf:settings", namespace="CELERY")
      app.autodiscover_tasks()
      sagas.install(app, settings=sagas.contrib.django.settings())

  Why ``install`` stays in celery.py rather than in ``AppConfig.ready()``: this module is
  imported before Django's apps are loaded (``proj/__init__.py`` imports it while Django loads
  the settings module), and ``install`` must have routed the coordinator queue and scheduled
  the sweeper before any worker or beat starts, whatever order Celery and Django start in.
  ``settings()`` needs only Django's settings, so it works there; ``install`` is not given
  ``modules=``, because saga modules may import Django models, which cannot be imported yet.
- **Saga modules** are discovered like Celery tasks: ``AppConfig.ready()`` imports every
  installed app's ``sagas.py`` (in the worker too: Celery's Django fixup runs
  ``django.setup()`` before the worker takes work; step tasks declared after ``install`` are
  bound as they are declared).
- **``manage.py saga ...``** runs every ``saga`` CLI command on the project's store and Celery
  app: ``manage.py saga db upgrade`` creates the saga tables. They are migrated by sagas' own
  Alembic tree (version table ``sagas_alembic_version``), not by Django migrations: the same
  tables are shared with workers that may not run Django, and one migration tree (the one
  ``saga db upgrade`` applies everywhere) keeps every deployment at the same schema. With
  ``SAGAS_MIGRATE_ON_MIGRATE = True`` in settings.py, ``manage.py migrate`` runs it too.
- **The admin**: read-only models over ``saga``, ``saga_step`` and ``saga_event``
  (``managed = False``) with "retry" and "cancel" actions (``sagas.contrib.django.admin``).
- **``start_saga_on_commit(name, payload, saga_id=...)``** sends the start when the view's
  transaction commits (a rolled-back view starts no saga), checking the payload at once.

Starting a saga *inside* the caller's transaction (one commit for the order row and the saga
row) is not offered: the saga store commits on its own SQLAlchemy connections.
"""

from __future__ import annotations

from .conf import celery_app, database_url, runtime, settings
from .start import start_saga_on_commit

__all__ = ["celery_app", "database_url", "runtime", "settings", "start_saga_on_commit"]
