"""Wiring sagas into a process: ``install(celery_app)`` for an application's own Celery app,
``configure()`` for the lower-level pieces (runtime, step tasks) a test or the CLI sets up.

    app = Celery("shop")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    sagas.install(app, modules=["shop.sagas"])

Declaring a saga alone touches no Celery; ``install`` is the one call that binds it to an app.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from . import prometheus
from .catalog import registered_sagas
from .errors import ConfigurationError
from .observability import metrics
from .runtime import Runtime, set_runtime
from .settings import Settings
from .store import Store
from .tasks import SWEEP_ENTRY, bind_all_step_tasks, register_step_tasks, watch_startup
from .transport import CeleryApp, coordinator_queue, event_queues


def configure(
    *, settings: Settings | None = None, store: Store | None = None, app: CeleryApp | None = None
) -> Runtime:
    """Configure this process: ``settings`` (default: from the environment), the saga ``store``
    (default: ``settings.database_url``) and the Celery ``app`` messages are sent with; bind
    the step tasks of every saga declared, now and later; with ``SAGAS_METRICS`` (or a
    metrics port) the engine's counts and timings go to ``prometheus_client`` too."""
    runtime = set_runtime(settings=settings, store=store, app=app)
    if runtime.settings.exports_metrics:
        metrics.add_sink(prometheus.enable(lambda name: name in registered_sagas()))
    bind_all_step_tasks()
    if app is not None:
        register_step_tasks(app)
    return runtime


def install(
    app: Any,
    *,
    modules: Iterable[str] = (),
    settings: Settings | None = None,
    store: Store | None = None,
    beat: bool = True,
) -> Runtime:
    """Set sagas up on ``app``, the application's own Celery app, and return the runtime.

    - settings from ``app.conf`` (``sagas_<name>``; with Django's ``namespace="CELERY"`` that is
      ``CELERY_SAGAS_<NAME>`` in settings.py), the environment as fallback;
    - imports the saga ``modules`` (Celery's autodiscovery finds ``tasks.py``, not sagas), so
      their steps' tasks are registered; a module that fails to import raises
      ``ConfigurationError`` naming it;
    - routes ``sagas.*`` and declares the coordinator queue and the choreographies' event queues;
    - adds the sweeper to ``beat_schedule`` (``beat=False`` to schedule it yourself), without
      which timeouts, long retries and outbox repair never run; a worker or beat that starts
      without it logs an error;
    - adds saga id, name and correlation id to the worker's log records.
    """
    settings = settings or Settings.from_config(app.conf)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import error: name the module, in one line
            raise ConfigurationError(
                f"saga module {module!r} failed to import: {type(exc).__name__}: {exc}",
                setting="modules",
            ) from exc
    queue = settings.coordinator_queue
    routes = app.conf.task_routes
    app.conf.task_routes = [{"sagas.*": {"queue": queue}}, *_as_list(routes)]
    known = {q.name for q in app.conf.task_queues or ()}
    if app.conf.task_queues:  # an app that lists its queues gets ours added
        extra = [coordinator_queue(queue), *event_queues()]
        app.conf.task_queues = [*app.conf.task_queues, *(q for q in extra if q.name not in known)]
    if beat:
        schedule = dict(app.conf.beat_schedule or {})
        schedule.setdefault(SWEEP_ENTRY, _sweep_entry(settings))
        app.conf.beat_schedule = schedule
    watch_startup(app)
    return configure(settings=settings, store=store, app=app)


def _sweep_entry(settings: Settings) -> dict[str, Any]:
    period = settings.sweep_interval
    # A sweep that waited longer than one period is superseded by the next one.
    options = {"queue": settings.coordinator_queue, "expires": period}
    return {"task": "sagas.sweep", "schedule": period, "options": options}


def _as_list(routes: Any) -> list[Any]:
    if not routes:
        return []
    return list(routes) if isinstance(routes, list | tuple) else [routes]
