"""The JSON API's routes (all GET): what ``sagas.views`` reads, with the filter as query
parameters. Bad input is a 400 whose body names the field; an unknown saga a 404; a store that
cannot be reached a 503."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from .. import views
from ..filters import SagaFilter, StuckClass
from ..payload import SAGA_ID_RE, check_saga_id
from ..store import Store
from .config import redact_detail
from .security import Guard

VERSION = "1"


class ErrorDetail(BaseModel):
    type: str = Field(description="FilterInvalid, CursorInvalid, InvalidSagaId, SagaNotFound...")
    message: str
    field: str | None = Field(description="The query parameter or path part at fault.")


class ErrorBody(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "Bad input (the field is named)."},
    503: {"model": ErrorBody, "description": "The saga store is unavailable."},
}

router = APIRouter(responses=_ERRORS)


class ListParams(SagaFilter):
    """A page of sagas: the filter, and where the page starts."""

    cursor: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,300}\.[A-Za-z0-9_-]{22}$",
        description="`next_cursor` of the page before (opaque; a tampered one is a 400).",
    )
    limit: int = Field(50, ge=1, le=views.MAX_PAGE, description="Sagas per page.")


class StuckParams(BaseModel):
    older_than: float = Field(
        300.0, ge=0, le=10 * 365 * 86400, description="Seconds stuck before a saga is listed."
    )
    stuck_class: list[StuckClass] = Field(
        [], alias="class", description="Only these classes (repeat); default: every class."
    )
    limit: int = Field(100, ge=1, le=views.MAX_PAGE)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(_store)]


def _split(params: ListParams) -> tuple[SagaFilter, str | None, int]:
    data = params.model_dump(exclude={"cursor", "limit"}, exclude_defaults=True)
    return SagaFilter.model_validate(data), params.cursor, params.limit


@router.get("/sagas", response_model=views.SagaPageView, summary="List sagas, newest first")
def list_sagas(params: Annotated[ListParams, Query()], store: StoreDep) -> views.SagaPageView:
    flt, cursor, limit = _split(params)
    return views.page(store, flt, limit=limit, cursor=cursor)


@router.get(
    "/sagas/{saga_id}",
    response_model=views.SagaDetail,
    summary="One saga: steps with their attempts, payload, history",
    responses={404: {"model": ErrorBody, "description": "No saga with this id."}},
)
def get_saga(
    saga_id: Annotated[str, Path(pattern=f"^{SAGA_ID_RE.pattern}$")],
    store: StoreDep,
    request: Request,
) -> views.SagaDetail:
    """Payload, step results and history details with the dashboard's redacted fields
    (``SAGAS_DASHBOARD_REDACT``) shown as ``***``, as on the saga's page."""
    found = views.detail(store, check_saga_id(saga_id, field="saga_id"))
    guard: Guard = request.app.state.guard
    return redact_detail(found, frozenset(guard.settings.redact))


@router.get("/counts", response_model=views.CountsView, summary="Sagas per state")
def counts(params: Annotated[SagaFilter, Query()], store: StoreDep) -> views.CountsView:
    """Store-wide with no parameters; with filter parameters, of the sagas matching them."""
    return views.counts(store, params)


@router.get(
    "/stuck",
    response_model=views.StuckListView,
    summary="Active sagas needing attention, by class, longest stuck first",
)
def stuck(params: Annotated[StuckParams, Query()], store: StoreDep) -> views.StuckListView:
    """dead_lettered (parked for an operator), unsent_commands (committed, not published),
    waiting_past_due (a timer due and not fired), no_progress (nothing scheduled, no change)."""
    return views.stuck(
        store, older_than=params.older_than, classes=params.stuck_class, limit=params.limit
    )
