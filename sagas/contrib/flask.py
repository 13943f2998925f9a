"""Flask integration: the ``Sagas`` extension, ``flask saga ...`` and starting after a commit.

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config.from_mapping(SQLALCHEMY_DATABASE_URI="sqlite:///shop.db",
                                CELERY={"broker_url": "redis://localhost"})
        db.init_app(app)                          # before Sagas: the saga store defaults to it
        celery_app = celery_init_app(app)         # Flask's "Background Tasks with Celery"
        Sagas(app, celery=celery_app, modules=["shop.sagas"])
        return app

- settings come from ``app.config`` (``SAGAS_<NAME>``, e.g. ``SAGAS_DATABASE_URL``), then the
  Celery app's ``sagas_<name>``, then the environment; the saga store defaults to Flask-
  SQLAlchemy's default engine (``SQLALCHEMY_DATABASE_URI``, resolved the way Flask-SQLAlchemy
  resolves it) when ``SAGAS_DATABASE_URL`` is not set;
- every task sagas registers (``saga.*`` steps and compensations, ``sagas.*`` engine tasks,
  ``choreography.*`` handlers) runs inside ``app.app_context()``, pushed from Celery's
  ``task_prerun`` and popped at ``task_postrun``: steps may use ``current_app`` and ``db.session``
  whatever the Celery app's task base is (sagas' tasks do not all use ``FlaskTask``);
- ``flask saga list|show|stuck|metrics|retry|cancel|dlq|db upgrade`` is the ``saga`` command with
  the extension's settings and Celery app (no ``--app`` / ``SAGAS_CELERY_APP`` needed);
- ``saga.start(payload, ...)`` in a request whose ``db.session`` has written in its current
  transaction (objects added, changed or deleted, or flushed) writes the saga row in that same
  transaction when the saga store is the app's database: the saga exists if and only if the
  session commits, and its first step is dispatched after the commit (the row's outbox and the
  sweeper cover a crash in between). A session that has only read, or none, leaves the start
  to commit on its own at once; with the store in another database the start waits for the
  session's commit;
- ``start_saga_after_commit(...)`` validates now and sends ``start_saga`` once the session's
  transaction commits (nothing is sent if it rolls back).

``sagas.install`` binds one runtime per process, so one Flask app per process binds sagas.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
from celery.signals import task_postrun, task_prerun
from flask import Flask, current_app
from flask.ctx import AppContext
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from .. import starter
from ..catalog import get_saga
from ..cli import main as saga_command
from ..errors import ConfigurationError
from ..install import install
from ..observability import escape, get_logger, saga_context
from ..runtime import Runtime
from ..settings import Settings
from ..store.joined import Action, CallerTransaction, ConnectionTransaction, Deferred, same_database
from ..transport import START_TASK

__all__ = ["Sagas", "start_saga_after_commit"]

log = get_logger("sagas.contrib.flask")

EXTENSION = "sagas"  # app.extensions key
ENGINE_TASK_PREFIXES = ("saga.", "sagas.", "choreography.")  # every task sagas registers
CELERY_APP_PATH = f"{__name__}:current_celery_app"  # what `flask saga retry` publishes with
_PENDING = "sagas.after_commit"  # Session.info key: starts waiting for their transaction
_READY = "sagas.after_commit.ready"  # Session.info key: committed, sent when the root ends
_LISTENING = "sagas.after_commit.listening"
_WROTE = "sagas.wrote"  # Session.info key: the root transaction the session last flushed in


class Sagas:
    """The Flask extension: ``Sagas(app, celery=celery_app, modules=[...])`` or, in an app
    factory, ``sagas_ext = Sagas(modules=[...])`` then ``sagas_ext.init_app(app, celery=...)``.

    After ``init_app``: ``app.extensions["sagas"]`` is this object; ``celery``, ``settings`` and
    ``runtime`` are what sagas was installed with."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        celery: Any = None,
        modules: Iterable[str] = (),
        beat: bool = True,
    ) -> None:
        self.modules = tuple(modules)
        self.beat = beat
        self._celery = celery  # given here: used by every init_app that names none
        self.app: Flask | None = None
        self.celery: Any = None
        self.settings: Settings | None = None
        self.runtime: Runtime | None = None
        if app is not None:
            self.init_app(app, celery=celery)

    def init_app(
        self, app: Flask, *, celery: Any = None, modules: Iterable[str] | None = None
    ) -> None:
        """Install sagas on ``celery`` (default: the one given to the constructor, else
        ``app.extensions["celery"]``, where Flask's ``celery_init_app`` puts it) with settings
        from ``app.config``; register ``flask saga``. Initialise Flask-SQLAlchemy first when the
        saga store should default to its database."""
        celery_app = next(
            (c for c in (celery, self._celery, app.extensions.get("celery")) if c is not None),
            None,
        )
        if celery_app is None:
            raise ConfigurationError(
                "Sagas needs the Celery app: Sagas(app, celery=celery_app), or set "
                'app.extensions["celery"] first (Flask\'s celery_init_app does)',
                setting="celery",
            )
        if modules is not None:
            self.modules = tuple(modules)
        settings = Settings.from_config(_config_for(app, celery_app))
        broker = celery_app.conf.get("broker_url")
        if settings.broker_url is None and broker:
            # from_config passes the broker by field name, which its alias (CELERY_BROKER_URL)
            # does not accept: take it from the Celery app here.
            settings = settings.model_copy(update={"broker_url": str(broker)})
        self.runtime = install(celery_app, modules=self.modules, settings=settings, beat=self.beat)
        self.app, self.celery, self.settings = app, celery_app, settings
        db = app.extensions.get("sqlalchemy")
        if db is not None:
            _track_writes(db.session)
        starter.join_transactions(caller_transaction)
        _contexts.bind(celery_app, app)
        app.extensions[EXTENSION] = self
        app.cli.add_command(_FlaskSagaCommand(self), "saga")

    @contextmanager
    def cli_environment(self) -> Iterator[None]:
        """The environment the ``saga`` command reads, set from this extension for the block:
        every setting (``SAGAS_<NAME>``, ``CELERY_BROKER_URL``) and ``SAGAS_CELERY_APP``."""
        settings = self._installed().settings
        assert settings is not None
        wanted: dict[str, str | None] = {"SAGAS_CELERY_APP": CELERY_APP_PATH}
        for name, value in settings.model_dump().items():
            key = "CELERY_BROKER_URL" if name == "broker_url" else f"SAGAS_{name.upper()}"
            wanted[key] = None if value is None else _env_text(value)
        saved = {key: os.environ.get(key) for key in wanted}
        try:
            _set_environ(wanted)
            yield
        finally:
            _set_environ(saved)

    def _installed(self) -> Sagas:
        if self.runtime is None:
            raise ConfigurationError("Sagas.init_app(app) has not been called", setting="celery")
        return self


def _config_for(app: Flask, celery_app: Any) -> dict[str, Any]:
    """What ``Settings.from_config`` reads: ``SAGAS_<NAME>`` from the Flask config, else the
    Celery app's ``sagas_<name>``; the store from Flask-SQLAlchemy when no
    ``SAGAS_DATABASE_URL`` is given."""
    given: dict[str, Any] = {}
    for name in Settings.model_fields:
        if name == "broker_url":
            continue
        value = app.config.get(f"SAGAS_{name.upper()}")
        given[f"sagas_{name}"] = (
            value if value is not None else celery_app.conf.get(f"sagas_{name}")
        )
    in_environment = any(key.upper() == "SAGAS_DATABASE_URL" for key in os.environ)
    if given["sagas_database_url"] is None and not in_environment:
        given["sagas_database_url"] = _flask_sqlalchemy_url(app)
    return given


def _flask_sqlalchemy_url(app: Flask) -> str | None:
    """The URL of Flask-SQLAlchemy's default engine (a relative SQLite path is in the instance
    folder there, so it is read from the engine, not from ``SQLALCHEMY_DATABASE_URI``)."""
    db = app.extensions.get("sqlalchemy")
    if db is None:
        if app.config.get("SQLALCHEMY_DATABASE_URI"):
            raise ConfigurationError(
                "SQLALCHEMY_DATABASE_URI is set but Flask-SQLAlchemy is not initialised on this "
                "app yet: call db.init_app(app) before Sagas(app), or set SAGAS_DATABASE_URL",
                setting="database_url",
            )
        return None
    with app.app_context():
        url = db.engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "the app's database is an in-memory SQLite database, which workers cannot share: "
            "set SAGAS_DATABASE_URL to the saga store's URL",
            setting="database_url",
        )
    return str(url.render_as_string(hide_password=False))


def _env_text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def __getattr__(name: str) -> Any:
    """``current_celery_app``: the Celery app of the current Flask app's ``Sagas`` (what
    ``SAGAS_CELERY_APP`` points the operator commands at under ``flask saga``)."""
    if name == "current_celery_app":
        if not current_app:
            raise AttributeError("current_celery_app needs a Flask app context")
        ext = current_app.extensions.get(EXTENSION)
        if not isinstance(ext, Sagas) or ext.celery is None:
            raise AttributeError("the current Flask app has no Sagas extension")
        return ext.celery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- steps run inside the app context ------------------------------------------------------------


class _AppContexts:
    """Pushes the Flask app's context around every task sagas registered on its Celery app.

    Celery's signals are process-wide: each handler filters on the task's app and name. The
    contexts pushed are kept per thread (a worker's thread pool runs tasks side by side)."""

    def __init__(self) -> None:
        self._apps: weakref.WeakKeyDictionary[Any, Flask] = weakref.WeakKeyDictionary()
        self._local = threading.local()
        task_prerun.connect(self._push, weak=False)
        task_postrun.connect(self._pop, weak=False)

    def bind(self, celery_app: Any, app: Flask) -> None:
        self._apps[celery_app] = app

    def _stack(self) -> list[tuple[str | None, AppContext]]:
        stack: list[tuple[str | None, AppContext]] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _push(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        name = getattr(task, "name", None)
        if not isinstance(name, str) or not name.startswith(ENGINE_TASK_PREFIXES):
            return
        app = self._apps.get(getattr(task, "app", None))
        if app is None:
            return
        ctx = app.app_context()
        ctx.push()
        self._stack().append((task_id, ctx))

    def _pop(self, task_id: str | None = None, **_: Any) -> None:
        stack = self._stack()
        if stack and stack[-1][0] == task_id:
            stack.pop()[1].pop()


_contexts = _AppContexts()


# -- flask saga ...: the saga command with the extension's settings and Celery app --------------


class _FlaskSagaCommand(click.Group):
    """``sagas.cli.main``'s commands (not ``demo``), run with ``Sagas.cli_environment``."""

    def __init__(self, ext: Sagas) -> None:
        commands = {n: c for n, c in saga_command.commands.items() if n != "demo"}
        super().__init__(
            "saga",
            commands=commands,
            help="Sagas of this app: list, show, stuck, retry, cancel, dlq, metrics, db upgrade "
            "(the store and Celery app come from the Sagas extension).",
        )
        self.ext = ext

    def invoke(self, ctx: click.Context) -> Any:
        with self.ext.cli_environment():
            return super().invoke(ctx)


# -- start after commit ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Start:
    celery: Any
    name: str
    payload: dict[str, Any]
    saga_id: str
    correlation_id: str

    def send(self) -> None:
        self.celery.tasks[START_TASK].delay(
            self.name, self.payload, saga_id=self.saga_id, correlation_id=self.correlation_id
        )

    def dropped(self) -> None:
        pass  # start_saga_after_commit: nothing to send after a rollback, as documented


@dataclass(frozen=True, slots=True)
class _Joined:
    """A start written in the session's transaction: its dispatch once that commits."""

    action: Action

    def send(self) -> None:
        try:
            self.action()
        except Exception as exc:  # noqa: BLE001 - committed: the outbox and sweeper repair it
            log.error("saga dispatch after commit failed: %s: %s", type(exc).__name__, escape(exc))

    def dropped(self) -> None:
        log.info("a saga start written in a transaction that rolled back: no saga started")


# -- start in the session's transaction -----------------------------------------------------------


def caller_transaction(rt: Runtime) -> CallerTransaction | Deferred | None:
    """The Flask-SQLAlchemy session transaction a start should join: the current app's, when
    its ``db.session`` has written in its current transaction (registered with
    ``sagas.starter.join_transactions`` by ``init_app``)."""
    if not current_app:
        return None
    ext = current_app.extensions.get(EXTENSION)
    db = current_app.extensions.get("sqlalchemy")
    # Not "ext.runtime is rt": the runtime may have been replaced since init_app (a test
    # runtime); what decides is whether rt's store is this app's database.
    if not isinstance(ext, Sagas) or db is None:
        return None
    sess = _session(db.session)
    owner = sess.get_nested_transaction() or sess.get_transaction()
    if owner is None or not _has_written(sess):
        return None

    def on_commit(action: Action) -> None:
        _listen(sess)
        _pending(sess).append((owner, _Joined(action)))

    if not same_database(rt.store.url, db.engine.url.render_as_string(hide_password=False)):
        return Deferred(on_commit, "the saga store is not the app's database")
    return ConnectionTransaction(sess.connection(), on_commit)


def _track_writes(session: scoped_session[Any]) -> None:
    # Applies to every session of this Flask-SQLAlchemy's session class: a flush marks the
    # root transaction it wrote in, so a start later in that transaction joins it.
    if not event.contains(session, "after_flush", _flushed):
        event.listen(session, "after_flush", _flushed)


def _flushed(session: Session, _context: Any) -> None:
    session.info[_WROTE] = session.get_transaction()


def _has_written(session: Session) -> bool:
    if session.new or session.dirty or session.deleted:
        return True
    root = session.get_transaction()
    return root is not None and session.info.get(_WROTE) is root


def start_saga_after_commit(
    name: str,
    payload: Any,
    *,
    saga_id: str,
    correlation_id: str | None = None,
    session: Session | scoped_session[Any] | None = None,
) -> str:
    """Validate a start now (the typed error: ``UnknownSaga``, ``PayloadInvalid``,
    ``InvalidSagaId``, ...) and send ``start_saga`` once ``session``'s transaction commits
    (default: Flask-SQLAlchemy's ``db.session``). Returns the saga id.

    Nothing is sent when the transaction rolls back or the session closes without committing;
    a start registered inside a savepoint (``begin_nested``) is dropped if that savepoint rolls
    back. With no transaction in progress it is sent at once. The saga row is written by the
    coordinator after the message, in the saga store's own transaction."""
    ext = current_app.extensions.get(EXTENSION)
    if not isinstance(ext, Sagas) or ext.runtime is None:
        raise ConfigurationError("start_saga_after_commit: this Flask app has no Sagas extension")
    data, sid, cid = starter.validate(
        get_saga(name), payload, saga_id, correlation_id, rt=ext.runtime
    )
    start = _Start(ext.celery, name, data, sid, cid)
    sess = _session(session)
    owner = sess.get_nested_transaction() or sess.get_transaction()
    if owner is None:
        start.send()
        return sid
    _listen(sess)
    sess.info.setdefault(_PENDING, []).append((owner, start))
    return sid


def _session(session: Session | scoped_session[Any] | None) -> Session:
    if session is None:
        db = current_app.extensions.get("sqlalchemy")
        if db is None:
            raise ConfigurationError(
                "start_saga_after_commit: no session given and Flask-SQLAlchemy is not "
                "initialised on this app",
                setting="session",
            )
        session = db.session
    if isinstance(session, scoped_session):
        found: Session = session()
        return found
    assert isinstance(session, Session)
    return session


def _listen(session: Session) -> None:
    if not session.info.get(_LISTENING):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_transaction_end", _after_transaction_end)
        session.info[_LISTENING] = True


def _pending(session: Session) -> list[tuple[SessionTransaction, _Start | _Joined]]:
    found: list[tuple[SessionTransaction, _Start | _Joined]] = session.info.setdefault(_PENDING, [])
    return found


def _after_commit(session: Session) -> None:
    # Fired for the root transaction and for each savepoint released; the one committing is
    # still the session's innermost transaction here. A savepoint's starts move to its parent;
    # the root's are sent once it has ended (the session is usable again by then).
    committed = session.get_nested_transaction() or session.get_transaction()
    if committed is None:
        return
    parent = committed.parent if committed.nested else None
    keep: list[tuple[SessionTransaction, _Start | _Joined]] = []
    ready: list[_Start | _Joined] = session.info.setdefault(_READY, [])
    for owner, start in _pending(session):
        if owner is not committed:
            keep.append((owner, start))
        elif parent is not None:
            keep.append((parent, start))
        else:
            ready.append(start)
    session.info[_PENDING] = keep


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Starts still owned by a transaction that ended were rolled back (or closed uncommitted).
    pending = _pending(session)
    if any(owner is transaction for owner, _ in pending):
        session.info[_PENDING] = [(o, s) for o, s in pending if o is not transaction]
        for owner, start in pending:
            if owner is transaction:
                start.dropped()
    if transaction.parent is None:
        ready = session.info.pop(_READY, [])
        if ready:
            _send_all(ready)


def _send_all(starts: list[_Start | _Joined]) -> None:
    """Send each start (after the commit, outside any transaction); the first failure is
    raised once every start was tried."""
    failed: Exception | None = None
    for start in starts:
        try:
            start.send()
        except Exception as exc:  # noqa: BLE001 - try the others, then raise the first
            assert isinstance(start, _Start)  # a _Joined logs its own failure
            with saga_context(
                saga=escape(start.name), saga_id=start.saga_id, correlation_id=start.correlation_id
            ):
                log.error("start after commit not sent: %s: %s", type(exc).__name__, escape(exc))
            failed = failed or exc
    if failed is not None:
        raise failed
