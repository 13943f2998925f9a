"""The hot path's statements, run on the pooled psycopg connection itself.

Why: SQLAlchemy's per-execution machinery (checking out a connection and switching it to
autocommit, the compiled-cache lookup, the execution context, the result proxy) costs more
client CPU than the statement's own work in psycopg: ~230 µs against ~100 µs for a load
(``bench/README.md``, "Statements on the driver connection"), and a spread step runs two or three
of them. Nothing about the statements changes: each is compiled once by SQLAlchemy for the
engine's dialect, its bind processors (JSONB, the UTC timestamps) are SQLAlchemy's own, and the
connection comes from and goes back to the engine's pool, so psycopg's prepared statements, the
golden SQL and every pool setting stay as they were.

Used only while nothing listens to the engine's execution events: a test's hook or the bench's
statement counter sees every statement through SQLAlchemy instead (``Driver.usable``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.sql import ClauseElement, Executable

from ..errors import StoreConflict, StoreError, StoreUnavailable
from ..settings import mask_url

try:
    import psycopg
    from psycopg.rows import namedtuple_row
except ImportError:  # pragma: no cover - a SQLite-only install (no postgres extra): never used
    pass


def _first(cur: Any) -> Any:
    return cur.fetchone()


def _scalar(cur: Any) -> Any:
    row = cur.fetchone()
    return None if row is None else row[0]


def _nothing(cur: Any) -> None:
    return None


# Store's FIRST, SCALAR, NOTHING: what the caller reads from the result.
_FETCH: dict[str, Callable[[Any], Any]] = {"first": _first, "scalar": _scalar, "nothing": _nothing}


class _Compiled:
    """One statement compiled for the engine's dialect, with SQLAlchemy's bind processors."""

    __slots__ = ("compiled", "processors", "sql")

    def __init__(self, statement: Executable, engine: Engine) -> None:
        compiled: Any = cast(ClauseElement, statement).compile(dialect=engine.dialect)
        self.compiled = compiled
        self.sql: str = compiled.string
        # What SQLAlchemy itself applies to these parameters before it calls the driver.
        self.processors: dict[str, Callable[[Any], Any]] = dict(compiled._bind_processors)

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.compiled.construct_params(params)
        for name, process in self.processors.items():
            if name in out:
                out[name] = process(out[name])
        return out


class Driver:
    """Runs prebuilt statements in autocommit on a connection of ``engine``'s pool."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._compiled: dict[int, tuple[Executable, _Compiled]] = {}

    @staticmethod
    def available(engine: Engine) -> bool:
        """PostgreSQL through psycopg 3 (the only driver this path speaks)."""
        return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"

    def usable(self) -> bool:
        """False while anything listens to the engine's execution events (they would not see
        statements run here)."""
        d = self.engine.dispatch
        return not (
            d.before_cursor_execute or d.after_cursor_execute or d.before_execute or d.after_execute
        )

    def run(self, statement: Executable, params: Mapping[str, Any], fetch: str) -> Any:
        """Execute ``statement`` once (retried once on a connection the server had dropped,
        as ``Store._single`` does); ``fetch`` reads the result from the cursor."""
        compiled = self._compile(statement)
        args = compiled.parameters(params)
        read = _FETCH[fetch]
        for attempt in (1, 2):
            try:
                return self._execute(compiled.sql, args, read)
            except _Dropped as dropped:
                if attempt == 2:
                    raise self._unavailable(dropped.error) from dropped.error
        raise AssertionError("unreachable")

    def _compile(self, statement: Executable) -> _Compiled:
        # Keyed by identity: the hot statements are module constants or lru_cached shapes, and
        # the statement is kept in the entry so its id cannot be reused by another object.
        entry = self._compiled.get(id(statement))
        if entry is None or entry[0] is not statement:
            entry = (statement, _Compiled(statement, self.engine))
            self._compiled[id(statement)] = entry
        return entry[1]

    def _execute(self, sql: str, args: dict[str, Any], fetch: Callable[[Any], Any]) -> Any:
        try:
            fairy = self.engine.raw_connection()
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        except Exception as exc:  # SQLAlchemy wraps some connect failures
            raise self._unavailable(exc) from exc
        conn: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
        try:
            conn.autocommit = True
            try:
                with conn.cursor(row_factory=namedtuple_row) as cur:
                    cur.execute(sql, args)
                    return fetch(cur)
            finally:
                if not conn.closed:
                    conn.autocommit = False  # the pool's next user may open a transaction
        except psycopg.Error as exc:
            lost = self.engine.dialect.is_disconnect(cast(Any, exc), cast(Any, conn), None)
            if conn.closed or conn.broken or lost:
                fairy.invalidate(exc)
                # As SQLAlchemy does on a disconnect: the pool's other connections are likely
                # dead too (a server restart), so none of them is handed out again.
                self.engine.dispose()
                raise _Dropped(exc) from exc
            raise self._translate(exc) from exc
        finally:
            fairy.close()

    def _translate(self, exc: psycopg.Error) -> Exception:
        if isinstance(exc, psycopg.IntegrityError):
            return StoreConflict(f"saga store refused a duplicate key: {exc}")
        if isinstance(exc, psycopg.OperationalError):
            return self._unavailable(exc)
        return StoreError(f"saga store {mask_url(self.url)} error: {exc}")

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        cause = getattr(exc, "orig", None) or exc
        return StoreUnavailable(f"saga store {mask_url(self.url)} unavailable: {cause}")


class _Dropped(Exception):
    """The connection was lost under the statement (retried once on a fresh one)."""

    def __init__(self, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.error = error
