"""The dashboard for a WSGI host (Flask, Django under gunicorn's sync workers): the same ASGI
app behind ``a2wsgi``'s adapter, which runs it on its own event loop thread.

    from sagas.web.wsgi import create_wsgi_app
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app, {"/sagas": create_wsgi_app()})
"""

from __future__ import annotations

from typing import Any

from a2wsgi import ASGIMiddleware

from .app import create_app


def create_wsgi_app(**kwargs: Any) -> ASGIMiddleware:
    """``create_app(**kwargs)`` as a WSGI callable (mount it under any prefix)."""
    return ASGIMiddleware(create_app(**kwargs))  # type: ignore[arg-type]
