"""The ``saga`` command: demo, list, show, db upgrade.

Configuration is read here, once, from the environment (``SAGAS_DATABASE_URL``,
``CELERY_BROKER_URL``); errors end in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from . import report
from .errors import SagaError
from .settings import Settings
from .state import SagaState
from .store import Store

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SagaError as exc:
            click.echo(f"error: {exc}".splitlines()[0], err=True)
            sys.exit(1)
        except SQLAlchemyError as exc:
            text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            hint = " (run `saga db upgrade`?)" if "saga" in text else ""
            click.echo(f"error: database: {text}{hint}", err=True)
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
def main() -> None:
    """sagas: distributed transactions on Celery."""


@main.command("list")
@click.option("--state", type=click.Choice([s.value for s in SagaState]), default=None)
@click.option("--name", default=None, help="Only sagas of this name.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@_one_line_errors
def list_(state: str | None, name: str | None, limit: int) -> None:
    """List sagas, newest first."""
    records = _store().list(state=SagaState(state) if state else None, name=name, limit=limit)
    click.echo(report.saga_list(records))


@main.command()
@click.argument("saga_id")
@_one_line_errors
def show(saga_id: str) -> None:
    """Show one saga's steps and its full timeline."""
    from .payload import check_saga_id

    check_saga_id(saga_id, field="ID")
    click.echo(report.timeline(*_store().get(saga_id)))


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command()
@_one_line_errors
def upgrade() -> None:
    """Apply the saga tables' migrations (idempotent)."""
    from .migrate import current_revision
    from .migrate import upgrade as run_upgrade

    store = _store()
    run_upgrade(store.engine)
    click.echo(f"saga store at revision {current_revision(store.engine)} ({store!r})")


@main.command()
@click.option("--workers/--no-workers", default=True, help="Spawn worker processes (server mode).")
@click.option("--choreography", is_flag=True, help="Run the event-driven version of the example.")
@_one_line_errors
def demo(workers: bool, choreography: bool) -> None:
    """Run the order-fulfillment example end to end and print each saga's timeline.

    With no configuration: SQLite and an in-process worker. With SAGAS_DATABASE_URL and
    CELERY_BROKER_URL set: that database and broker, with one worker process per service.
    """
    sys.path.insert(0, os.getcwd())  # like `celery -A`, find the example from the checkout
    from workers.demo import run

    run(spawn_workers=workers, choreography=choreography)
