"""The saga store: every read and write of the saga tables, and nothing else.

Transitions are optimistic: ``Store.load`` reads a saga (row, steps and the database clock) into
a ``Snapshot``; ``Store.write`` applies a transition only if the row is still at the snapshot's
``lock_version`` (compare-and-set). ``Store.transaction()`` yields a ``Tx`` whose ``lock`` takes
the saga row instead (``SELECT ... FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` serialises
writers on SQLite), for the sweeper's re-publish and choreography handlers. Time comes from the
database clock on PostgreSQL so a skewed worker clock cannot move deadlines. Row mapping lives in
``sagas.records``, the write statements in ``sagas.writes`` and ``sagas.statements``.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from . import statements
from .errors import SagaNotFound, StoreUnavailable
from .machine import Record, SagaStatus, StepStatus
from .records import (
    HistoryEntry as HistoryEntry,
)
from .records import (
    JsonStep,
    event_rows,
    record_from_row,
    status_from_rows,
)
from .records import (
    NewSaga as NewSaga,
)
from .records import (
    SagaRecord as SagaRecord,
)
from .records import (
    Snapshot as Snapshot,
)
from .records import (
    Transition as Transition,
)
from .records import (
    payload_hash as payload_hash,
)
from .records import (
    utc as utc,
)
from .schema import event_table, handled_table, orphan_table, saga_table, step_table
from .settings import mask_url
from .state import ACTIVE_SAGA_STATES, HistoryKind, SagaState, StepState
from .writes import insert_saga, write_transition


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take effect
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Take the write lock up front: this is SQLite's stand-in for SELECT ... FOR UPDATE.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No pre-ping: it costs a round trip on every checkout. A connection the server dropped fails
    # its first statement instead; SQLAlchemy then invalidates the whole pool, the call surfaces
    # as StoreUnavailable and is retried by its caller (coordinator tasks retry their message, a
    # participant replies by message, the sweeper runs again next beat).
    return create_engine(url, pool_size=5, max_overflow=5)


T = TypeVar("T")


class Store:
    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"

    def __repr__(self) -> str:
        return f"<Store {mask_url(self.url)}>"

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        try:
            with self.engine.begin() as conn:
                yield Tx(conn, self.is_postgres)
        except OperationalError as exc:
            raise StoreUnavailable(
                f"saga store {mask_url(self.url)} unavailable: {exc.orig}"
            ) from exc

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(
                f"saga store {mask_url(self.url)} unreachable: {getattr(exc, 'orig', exc)}"
            ) from exc

    def dispose(self) -> None:
        self.engine.dispose()

    # -- reads for operators and the sweeper --------------------------------------------------

    def get(self, saga_id: str) -> tuple[SagaRecord, SagaStatus, builtins.list[HistoryEntry]]:
        with self.engine.connect() as conn:
            row = conn.execute(select(saga_table).where(saga_table.c.id == saga_id)).first()
            if row is None:
                raise SagaNotFound(f"no saga with id {saga_id!r}")
            record = record_from_row(row)
            status = status_from_rows(record, _steps(conn, saga_id))
            events = conn.execute(
                select(event_table)
                .where(event_table.c.saga_id == saga_id)
                .order_by(event_table.c.id)
            ).all()
        history = [
            HistoryEntry(e.id, utc(e.at) or e.at, e.kind, e.step, e.attempt, e.detail)
            for e in events
        ]
        return record, status, history

    def list(
        self,
        *,
        state: SagaState | None = None,
        name: str | None = None,
        limit: int = 50,
    ) -> builtins.list[SagaRecord]:
        query = select(saga_table).order_by(saga_table.c.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(saga_table.c.state == state.value)
        if name is not None:
            query = query.where(saga_table.c.name == name)
        with self.engine.connect() as conn:
            return [record_from_row(r) for r in conn.execute(query)]

    def due(self, limit: int) -> builtins.list[str]:
        """Ids of sagas with a timer due now (database clock)."""
        with self.engine.connect() as conn:
            now = _db_now(conn, self.is_postgres)
            rows = conn.execute(
                select(saga_table.c.id)
                .where(saga_table.c.wake_at <= now)
                .order_by(saga_table.c.wake_at)
                .limit(limit)
            )
            return [r.id for r in rows]

    def open_attempt(self, saga_id: str, index: int) -> tuple[str, int, int, bool] | None:
        """(state, attempt, compensation_attempt, in flight) of one step; None if unknown."""
        params = {"saga_id": saga_id, "idx": index}
        row = self._single(lambda conn: conn.execute(statements.OPEN_ATTEMPT, params).first())
        if row is None:
            return None
        return row.state, row.attempt, row.compensation_attempt, row.deadline_at is not None

    def due_kinds(self, limit: int) -> builtins.list[tuple[str, str]]:
        """(id, kind) of sagas with a timer due now (database clock)."""
        with self.engine.connect() as conn:
            now = _db_now(conn, self.is_postgres)
            rows = conn.execute(
                select(saga_table.c.id, saga_table.c.kind)
                .where(saga_table.c.wake_at <= now)
                .order_by(saga_table.c.wake_at)
                .limit(limit)
            )
            return [(r.id, r.kind) for r in rows]

    def stuck(self, older_than: float, limit: int = 100) -> builtins.list[tuple[SagaRecord, str]]:
        """Active sagas an operator should look at, each with the reason."""
        with self.engine.connect() as conn:
            cutoff = _db_now(conn, self.is_postgres) - timedelta(seconds=older_than)
            rows = conn.execute(
                select(saga_table)
                .where(
                    saga_table.c.state.in_(ACTIVE_STATES),
                    (saga_table.c.parked.is_(True))
                    | (saga_table.c.updated_at <= cutoff)
                    | (saga_table.c.outbox_at <= cutoff),
                )
                .order_by(saga_table.c.updated_at)
                .limit(limit)
            )
            found = []
            for row in rows:
                record = record_from_row(row)
                if record.parked:
                    why = "compensation exhausted (dead-lettered)"
                    if (
                        record.kind == "choreographed"
                        and record.state is not SagaState.COMPENSATING
                    ):
                        why = "expected event not seen in time"
                elif record.outbox_at is not None and record.outbox_at <= cutoff:
                    why = "commands committed but not published"
                elif record.state is SagaState.COMPENSATING:
                    why = "stuck compensating: no progress"
                else:
                    why = "stuck forward: no progress"
                found.append((record, why))
            return found

    def stats(self, *, unsent_grace: float) -> dict[str, Any]:
        """Store-wide gauges: sagas by (name, state), parked, due timers, unsent outboxes and the
        age of the oldest active saga (database clock). One scan of the saga table."""
        active = saga_table.c.state.in_(ACTIVE_STATES)
        with self.engine.connect() as conn:
            now = _db_now(conn, self.is_postgres)
            counts = conn.execute(
                select(saga_table.c.name, saga_table.c.state, func.count()).group_by(
                    saga_table.c.name, saga_table.c.state
                )
            ).all()
            cutoff = now - timedelta(seconds=unsent_grace)
            row = conn.execute(
                select(
                    func.count().filter(saga_table.c.parked.is_(True)),
                    func.count().filter(saga_table.c.wake_at <= now),
                    func.count().filter(saga_table.c.outbox_at <= cutoff),
                    func.min(saga_table.c.created_at).filter(active),
                )
            ).one()
        oldest = utc(row[3])
        return {
            "by_state": {(name, state): int(n) for name, state, n in counts},
            "parked": int(row[0]),
            "timers_due": int(row[1]),
            "outbox_unsent": int(row[2]),
            "oldest_active_seconds": (now - oldest).total_seconds() if oldest else 0.0,
        }

    def dead_letters(self, limit: int = 100) -> builtins.list[tuple[SagaRecord, StepStatus]]:
        """Parked sagas with the compensation that exhausted its retries."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(saga_table)
                .where(saga_table.c.parked.is_(True))
                .order_by(saga_table.c.updated_at)
                .limit(limit)
            ).all()
            out = []
            for row in rows:
                record = record_from_row(row)
                for step in status_from_rows(record, _steps(conn, record.id)).steps:
                    if step.state is StepState.COMPENSATION_FAILED:
                        out.append((record, step))
            return out

    def orphans(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(orphan_table).order_by(orphan_table.c.at.desc()).limit(limit)
            )
            return [dict(r._mapping) for r in rows]

    def unsent(self, grace: float, limit: int) -> builtins.list[str]:
        """Ids of sagas whose committed commands were not confirmed published in time."""
        with self.engine.connect() as conn:
            cutoff = _db_now(conn, self.is_postgres) - timedelta(seconds=grace)
            rows = conn.execute(
                select(saga_table.c.id)
                .where(saga_table.c.outbox_at <= cutoff)
                .order_by(saga_table.c.outbox_at)
                .limit(limit)
            )
            return [r.id for r in rows]

    def note_once(self, saga_id: str, key: str, kind: HistoryKind, detail: dict[str, Any]) -> bool:
        """Append one history row unless ``key`` was noted for this saga before (the
        idempotency ledger makes it once-only across processes). True if appended."""
        try:
            with self.transaction() as tx:
                if not tx.claim(saga_id, key):
                    return False
                tx.record_only(saga_id, [Record(kind, detail=detail)])
                return True
        except IntegrityError:  # another process claimed the same key at the same moment
            return False

    def clear_outbox(self, saga_id: str, outbox_at: datetime) -> None:
        """Mark the outbox written at ``outbox_at`` published.

        Keyed on when the outbox was written, not on the row version: a later transition that
        adds no commands leaves the outbox alone, so this clear must still apply; one that adds
        commands rewrites ``outbox_at`` and clears the lot itself once it has published.
        """
        params = {"saga_id": saga_id, "written_at": outbox_at}
        self._single(lambda conn: conn.execute(statements.CLEAR_OUTBOX, params))

    def _single(self, run: Callable[[Connection], T]) -> T:
        """Run one statement on an autocommit connection. A pooled connection the server
        dropped (a PostgreSQL restart; there is no pre-ping) fails its first statement and
        SQLAlchemy invalidates the pool: that one failure is retried once on a fresh connection,
        so a restart does not surface as "store unavailable" in every process afterwards."""
        for attempt in (1, 2):
            try:
                with self._autocommit() as conn:
                    return run(conn)
            except StoreUnavailable as exc:
                dropped = getattr(exc.__cause__, "connection_invalidated", False)
                if attempt == 2 or not dropped:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        """A connection for one statement that needs no transaction of its own (saves the
        BEGIN and COMMIT round trips)."""
        try:
            with self.engine.connect() as conn:
                if self.is_postgres:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
                if not self.is_postgres:
                    conn.commit()
        except OperationalError as exc:
            raise StoreUnavailable(
                f"saga store {mask_url(self.url)} unavailable: {exc.orig}"
            ) from exc

    # -- optimistic transitions (the hot path) --------------------------------------------------

    def load(self, saga_id: str) -> Snapshot | None:
        """A saga, its steps and the database clock, without a lock (None if unknown)."""
        if not self.is_postgres:
            with self.transaction() as tx:
                loaded = tx.lock(saga_id)
                return None if loaded is None else Snapshot(*loaded, tx.now(), time.monotonic())
        row = self._single(lambda c: c.execute(statements.LOAD, {"saga_id": saga_id}).first())
        if row is None:
            return None
        record = record_from_row(row)
        steps = status_from_rows(record, [JsonStep(s) for s in row.steps or ()])
        return Snapshot(record, steps, utc(row.db_now) or row.db_now, time.monotonic())

    def write(self, t: Transition, *, now: datetime) -> bool:
        """Persist a transition computed from ``load``; False if the saga moved meanwhile
        (compare-and-set on ``lock_version``; the caller loads again and re-decides).

        On PostgreSQL this is one statement in autocommit: the write is its own transaction,
        so a transition costs two round trips (load, write) instead of four."""
        if not self.is_postgres:
            with self.transaction() as tx:
                return write_transition(tx.conn, False, t, now=now)
        # A retry after a lost connection is safe: if the first attempt did commit, the version
        # moved and the retry reports a conflict; the caller re-reads and finds its own write.
        return self._single(lambda conn: write_transition(conn, True, t, now=now))

    def peek(self, saga_id: str) -> tuple[SagaRecord | None, datetime]:
        """The saga's record if it exists, and the database clock (one round trip)."""
        if not self.is_postgres:
            with self.transaction() as tx:
                return tx.peek(saga_id), tx.now()
        row = self._single(lambda c: c.execute(statements.PEEK, {"saga_id": saga_id}).one())
        return (None if row.id is None else record_from_row(row)), utc(row.db_now) or row.db_now

    def create(self, new: NewSaga, *, now: datetime) -> SagaRecord | None:
        """Insert a saga ``peek`` found free; the existing record if the id was taken since.

        On PostgreSQL the insert is one statement in autocommit (atomic on its own); a start that
        lost a race on the id gets IntegrityError and its caller looks again."""
        if not self.is_postgres:
            with self.transaction() as tx:
                tx._now = now
                return tx.insert(new)
        # Retried after a lost connection like write(): a committed first attempt makes the
        # retry fail on the primary key, and the caller's start loop finds the row.
        self._single(lambda conn: insert_saga(conn, True, new, now=now))
        return None


class Tx:
    """One open transaction on the saga tables."""

    def __init__(self, conn: Connection, is_postgres: bool) -> None:
        self.conn = conn
        self.is_postgres = is_postgres
        self._now: datetime | None = None
        self._peeked: str | None = None  # a saga id peek() found free in this transaction

    def now(self) -> datetime:
        if self._now is None:
            self._now = _db_now(self.conn, self.is_postgres)
        return self._now

    def peek(self, saga_id: str) -> SagaRecord | None:
        """The saga's record without locking it (None if new), and the database clock, in one
        round trip: how a start begins."""
        if not self.is_postgres:
            self.now()
            row = self.conn.execute(statements.SELECT_SAGA, {"saga_id": saga_id}).first()
            if row is None:
                self._peeked = saga_id
                return None
            return record_from_row(row)
        row = self.conn.execute(statements.PEEK, {"saga_id": saga_id}).one()
        self._now = utc(row.db_now)
        if row.id is None:
            self._peeked = saga_id
            return None
        return record_from_row(row)

    def insert(self, new: NewSaga) -> SagaRecord | None:
        """Create a saga; returns the existing record instead if the id is taken.

        Two starts racing on one new id both find it free; the loser's insert raises
        IntegrityError and its caller starts over (and then finds the winner's row).
        """
        if self._peeked != new.saga_id:
            existing = self.peek(new.saga_id)
            if existing is not None:
                return existing
        insert_saga(self.conn, self.is_postgres, new, now=self.now())
        return None

    def lock(
        self, saga_id: str, *, skip_locked: bool = False
    ) -> tuple[SagaRecord, SagaStatus] | None:
        """Lock and load a saga; None if it does not exist (or is locked and skip_locked)."""
        if self.is_postgres:
            # One round trip: the row lock, the database clock and the steps (as JSON).
            query = statements.LOCK_SKIP_LOCKED if skip_locked else statements.LOCK
            row = self.conn.execute(query, {"saga_id": saga_id}).first()
            if row is None:
                return None
            self._now = utc(row.db_now)
            record = record_from_row(row)
            return record, status_from_rows(record, [JsonStep(s) for s in row.steps or ()])
        row = self.conn.execute(statements.SELECT_SAGA, {"saga_id": saga_id}).first()
        if row is None:
            return None
        record = record_from_row(row)
        return record, status_from_rows(record, _steps(self.conn, saga_id))

    def save(
        self,
        record: SagaRecord,
        old: SagaStatus,
        new: SagaStatus,
        history: Sequence[Record],
        outbox: Sequence[dict[str, Any]],
        *,
        parked: bool | None = None,
        clear_outbox: bool = False,
    ) -> int:
        """Persist a transition of the locked saga; returns the new lock_version."""
        t = Transition(record, old, new, history, outbox, parked, clear_outbox)
        saved = write_transition(self.conn, self.is_postgres, t, now=self.now())
        if not saved:  # pragma: no cover - the row is locked: nobody else can have moved it
            raise StoreUnavailable(f"saga {record.id!r} changed under its row lock")
        return record.lock_version + 1

    def claim(self, saga_id: str, key: str) -> bool:
        """Take an idempotency key for this saga; False if already taken (commits with the tx)."""
        taken = self.conn.execute(
            select(handled_table.c.key).where(
                handled_table.c.saga_id == saga_id, handled_table.c.key == key
            )
        ).first()
        if taken is not None:
            return False
        self.conn.execute(insert(handled_table).values(saga_id=saga_id, key=key, at=self.now()))
        return True

    def orphan(
        self, *, event_id: str, service: str, saga_id: str, name: str, detail: dict[str, Any]
    ) -> bool:
        """Keep an event for an unknown saga; False if this service already recorded it."""
        exists = self.conn.execute(
            select(orphan_table.c.event_id).where(
                orphan_table.c.event_id == event_id, orphan_table.c.service == service
            )
        ).first()
        if exists is not None:
            return False
        self.conn.execute(
            insert(orphan_table).values(
                event_id=event_id,
                service=service,
                saga_id=saga_id,
                name=name,
                at=self.now(),
                detail=detail,
            )
        )
        return True

    def record_only(self, saga_id: str, history: Sequence[Record]) -> None:
        events = event_rows(saga_id, history, self.now())
        if events:
            self.conn.execute(insert(event_table), events)


def _db_now(conn: Connection, is_postgres: bool) -> datetime:
    if is_postgres:
        value = conn.execute(select(func.now())).scalar_one()
        return utc(value) or value
    return datetime.now(UTC)


def _steps(conn: Connection, saga_id: str) -> list[Any]:
    return list(
        conn.execute(
            select(step_table).where(step_table.c.saga_id == saga_id).order_by(step_table.c.idx)
        )
    )


ACTIVE_STATES = tuple(s.value for s in ACTIVE_SAGA_STATES)
