"""The configured runtime: settings, store and Celery app, built once at the edge.

``sagas.install.configure()`` sets it (the worker bootstrap, the CLI, a test); ``get_runtime()``
builds one from the environment on first use when nobody configured it (a Django/Flask process
that only imports ``start_saga``), from any thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .settings import Settings
from .store import Store
from .transport import CeleryApp, current_app


@dataclass
class Runtime:
    settings: Settings
    store: Store
    app: CeleryApp | None = None  # None: Celery's current app at publish time

    @property
    def celery(self) -> CeleryApp:
        return self.app if self.app is not None else current_app()


_lock = threading.Lock()
_runtime: Runtime | None = None


def set_runtime(
    *, settings: Settings | None = None, store: Store | None = None, app: CeleryApp | None = None
) -> Runtime:
    global _runtime
    settings = settings or Settings()
    store = store or Store(settings.database_url_sqlalchemy)
    runtime = Runtime(settings=settings, store=store, app=app)
    with _lock:
        _runtime = runtime
    return runtime


def get_runtime() -> Runtime:
    global _runtime
    runtime = _runtime
    if runtime is not None:
        return runtime
    with _lock:
        if _runtime is None:  # built once even when several threads ask at once
            settings = Settings()
            _runtime = Runtime(settings=settings, store=Store(settings.database_url_sqlalchemy))
        return _runtime


def current_runtime() -> Runtime | None:
    """The runtime if one was built (never builds one)."""
    return _runtime


def reset() -> None:
    """Forget the runtime (tests; after fork the store's pool must not be shared)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.store.dispose()
        _runtime = None
