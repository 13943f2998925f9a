"""The app factory: one FastAPI app holding a store, its error handlers and its routers.

The JSON API is one router (``api``) under ``/api``; the server-rendered dashboard (``pages``)
is another on the same app (Jinja2 templates reading the same ``sagas.views``), so they share
the store, the error handling and the mount point. An error is JSON under ``/api`` and an error
page elsewhere. Every route is a plain ``def``: the store is synchronous, and FastAPI runs such
routes in its thread pool.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from .. import prometheus
from ..errors import (
    ActionRefused,
    SagaChanged,
    SagaError,
    SagaInputError,
    SagaNotFound,
    StoreError,
    StoreUnavailable,
    UnknownSaga,
)
from ..filters import CursorInvalid
from ..runtime import Runtime
from ..settings import Settings
from ..store import Store
from . import api, pages
from .config import DashboardSettings, from_environment
from .security import SESSION_COOKIE, Authenticate, Forbidden, Guard, LoginRequired

API_PREFIX = "/api"


def create_app(
    store: Store | None = None,
    *,
    settings: Settings | None = None,
    dashboard: DashboardSettings | None = None,
    runtime: Runtime | None = None,
    authenticate: Authenticate | None = None,
) -> FastAPI:
    """A FastAPI app over ``store`` (default: ``SAGAS_DATABASE_URL`` from ``settings`` or the
    environment): the dashboard's pages at its root and the read-only JSON API under ``/api``.
    Mount it anywhere (``app.mount("/sagas", create_app())``); the API's OpenAPI schema is at
    ``<mount>/api/openapi.json``, the Prometheus page at ``<mount>/metrics``.

    ``dashboard`` (default: ``SAGAS_DASHBOARD_*`` from the environment) configures the login,
    redaction and trace links; ``runtime`` is what actions publish with (default: the process's
    ``sagas.install``/``configure``); ``authenticate(request) -> user name or None`` hands
    identity to the host framework instead of the dashboard's own login."""
    owned = store is None
    settings = settings or Settings()
    dashboard = dashboard.checked() if dashboard is not None else from_environment()
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
    app.state.runtime = runtime
    app.state.guard = Guard(dashboard, authenticate)
    # The JSON API reads what the pages show: the same read rule (the session's login) holds.
    app.include_router(api.router, prefix=API_PREFIX, dependencies=[Depends(_api_reader)])
    # What a scrape job reads: the engine's counters and histograms (every worker's, from
    # PROMETHEUS_MULTIPROC_DIR on this host) and the store-wide gauges, at <mount>/metrics.
    app.mount("/metrics", prometheus.asgi_app(lambda: store.stats(unsent_grace=grace)))
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(pages.HERE / "static")), name="static")
    app.add_middleware(
        SessionMiddleware,
        # Random per process unless configured: a restart logs everyone out.
        secret_key=dashboard.secret_key or secrets.token_urlsafe(32),
        session_cookie=SESSION_COOKIE,
        max_age=8 * 3600,
        same_site="strict",
        https_only=dashboard.secure_cookies,
    )
    for kind, handler in _HANDLERS.items():
        app.add_exception_handler(kind, handler)
    return app


def _api_reader(request: Request) -> None:
    guard: Guard = request.app.state.guard
    guard.require_reader(request)


async def _login_required(_request: Request, _exc: Exception) -> JSONResponse:
    return _error(401, "LoginRequired", "log in to the dashboard first (this API shares its login)")


def _is_api(request: Request) -> bool:
    root = request.scope.get("root_path", "")
    path = request.url.path.removeprefix(root) if root else request.url.path
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _either(json: Handler) -> Handler:
    """JSON under /api, an error page (or the login page) for the dashboard."""

    async def handle(request: Request, exc: Exception) -> Response:
        if _is_api(request):
            return await json(request, exc)
        return _page_error(request, exc)

    return handle


def _page_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, LoginRequired):
        return pages.login_redirect(request)
    if isinstance(exc, Forbidden):
        return pages.error_page(request, exc.status, "Refused", str(exc))
    if isinstance(exc, RequestValidationError):
        first: dict[str, Any] = (list(exc.errors()) or [{}])[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")]
        field = loc[0] if loc else None
        return pages.error_page(request, 400, "Bad input", str(first.get("msg", "")), field)
    if isinstance(exc, SagaChanged):
        return pages.error_page(request, 409, "The saga changed", str(exc), "revision")
    if isinstance(exc, UnknownSaga):
        return pages.error_page(
            request,
            409,
            "Definition not loaded",
            f"{exc}: this dashboard process does not define that saga (start it with --app)",
        )
    if isinstance(exc, SagaInputError):
        return pages.error_page(request, 400, "Bad input", str(exc), exc.field)
    if isinstance(exc, SagaNotFound):
        return pages.error_page(request, 404, "Not found", str(exc))
    if isinstance(exc, ActionRefused):
        return pages.error_page(request, 409, "Refused", str(exc))
    if isinstance(exc, StoreUnavailable):
        return pages.error_page(request, 503, "Store unavailable", "try again")
    return pages.error_page(request, 500, "Error", "the saga store refused the request")


async def _page_only(request: Request, exc: Exception) -> Response:
    if _is_api(request):
        raise exc  # not raised by the read-only API
    return _page_error(request, exc)


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


_HANDLERS: dict[type[Exception], Handler] = {
    RequestValidationError: _either(_bad_request),
    SagaInputError: _either(_input_error),
    SagaNotFound: _either(_not_found),
    StoreError: _either(_store_error),
    LoginRequired: _either(_login_required),
    Forbidden: _page_only,
    ActionRefused: _page_only,
    SagaError: _page_only,
}
