"""The ``saga`` command: demo, list, show, db upgrade, and the operator actions.

Configuration is read here, once, from the environment (``SAGAS_DATABASE_URL``,
``CELERY_BROKER_URL``); errors end in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import Progress

from . import (
    graph,
    operations,
    prometheus,
    report,
    retention,
    signals,
    versions,
    views,
)
from .definition import get_orchestrated
from .doctor import run as doctor_checks
from .errors import ActionRefused, PayloadInvalid, SagaError, SagaInputError, StoreError
from .examples.demo import run_embedded, run_loans, run_trips
from .filters import CursorInvalid, FilterInvalid, SagaFilter, StuckClass
from .install import configure
from .observability import escape
from .payload import check_saga_id
from .runtime import Runtime, current_runtime
from .settings import Settings
from .state import OperatorAction, StepState
from .store import Store
from .store.migrate import MigrationStep, current_revision, pending_steps
from .store.migrate import upgrade as run_upgrade

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (FilterInvalid, CursorInvalid) as exc:  # bad usage: exit 2, like click's own
            option = f"--{(exc.field or 'filter').replace('_', '-')}"
            text = str(exc).removeprefix(f"{exc.field}: ")
            click.echo(f"error: {option}: {text}".splitlines()[0], err=True)
            sys.exit(2)
        except StoreError as exc:
            text = str(exc).splitlines()[0]
            missing = "no such table" in text or "does not exist" in text
            hint = " (run `saga db upgrade`?)" if missing else ""
            click.echo(f"error: {text}{hint}", err=True)
            sys.exit(1)
        except SagaError as exc:
            click.echo(f"error: {exc}".splitlines()[0], err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _store() -> Store:
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError: bad environment
        click.echo(f"error: bad configuration: {str(exc).splitlines()[0:3]}", err=True)
        sys.exit(2)
    store = Store(settings.database_url_sqlalchemy)
    store.ping()
    return store


@click.group()
@click.version_option(package_name="celery-sagas", prog_name="saga")
def main() -> None:
    """sagas: distributed transactions on Celery."""


_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (the HTTP API's shape).")


def _emit(view: Any) -> None:
    click.echo(view.model_dump_json() if hasattr(view, "model_dump_json") else json.dumps(view))


def _many(values: tuple[str, ...]) -> str | None:
    return ",".join(values) if values else None


_FILTER_OPTIONS = (
    click.option("--state", multiple=True, help="Saga state(s): repeat or comma-separate."),
    click.option("--name", default=None, help="Only sagas of this name."),
    click.option("--version", "version", type=int, default=None, help="Definition version."),
    click.option("--correlation-id", default=None),
    click.option(
        "--error-type", default=None, help="Failed with, or a step's last error is, this."
    ),
    click.option("--step", default=None, help="At (or stopped at) this step."),
    click.option("--step-state", multiple=True, help="With --step: that step in these states."),
    click.option(
        "--waiting",
        is_flag=False,
        flag_value="",
        default=None,
        metavar="[SIGNAL]",
        help="Waiting for a signal (any, or this one).",
    ),
    click.option("--parked/--not-parked", default=None, help="Parked for an operator (or not)."),
    click.option("--since", default=None, help="Created at or after: a date-time or an age (2h)."),
    click.option("--until", default=None, help="Created before: a date-time or an age (30m)."),
    click.option("--updated-since", default=None, help="Last changed at or after."),
    click.option("--updated-until", default=None, help="Last changed before."),
)
# The parameter names those options give the command (popped into the filter).
_FILTER_KEYS = (
    "state", "name", "version", "correlation_id", "error_type", "step", "step_state",
    "waiting", "parked", "since", "until", "updated_since", "updated_until",
)  # fmt: skip


def _filter_options(fn: F) -> F:
    """The saga filter's options (``saga list`` and ``saga bulk`` share them): the command gets
    them parsed as one ``flt: SagaFilter`` (a bad value: ``FilterInvalid`` naming the option)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in _FILTER_KEYS}
        state, step_state, waiting = (
            given.pop("state"),
            given.pop("step_state"),
            given.pop("waiting"),
        )
        flt = SagaFilter.parse(
            {
                **given,
                "state": _many(state),
                "step_state": _many(step_state),
                "waiting": True if waiting == "" else None,
                "signal": waiting or None,
            }
        )
        return fn(*args, flt=flt, **kwargs)

    decorated: Any = wrapper
    for option in reversed(_FILTER_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


@main.command("list")
@click.option("--cursor", default=None, help="Continue after the page that printed it.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, views.MAX_PAGE))
@_JSON
@_one_line_errors
@_filter_options
def list_(flt: SagaFilter, cursor: str | None, limit: int, as_json: bool) -> None:
    """List sagas, newest first, a page at a time (the next page's --cursor is printed)."""
    found = views.page(_store(), flt, limit=limit, cursor=cursor)
    if as_json:
        _emit(found)
        return
    click.echo(report.saga_list(found.items))
    if found.next_cursor:
        click.echo(f"next page: --cursor {found.next_cursor}")


@main.command()
@click.argument("saga_id")
@_JSON
@_one_line_errors
def show(saga_id: str, as_json: bool) -> None:
    """Show one saga's steps and its full timeline."""
    check_saga_id(saga_id, field="ID")
    if as_json:
        _emit(views.detail(_store(), saga_id))
        return
    store = _store()
    click.echo(report.timeline(*store.get(saga_id), forks=store.forks_of(saga_id)))


@main.command()
@click.option("--older-than", default=300.0, show_default=True, help="Seconds stuck.")
@click.option(
    "--class",
    "classes",
    multiple=True,
    type=click.Choice([c.value for c in StuckClass]),
    help="Only this class (repeat); default: every class.",
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, views.MAX_PAGE))
@_JSON
@_one_line_errors
def stuck(older_than: float, classes: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Active sagas needing attention, longest stuck first: dead-lettered, unsent commands,
    waiting past due (a timer not fired), no progress (nothing scheduled, no change)."""
    found = views.stuck(
        _store(),
        older_than=older_than,
        classes=[StuckClass(c) for c in classes],
        limit=limit,
    )
    if as_json:
        _emit(found)
        return
    if not found.items:
        click.echo("no stuck sagas")
        return
    rows = [
        [
            s.saga.id,
            s.saga.name,
            s.saga.state.value,
            s.stuck_class.value,
            report.age(s.stuck_for_seconds),
            s.reason,
        ]
        for s in found.items
    ]
    click.echo(report.table(["ID", "NAME", "STATE", "CLASS", "FOR", "WHY"], rows, shrink=(5, 1)))


@main.group(invoke_without_command=True)
@_JSON
@click.pass_context
@_one_line_errors
def metrics(ctx: click.Context, as_json: bool) -> None:
    """Store-wide gauges in Prometheus text format (for a textfile collector or a scrape job).

    Computed from the saga tables, so they cover every worker process. The engine's counters and
    histograms (SAGAS_METRICS=1) are served by ``saga metrics serve`` or a worker's
    SAGAS_METRICS_PORT."""
    if ctx.invoked_subcommand is not None:
        return
    stats = _store().stats(unsent_grace=Settings().outbox_grace)
    if as_json:
        _emit(views.MetricsView.of(stats))
        return
    click.echo(report.prometheus(stats))


@metrics.command("serve")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@_one_line_errors
def metrics_serve(port: int, host: str) -> None:
    """Serve /metrics: every worker process's counters and histograms on this host (from
    $PROMETHEUS_MULTIPROC_DIR, the directory the workers write to) and the store-wide gauges."""
    if prometheus.multiprocess_dir() is None:
        click.echo(
            f"error: set {prometheus.MULTIPROC_ENV} to the directory the workers write to",
            err=True,
        )
        sys.exit(2)
    store, grace = _store(), Settings().outbox_grace
    _server, thread = prometheus.serve(port, host, lambda: store.stats(unsent_grace=grace))
    click.echo(f"serving metrics on http://{host}:{port}/metrics", err=True)
    try:
        thread.join()  # the server's thread serves until the process is stopped
    except KeyboardInterrupt:
        pass


_APP_OPTION = click.option(
    "--app",
    "app_path",
    envvar="SAGAS_CELERY_APP",
    default=None,
    help="module:attribute of your Celery app (the one that calls sagas.install), e.g. "
    "shop.celery:app; default: $SAGAS_CELERY_APP",
)
_REASON = click.option("--reason", required=True, help="Recorded in the saga's history.")


_BY = click.option(
    "--by",
    default=None,
    help="Who acts, recorded in the history (default: your OS user name).",
)
_REVISION = click.option(
    "--revision",
    type=click.IntRange(0),
    default=None,
    help="The saga's revision as you saw it (saga show): refused if it changed since.",
)
_YES = click.option("--yes", "-y", is_flag=True, help="Do not ask before acting.")
_DRY_RUN = click.option("--dry-run", is_flag=True, help="Only show the plan; change nothing.")


def _operator_options(*, revision: bool = True) -> Callable[[F], F]:
    """The options every operator action takes: --reason, --by, --revision (one saga's
    actions), --yes, --dry-run, --app."""
    stack = [_REASON, _BY, *([_REVISION] if revision else []), _YES, _DRY_RUN, _APP_OPTION]

    def apply(fn: F) -> F:
        for option in reversed(stack):  # the first listed is the first in --help
            fn = option(fn)
        return fn

    return apply


DONE = {  # the last line each action prints: "saga ID: ..."
    OperatorAction.RETRY: "retry dispatched ({state})",
    OperatorAction.CANCEL: "cancelled, now {state}",
    OperatorAction.PAUSE: "paused ({state})",
    OperatorAction.RESUME: "resumed, now {state}",
    OperatorAction.RERUN: "rerun dispatched, now {state}",
    OperatorAction.FORK: "forked as {fork}",
}


def _operator_action(
    action: OperatorAction,
    saga_id: str,
    options: dict[str, Any],
    fork: dict[str, Any] | None = None,
) -> None:
    """Plan, show, confirm (when it runs compensations or effects), then carry out."""
    check_saga_id(saga_id, field="ID")
    rt = _operator_runtime(options["app_path"])
    plan = operations.preview(
        saga_id,
        action,
        reason=options["reason"],
        by=options["by"],
        revision=options["revision"],
        rt=rt,
        **(fork or {}),
    )
    if plan.refused is not None:
        raise ActionRefused(plan.text())
    click.echo(plan.text())
    if options["dry_run"]:
        click.echo("dry run: nothing done")
        return
    if plan.needs_confirmation and not options["yes"]:
        _confirm()
    done = operations.carry_out(plan, rt=rt)
    state = done.after.value if done.after is not None else "?"
    new = plan.fork.saga_id if plan.fork is not None else ""
    click.echo(f"saga {saga_id}: " + DONE[action].format(state=state, fork=new))


def _confirm() -> None:
    try:
        ok = click.confirm("go ahead?", default=False)
    except click.Abort:
        ok = False
    if not ok:
        click.echo("error: not confirmed, nothing done (--yes skips the question)", err=True)
        sys.exit(1)


def _action_command(action: OperatorAction, doc: str) -> None:
    @main.command(action.value, help=doc)
    @click.argument("saga_id")
    @_operator_options()
    @_one_line_errors
    def command(saga_id: str, **options: Any) -> None:
        _operator_action(action, saga_id, options)


_action_command(
    OperatorAction.RETRY,
    "Re-drive a saga from its open step or its dead-lettered compensation (shows the plan and "
    "asks first).",
)
_action_command(
    OperatorAction.CANCEL,
    "Stop a running saga and compensate what it did, newest first (shows the plan and asks).",
)
_action_command(
    OperatorAction.PAUSE,
    "Pause a saga: nothing new is dispatched (a running step's reply is recorded), timers "
    "wait, the sweeper leaves it alone.",
)
_action_command(
    OperatorAction.RESUME,
    "Resume a paused saga from where it stands; whatever fell due while paused (a retry, a "
    "step timeout, the saga's deadline) fires now, as the plan shows.",
)
_action_command(
    OperatorAction.RERUN,
    "Run a failed saga again from its failed step, or a parked step, in the same saga (its "
    "history and idempotency keys kept).",
)


@main.command("fork")
@click.argument("saga_id")
@click.option("--from", "from_step", required=True, help="The step the new saga starts at.")
@click.option("--payload", "payload_json", default=None, help="A whole new payload (JSON).")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="PATH=JSON",
    help="Change one payload field, e.g. --set address.city='\"Lyon\"' (repeatable).",
)
@click.option("--id", "new_id", default=None, help="The new saga's id (default: ID.forkN).")
@_operator_options()
@_one_line_errors
def fork_(
    saga_id: str,
    from_step: str,
    payload_json: str | None,
    sets: tuple[str, ...],
    new_id: str | None,
    **options: Any,
) -> None:
    """Start a new saga from step --from of a finished saga: the steps before it are taken as
    done with their recorded results, the payload is edited and validated, and both sagas
    record the link, the diff, who and why."""
    payload = _json_option("--payload", payload_json) if payload_json is not None else None
    if payload is not None and not isinstance(payload, dict):
        raise PayloadInvalid("--payload must be a JSON object", field="payload")
    changes: dict[str, Any] = {}
    for item in sets:
        path, eq, raw = item.partition("=")
        if not eq or not path:
            raise SagaInputError(f"--set {item!r}: expected PATH=JSON", field="set")
        changes[path] = _json_option(f"--set {path}", raw)
    fork = {"from_step": from_step, "payload": payload, "changes": changes, "new_id": new_id}
    _operator_action(OperatorAction.FORK, saga_id, options, fork)


def _json_option(name: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SagaInputError(f"{name} is not JSON: {exc}", field=name.lstrip("-")) from None


@main.command("bulk")
@click.argument("action", type=click.Choice(sorted(a.value for a in operations.BULK_ACTIONS)))
@click.argument("saga_ids", nargs=-1)
@click.option(
    "--older-than",
    default=None,
    help="Select sagas unchanged for this long: seconds, or 30m, 2h, 7d (as --updated-until).",
)
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100000))
@_operator_options(revision=False)  # each saga is acted on at the revision its plan saw
@_one_line_errors
@_filter_options
def bulk_(
    action: str,
    saga_ids: tuple[str, ...],
    flt: SagaFilter,
    older_than: str | None,
    limit: int,
    **options: Any,
) -> None:
    """retry, cancel or resume many sagas: the ids given, or those the filters select (the
    filters of saga list). Shows the count and each saga's plan first (a dry run), asks, then
    acts with a progress bar."""
    what = OperatorAction(action)
    for sid in saga_ids:
        check_saga_id(sid, field="SAGA_IDS")
    if older_than is not None:
        if flt.updated_until is not None:
            raise SagaInputError(
                "give --older-than or --updated-until, not both", field="older_than"
            )
        # The same selection as --updated-until with an age: unchanged for that long.
        age = timedelta(seconds=_seconds(older_than))
        flt = flt.model_copy(update={"updated_until": age})
    filtered = flt != SagaFilter()
    if saga_ids and filtered:
        raise SagaInputError("give saga ids or filters, not both", field="SAGA_IDS")
    if not saga_ids and not filtered:
        raise SagaInputError(
            "select sagas: ids, or filters (--state, --name, --older-than, ...: see saga list)",
            field="SAGA_IDS",
        )
    rt = _operator_runtime(options["app_path"])
    ids = list(saga_ids) or rt.store.select_ids(flt, limit=limit)
    who = {"reason": options["reason"], "by": options["by"], "rt": rt}
    planned = operations.bulk(what, ids, dry_run=True, **who)
    click.echo(report.bulk_plan(planned))
    if options["dry_run"] or not planned.planned:
        return
    if not options["yes"]:
        _confirm()
    chosen = [i.saga_id for i in planned.items if i.error is None]
    with _progress(len(chosen), f"{what.value}") as advance:
        result = operations.bulk(what, chosen, progress=lambda _item: advance(), **who)
    click.echo(f"{what.value}: {result.done} done, {result.refused} refused")
    for item in result.items:
        if item.error is not None:
            click.echo(f"error: {item.saga_id}: {item.error}", err=True)
    if result.refused:
        sys.exit(1)


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr (stdout stays the report)."""
    with Progress(console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> float:
    unit = _UNITS.get(text[-1:].lower())
    number = text[:-1] if unit else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise SagaInputError(
            f"--older-than {text!r}: expected seconds or a number with s, m, h or d",
            field="older_than",
        )
    return value


@main.group()
def dlq() -> None:
    """The dead-letter list: compensations, and steps routed to park, out of retries."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@_JSON
@_one_line_errors
def dlq_list(limit: int, as_json: bool) -> None:
    """Parked sagas and the compensation (or parked step) each is waiting on."""
    found = views.dead_letters(_store(), limit=limit)
    if as_json:
        click.echo(json.dumps([d.model_dump(mode="json") for d in found]))
        return
    rows = [
        [
            d.saga.id,
            d.saga.name,
            d.step if d.step_state is StepState.COMPENSATION_FAILED else f"{d.step} (parked)",
            str(d.attempts),
            escape(f"{d.error.type}: {d.error.message}")[:70] if d.error else "",
        ]
        for d in found
    ]
    click.echo(
        report.table(["ID", "NAME", "STEP", "ATTEMPTS", "LAST ERROR"], rows, shrink=(4, 1))
        if rows
        else "dead-letter list is empty"
    )


@dlq.command("retry")
@click.argument("saga_id")
@_REASON
@_BY
@_APP_OPTION
@_one_line_errors
def dlq_retry(saga_id: str, reason: str, by: str | None, app_path: str | None) -> None:
    """Try a dead-lettered compensation again."""

    store = _store()
    if not any(r.id == saga_id for r, _ in store.dead_letters(limit=100000)):
        raise SagaError(f"saga {saga_id!r} is not on the dead-letter list")
    operations.retry(saga_id, reason=reason, by=by, rt=_operator_runtime(app_path))
    click.echo(f"saga {saga_id}: compensation re-dispatched")


def _operator_runtime(app_path: str | None, *, ping: bool = True) -> Runtime:
    """The runtime operator commands publish with: the user's own Celery app."""
    if not app_path:
        raise SagaError(
            "--app is required (or set SAGAS_CELERY_APP): the module:attribute of the Celery "
            "app your workers run, e.g. shop.celery:app"
        )
    sys.path.insert(0, os.getcwd())  # like `celery -A`, find the app from the current directory
    module, _, attr = app_path.partition(":")
    try:
        app = getattr(importlib.import_module(module), attr or "app")
    except (ImportError, AttributeError) as exc:
        raise SagaError(f"--app {app_path!r}: {type(exc).__name__}: {exc}") from exc
    installed = current_runtime()
    if installed is not None and installed.app is app:
        return installed  # the app called sagas.install: its settings (app.conf) hold
    settings = Settings()
    store = _store() if ping else Store(settings.database_url_sqlalchemy)
    return configure(settings=settings, store=store, app=app)


@main.command()
@_APP_OPTION
@_one_line_errors
def doctor(app_path: str | None) -> None:
    """Check the deployment: store migrated, broker reachable, queues consumed, sweeper running.

    Exit status 1 if any check fails (each failure is one line saying what is wrong)."""
    if app_path:
        rt = _operator_runtime(app_path, ping=False)
        settings, store, app = rt.settings, rt.store, rt.celery
    else:
        settings, app = Settings(), None
        store = Store(settings.database_url_sqlalchemy)
    checks = doctor_checks(settings, store, app)
    for check in checks:
        click.echo(check.line())
    if any(c.ok is False for c in checks):
        sys.exit(1)


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; loopback by default (plain HTTP: put a TLS proxy in front).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--app",
    "app_path",
    envvar="SAGAS_CELERY_APP",
    default=None,
    help="module:attribute of your Celery app: the definitions (diagrams, plans) and what "
    "actions publish with; without it the dashboard is read-only.",
)
@click.option(
    "--hash-password",
    is_flag=True,
    help="Ask for a password and print its hash for SAGAS_DASHBOARD_PASSWORD_HASH; serve nothing.",
)
@_one_line_errors
def dashboard(host: str, port: int, app_path: str | None, hash_password: bool) -> None:
    """Serve the dashboard (pages at /, JSON API at /api, schema at /api/openapi.json).

    Log in with SAGAS_DASHBOARD_USER and the password whose hash is
    SAGAS_DASHBOARD_PASSWORD_HASH; without them it is read-only."""
    try:  # an optional extra: imported only when asked for, with a clear message if missing
        web = importlib.import_module("sagas.web.serve")
        config = importlib.import_module("sagas.web.config")
    except ModuleNotFoundError as exc:
        raise SagaError(
            f"saga dashboard needs the dashboard extra ({exc.name} is not installed): "
            "pip install 'celery-sagas[dashboard]'"
        ) from None
    if hash_password:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        click.echo(config.hash_password(password))
        return
    rt = _operator_runtime(app_path) if app_path else None
    web.serve(rt.store if rt else _store(), host=host, port=port, runtime=rt)


@main.command("signal")
@click.argument("saga_id")
@click.argument("name")
@click.option("--data", default="{}", show_default=True, help="The signal's data, as JSON.")
@click.option("--signal-id", default=None, help="Idempotency id (a repeated send is one signal).")
@_APP_OPTION
@_one_line_errors
def signal_(
    saga_id: str, name: str, data: str, signal_id: str | None, app_path: str | None
) -> None:
    """Send signal NAME to a saga's wait step (an approval, a callback); the data is validated
    by the wait's model. Prints whether it was delivered, kept for the wait, or a duplicate."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise SagaError(f"--data is not JSON: {exc}") from None
    check_saga_id(saga_id, field="ID")
    sent = signals.signal(saga_id, name, value, signal_id=signal_id, rt=_operator_runtime(app_path))
    click.echo(f"signal {sent.name} for saga {sent.saga_id}: {sent.outcome} (id {sent.signal_id})")


@main.command("graph")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="Default: the newest.")
@_APP_OPTION
@_one_line_errors
def graph_(name: str, version: int | None, app_path: str | None) -> None:
    """Print saga NAME's definition as a Mermaid flowchart (steps, waits, the pivot, failure
    routes, compensations); paste it into any Mermaid renderer."""
    if app_path:
        _operator_runtime(app_path, ping=False)  # imports the app's saga modules
    click.echo(graph.mermaid(get_orchestrated(name, version)))


@main.command("versions")
@_APP_OPTION
@_JSON
@_one_line_errors
def versions_(app_path: str | None, as_json: bool) -> None:
    """Saga versions: sagas in flight and finished per version, which versions this deployment
    defines (with --app / SAGAS_CELERY_APP) and which new starts take.

    Exit status 1 if a defined version differs from the one its sagas in flight started on."""
    if app_path:
        rt = _operator_runtime(app_path)
    else:
        settings = Settings()
        rt = Runtime(settings=settings, store=_store(), app=None)
    lines = versions.report(rt)
    problems = [p for line in lines for p in line.problems]
    if as_json:
        found = [
            views.VersionView(
                name=v.name,
                version=v.version,
                in_flight=v.in_flight,
                finished=v.finished,
                defined=v.defined,
                newest=v.newest,
                problems=v.problems,
            )
            for v in lines
        ]
        _emit(views.VersionsView(versions=found, ok=not problems))
        sys.exit(1 if problems else 0)
    if not lines:
        click.echo("no sagas")
        return
    rows = [
        [
            line.name,
            f"v{line.version}",
            str(line.in_flight),
            str(line.finished),
            ("yes, new starts" if line.newest else "yes") if line.defined else "no",
            "differs" if line.problems else "",
        ]
        for line in lines
    ]
    headers = ["NAME", "VERSION", "IN FLIGHT", "FINISHED", "DEFINED", "DEFINITION"]
    click.echo(report.table(headers, rows, shrink=(0,)))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(1)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@_JSON
@_one_line_errors
def upgrade(as_json: bool) -> None:
    """Apply the saga tables' migrations (idempotent), one transaction for all.

    Each migration is reported on stderr as it ends, with how long it took (a large store's
    index builds take a while), under a progress bar; stdout is the one-line result (or JSON:
    the revision and the migrations applied)."""
    store = _store()
    steps = pending_steps(store.engine)
    err = Console(stderr=True)
    applied: list[dict[str, Any]] = []
    with Progress(console=err, transient=False) as bar:
        task = bar.add_task(_step_label(steps, 0), total=len(steps) or 1)
        began = time.monotonic()

        def done(step: MigrationStep) -> None:
            nonlocal began
            now = time.monotonic()
            applied.append({"revision": step.revision, "name": step.name, "seconds": now - began})
            bar.console.print(f"{step.revision} {step.name} … done ({now - began:.1f} s)")
            began = now
            bar.update(task, advance=1, description=_step_label(steps, len(applied)))

        run_upgrade(store.engine, on_step=done)
        if not steps:
            bar.update(task, advance=1, description="up to date: no migration to apply")
    revision = current_revision(store.engine)
    if as_json:
        click.echo(json.dumps({"revision": revision, "applied": applied}))
        return
    click.echo(f"saga store at revision {revision} ({store!r})")


def _step_label(steps: list[MigrationStep], done: int) -> str:
    if done >= len(steps):
        return "migrated" if steps else "checking"
    return f"{steps[done].revision} {steps[done].name}"


@main.command()
@click.option("--workers/--no-workers", default=True, help="Spawn worker processes (server mode).")
@click.option("--choreography", is_flag=True, help="Run the event-driven version of the example.")
@click.option(
    "--example",
    type=click.Choice(["order", "loan", "trip"]),
    default="order",
    show_default=True,
    help="order: order fulfillment; loan: a two-day wait for an approval; trip: bookings in "
    "parallel, then the charge as the pivot (loan and trip on a fake clock).",
)
@_one_line_errors
def demo(workers: bool, choreography: bool, example: str) -> None:
    """Run the order-fulfillment example end to end and print each saga's timeline.

    With no configuration: SQLite and an in-process worker (works from any directory). With
    SAGAS_DATABASE_URL and CELERY_BROKER_URL set, from the sagas checkout: that database and
    broker, with one worker process per service (the example deployment in workers/).
    """
    if example == "loan":
        run_loans()
        return
    if example == "trip":
        run_trips()
        return
    if not Settings().broker_url:
        run_embedded(choreography=choreography)
        return
    sys.path.insert(0, os.getcwd())  # like `celery -A`, find the deployment from the checkout
    if not (os.path.isfile("celeryconfig.py") and os.path.isdir("workers")):
        raise click.ClickException(
            "server mode (CELERY_BROKER_URL is set) runs the example deployment in workers/ with "
            "celeryconfig.py: run it from the root of the sagas checkout, or unset "
            "CELERY_BROKER_URL for the embedded demo"
        )
    # The example deployment lives in the checkout, not in the package: found at run time.
    importlib.import_module("workers.demo").run(spawn_workers=workers, choreography=choreography)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds (a click callback: the option's
    error names it)."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    try:
        seconds = float(text[:-1] if unit is not None else text) * (unit or 1)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a duration (e.g. 30d, 12h, 90m, 3600)"
        ) from None
    if not 0 < seconds < float("inf"):
        raise click.BadParameter(f"{value!r} must be a positive duration")
    return seconds


@main.command()
@click.option("--older-than", required=True, callback=_duration, help="Age: 30d, 12h, 3600...")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Append each saga (row, steps, history) to this JSON-lines file before deleting it.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_one_line_errors
def prune(older_than: float, batch: int, archive: str | None, dry_run: bool, yes: bool) -> None:
    """Delete finished (completed or failed) sagas last changed before the age given.

    Batches of --batch sagas, one short transaction each; active sagas are never touched.
    Exit status 0 also when nothing was due."""
    store = _store()
    cutoff, count = retention.due(store, older_than)
    click.echo(f"{count} finished saga(s) last changed before {report.ts(cutoff)} (UTC)")
    if dry_run or count == 0:
        return
    if not yes:
        click.confirm(f"delete {count} saga(s) with their steps and history?", abort=True)
    out = open(archive, "a", encoding="utf-8") if archive else None  # noqa: SIM115 - closed below
    try:
        with click.progressbar(length=count, label="pruning", file=sys.stderr) as bar:
            done = retention.prune(store, older_than, batch=batch, archive=out, progress=bar.update)
    finally:
        if out is not None:
            out.close()
    where = f", archived to {archive}" if archive else ""
    click.echo(f"deleted {done.deleted} saga(s) in {done.batches} batch(es){where}")
