"""The HTTP side of sagas (extra ``celery-sagas[dashboard]``): a read-only JSON API over the saga
store, with its OpenAPI schema, served by ``saga dashboard`` or mounted in your own ASGI app.

    from sagas.web import create_app
    app.mount("/sagas", create_app())        # FastAPI / Starlette; the API is at /sagas/api

FastAPI, Starlette and uvicorn are imported only here (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
