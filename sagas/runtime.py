"""The configured runtime: settings, store and Celery app, built once at the edge.

``configure()`` is called by the worker bootstrap, the CLI or a test; ``get_runtime()`` builds
one from the environment on first use when nobody configured it (a Django/Flask process that
only imports ``start_saga``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .settings import Settings
from .store import Store


@dataclass
class Runtime:
    settings: Settings
    store: Store
    app: Any = None  # a Celery app; None means celery.current_app at publish time

    @property
    def celery(self) -> Any:
        if self.app is not None:
            return self.app
        from celery import current_app

        return current_app


_lock = threading.Lock()
_runtime: Runtime | None = None


def configure(
    *, settings: Settings | None = None, store: Store | None = None, app: Any = None
) -> Runtime:
    global _runtime
    settings = settings or Settings()
    store = store or Store(settings.database_url_sqlalchemy)
    with _lock:
        _runtime = Runtime(settings=settings, store=store, app=app)
        return _runtime


def get_runtime() -> Runtime:
    if _runtime is None:
        with _lock:
            if _runtime is None:
                return configure()
    assert _runtime is not None
    return _runtime


def reset() -> None:
    """Forget the runtime (tests; after fork the store's pool must not be shared)."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.store.dispose()
        _runtime = None
