"""The app factory: one FastAPI app holding a store, its error handlers and its routers.

The JSON API is one router (``api``) under ``/api``; a server-rendered dashboard is meant to be
another router on the same app (Jinja2 templates reading the same ``sagas.views``), so it shares
the store, the error handling and the mount point. Every route is a plain ``def``: the store is
synchronous, and FastAPI runs such routes in its thread pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .. import prometheus
from ..errors import SagaInputError, SagaNotFound, StoreError, StoreUnavailable
from ..filters import CursorInvalid
from ..settings import Settings
from ..store import Store
from . import api

API_PREFIX = "/api"


def create_app(store: Store | None = None, *, settings: Settings | None = None) -> FastAPI:
    """A FastAPI app over ``store`` (default: ``SAGAS_DATABASE_URL`` from ``settings`` or the
    environment). Read-only: every route is a GET. Mount it anywhere (``app.mount("/sagas",
    create_app())``); its OpenAPI schema is at ``<mount>/api/openapi.json``, the Prometheus
    page at ``<mount>/metrics``."""
    owned = store is None
    settings = settings or Settings()
    if store is None:
        store = Store(settings.database_url_sqlalchemy)
    grace = settings.outbox_grace

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            store.dispose()

    app = FastAPI(
        title="sagas",
        summary="Read the saga store: list and filter sagas, one saga's steps, attempts and "
        "history, counts per state, the stuck list.",
        version=api.VERSION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.store = store
    app.include_router(api.router, prefix=API_PREFIX)
    # What a scrape job reads: the engine's counters and histograms (every worker's, from
    # PROMETHEUS_MULTIPROC_DIR on this host) and the store-wide gauges, at <mount>/metrics.
    app.mount("/metrics", prometheus.asgi_app(lambda: store.stats(unsent_grace=grace)))
    app.add_exception_handler(RequestValidationError, _bad_request)
    app.add_exception_handler(SagaInputError, _input_error)
    app.add_exception_handler(SagaNotFound, _not_found)
    app.add_exception_handler(StoreError, _store_error)
    return app


def _error(status: int, kind: str, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"type": kind, "message": message, "field": field}}, status_code=status
    )


async def _bad_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation of a query or path: 400 naming the field, like ours."""
    assert isinstance(exc, RequestValidationError)
    errors: list[Any] = list(exc.errors())
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "bad request"}
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, SagaInputError):
        return await _input_error(_request, cause)
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
    field = loc[0] if loc else None
    if field == "cursor":  # its published pattern refused it: the same answer as a bad digest
        return await _input_error(
            _request, CursorInvalid.refused("not a cursor this API handed out")
        )
    text = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    message = f"{field}: {text}" if field else text
    return _error(400, "FilterInvalid" if field else "BadRequest", message, field)


async def _input_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SagaInputError)
    return _error(400, type(exc).__name__, str(exc), exc.field)


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return _error(404, "SagaNotFound", str(exc))


async def _store_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, StoreUnavailable):
        return _error(503, "StoreUnavailable", "the saga store is unavailable; try again")
    return _error(500, "StoreError", "the saga store refused the read")
