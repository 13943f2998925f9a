"""The server-rendered dashboard: Jinja2 pages over the same ``sagas.views`` the JSON API
returns, on the same app (so one mount serves both).

Pages: the saga list (``/``: the API's filters as a form, cursor pages, counts per state), one
saga (``/sagas/{id}``: timeline, diagram, payload and results, history, actions), the stuck list
(``/stuck``), an action's plan (``GET /sagas/{id}/actions/{name}``) and its confirmation
(``POST`` to the same address), and ``/login``. Every route is a plain ``def`` (the store is
synchronous; FastAPI runs them in its thread pool). Bad input raises the package's typed errors,
which the app turns into an error page naming the field (``app.py``); nothing is written then.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from .. import views
from ..definition import Saga, get_orchestrated
from ..errors import SagaError, SagaInputError
from ..filters import FilterInvalid, SagaFilter, StuckClass
from ..payload import check_saga_id
from ..runtime import Runtime, current_runtime
from ..state import SagaKind, SagaState, StepState
from ..store import Store
from . import actions
from .config import DashboardSettings, redact_detail, redact_lines
from .security import Forbidden, Guard, LoginRequired, check_post, csrf_token, safe_next
from .timeline import diagram, timeline

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)

FILTER_FIELDS = (
    "name",
    "version",
    "correlation_id",
    "error_type",
    "step",
    "waiting",
    "signal",
    "parked",
    "since",
    "until",
    "updated_since",
    "updated_until",
)
MAX_REASON = 500


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


templates.env.filters["duration"] = _duration
templates.env.filters["when"] = _when


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


def _settings(request: Request) -> DashboardSettings:
    return _guard(request).settings


def _runtime(request: Request) -> Runtime:
    rt: Runtime | None = request.app.state.runtime or current_runtime()
    if rt is None:
        raise Forbidden(
            "actions need the Celery app your workers run, to send their commands: start the "
            "dashboard with `saga dashboard --app module:app` (or mount it in a process that "
            "called sagas.install)",
            status=503,
        )
    return rt


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    guard = _guard(request)
    flash = request.session.pop("flash", None)
    base = dict(
        user=guard.user(request),
        login_form=guard.has_login_form,
        actions_possible=guard.actions_possible,
        csrf=csrf_token(request),
        flash=flash,
        now=datetime.now(UTC),
    )
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)


def _definition(detail: views.SagaDetail) -> Saga[Any] | None:
    if detail.kind is not SagaKind.ORCHESTRATED:
        return None
    try:
        return get_orchestrated(detail.name, detail.version)
    except SagaError:  # this process does not define it: the page shows what the store has
        return None


# -- reading -----------------------------------------------------------------------------------


def _filter(request: Request) -> tuple[SagaFilter, dict[str, Any]]:
    q = request.query_params
    data: dict[str, Any] = {f: q[f].strip() for f in FILTER_FIELDS if q.get(f, "").strip()}
    states = [s for s in q.getlist("state") if s.strip()]
    if states:
        data["state"] = states
    step_states = [s for s in q.getlist("step_state") if s.strip()]
    if step_states:
        data["step_state"] = step_states
    return SagaFilter.parse(data), data


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= views.MAX_PAGE:
        raise FilterInvalid(f"limit: a number from 1 to {views.MAX_PAGE}", field="limit")
    return int(raw)


@router.get("/", name="dashboard")
def saga_list(request: Request) -> Response:
    _guard(request).require_reader(request)
    store = _store(request)
    counts = views.counts(store)
    form = {k: v for k, v in request.query_params.multi_items() if k != "cursor"}
    try:
        flt, data = _filter(request)
        limit = _limit(request.query_params.get("limit"))
        page = views.page(store, flt, limit=limit, cursor=request.query_params.get("cursor"))
    except SagaInputError as exc:
        return render(request, "list.html", 400, error=exc, page=None, counts=counts,
                      form=form, states=_states(request), next_url=None)  # fmt: skip
    next_url = None
    if page.next_cursor:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        next_url = "?" + urlencode([*query, ("cursor", page.next_cursor)])
    return render(request, "list.html", page=page, counts=counts, form=form, error=None,
                  states=_states(request), next_url=next_url, filtered=bool(data))  # fmt: skip


def _states(request: Request) -> dict[str, Any]:
    chosen = set(request.query_params.getlist("state"))
    return {
        "all": [s.value for s in SagaState],
        "chosen": chosen,
        "step_states": [s.value for s in StepState],
        "step_chosen": set(request.query_params.getlist("step_state")),
    }


@router.get("/sagas/{saga_id}", name="saga")
def saga_page(request: Request, saga_id: str) -> Response:
    _guard(request).require_reader(request)
    hidden = frozenset(_settings(request).redact)
    found = views.detail(_store(request), check_saga_id(saga_id, field="saga_id"))
    detail = redact_detail(found, hidden)
    definition = _definition(detail)
    offered = actions.offered(detail.state) if definition is not None else []
    return render(
        request,
        "saga.html",
        saga=detail,
        payload=detail.payload,
        results={s.name: s.result for s in detail.steps if s.result is not None},
        history=[(h, h.detail) for h in detail.history],
        timeline=timeline(detail),
        diagram=diagram(detail, definition),
        trace=_settings(request).trace_link(detail.correlation_id),
        actions=offered,
        defined=definition is not None,
        redacted=sorted(hidden),
    )


@router.get("/stuck", name="stuck")
def stuck_page(request: Request) -> Response:
    _guard(request).require_reader(request)
    raw = request.query_params.get("older_than", "300").strip() or "300"
    try:
        older_than = float(raw)
        if not 0 <= older_than <= 10 * 365 * 86400:
            raise ValueError
    except ValueError:
        raise FilterInvalid(
            "older_than: seconds, a number from 0 to ten years", field="older_than"
        ) from None
    classes = []
    for value in request.query_params.getlist("class"):
        try:
            classes.append(StuckClass(value))
        except ValueError:
            known = ", ".join(c.value for c in StuckClass)
            raise FilterInvalid(f"class: one of {known}", field="class") from None
    found = views.stuck(_store(request), older_than=older_than, classes=classes, limit=500)
    groups = {c.value: [s for s in found.items if s.stuck_class is c] for c in StuckClass}
    return render(request, "stuck.html", groups=groups, older_than=older_than,
                  chosen={c.value for c in classes})  # fmt: skip


# -- acting ------------------------------------------------------------------------------------


def _action(name: str) -> actions.DashboardAction:
    found = actions.ACTIONS.get(name)
    if found is None:
        raise FilterInvalid(
            f"action: one of {', '.join(sorted(actions.ACTIONS))}, not {name[:40]!r}",
            field="action",
        )
    return found


def _revision(raw: str | None) -> int:
    if raw is None or not raw.strip().isdigit() or len(raw.strip()) > 18:
        raise FilterInvalid(
            "revision: the saga's revision as the page showed it (reload the saga page)",
            field="revision",
        )
    return int(raw.strip())


@router.get("/sagas/{saga_id}/actions/{name}", name="preview")
def preview(request: Request, saga_id: str, name: str) -> Response:
    who = _guard(request).require_actor(request)
    sid = check_saga_id(saga_id, field="saga_id")
    action = _action(name)
    revision = _revision(request.query_params.get("revision"))
    plan = action.preview(_runtime(request), sid, revision, request.query_params, who)
    # A fork's diff names old and new values: redacted fields stay unseen here too.
    plan = replace(plan, lines=redact_lines(plan.lines, frozenset(_settings(request).redact)))
    return render(request, "preview.html", plan=plan, action=action, form=request.query_params)


@router.post("/sagas/{saga_id}/actions/{name}", name="act")
def act(
    request: Request,
    saga_id: str,
    name: str,
    csrf: Annotated[str, Form()] = "",
    revision: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    from_step: Annotated[str, Form(max_length=64)] = "",
    changes: Annotated[str, Form(max_length=256 * 1024)] = "",
) -> Response:
    guard = _guard(request)
    if guard.actions_possible and guard.user(request) is None:
        raise Forbidden("log in first: actions need an authenticated operator")
    who = guard.require_actor(request)
    check_post(request, csrf)
    sid = check_saga_id(saga_id, field="saga_id")
    action = _action(name)
    seen = _revision(revision)
    why = reason.strip()
    if not why or len(why) > MAX_REASON:
        raise FilterInvalid(
            f"reason: say why (1 to {MAX_REASON} characters); it is kept in the history",
            field="reason",
        )
    rt = _runtime(request)
    # An action's own fields (a fork's step and payload) come back from the plan's page.
    fields = {"from_step": from_step, "changes": changes} if from_step else {}
    plan = action.preview(rt, sid, seen, fields, who)  # SagaChanged here if it moved since
    done = action.carry_out(rt, plan, fields, who, why)
    if isinstance(done, actions.Landed):
        request.session["flash"] = done.message
        return RedirectResponse(request.url_for("saga", saga_id=done.saga_id), status_code=303)
    request.session["flash"] = done
    return RedirectResponse(request.url_for("saga", saga_id=sid), status_code=303)


# -- logging in --------------------------------------------------------------------------------


@router.get("/login", name="login")
def login_form(request: Request) -> Response:
    return render(request, "login.html", next=request.query_params.get("next", ""), failed=False)


@router.post("/login", name="login_post")
def login(
    request: Request,
    csrf: Annotated[str, Form()] = "",
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    guard = _guard(request)
    check_post(request, csrf)
    if not guard.has_login_form:
        raise Forbidden("this dashboard has no login of its own (no user configured)")
    client = request.client.host if request.client else "unknown"
    wait = guard.throttle.retry_after(client, username)
    if wait is not None:  # refused before the password is checked: guessing costs time
        page = render(request, "login.html", 429, next=next, failed=False, retry_after=wait)
        page.headers["Retry-After"] = str(wait)
        return page
    if not guard.check_login(username, password):
        guard.throttle.failed(client, username)
        return render(request, "login.html", 401, next=next, failed=True)
    guard.throttle.succeeded(client, username)
    guard.log_in(request, username)
    home = str(request.url_for("dashboard"))
    return RedirectResponse(safe_next(next, home), status_code=303)


@router.post("/logout", name="logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    check_post(request, csrf)
    _guard(request).log_out(request)
    return RedirectResponse(request.url_for("login"), status_code=303)


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(
        str(request.url_for("login")) + "?" + urlencode({"next": target}), status_code=303
    )


def error_page(request: Request, status: int, title: str, message: str,
               field: str | None = None) -> Response:  # fmt: skip
    return render(request, "error.html", status, title=title, message=message, field=field)


__all__ = ["LoginRequired", "error_page", "login_redirect", "router"]
