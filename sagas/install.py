"""Wiring sagas into a process: the runtime (settings, store, app) and the step tasks.

``configure()`` is what a worker bootstrap, the CLI or a test calls: it sets the runtime, binds
the Celery tasks of every local step declared so far, and binds those of steps declared later
(a saga module imported after configuration). Declaring a saga alone touches no Celery.
"""

from __future__ import annotations

from .runtime import Runtime, set_runtime
from .settings import Settings
from .store import Store
from .tasks import bind_all_step_tasks
from .transport import CeleryApp


def configure(
    *, settings: Settings | None = None, store: Store | None = None, app: CeleryApp | None = None
) -> Runtime:
    """Configure this process: ``settings`` (default: from the environment), the saga ``store``
    (default: ``settings.database_url``) and the Celery ``app`` messages are sent with."""
    runtime = set_runtime(settings=settings, store=store, app=app)
    bind_all_step_tasks()
    return runtime
