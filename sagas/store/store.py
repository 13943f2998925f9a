"""The saga store: every read and write of the saga tables, and nothing else.

Transitions are optimistic: ``Store.load`` reads a saga (row, steps and the database clock) into
a ``Snapshot``; ``Store.write`` applies a transition only if the row is still at the snapshot's
``lock_version`` (compare-and-set). ``Store.transaction()`` yields a ``Tx`` whose ``lock`` takes
the saga row instead, for the sweeper's re-publish and choreography. Time comes from the
database clock on PostgreSQL so a skewed worker clock cannot move deadlines. Row mapping lives in
``records``, the write statements in ``writes`` and ``statements``, driver errors are translated
in ``engine``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    String,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Executable

from ..clock import SYSTEM, Clock
from ..errors import ConfigurationError, SagaNotFound, StoreConflict, StoreUnavailable
from ..filters import Cursor, SagaFilter, StuckClass
from ..machine import HistoryRecord, SagaStatus, StepStatus
from ..settings import mask_url
from ..state import ACTIVE_SAGA_STATES, HistoryKind, SagaKind, SagaState, StepState
from . import search as search_
from . import statements
from .clears import DeferredClears
from .driver import Driver
from .engine import READ_ONLY, db_now, dropped_connection, make_engine, translated
from .records import (
    HistoryEntry,
    NewSaga,
    SagaRecord,
    Snapshot,
    Transition,
    record_from_row,
    status_from_json,
    status_from_rows,
    utc,
)
from .schema import handled_table, history_table, orphan_table, saga_table, signal_table
from .tx import Tx, steps_of
from .writes import insert_statements, transition_statement, write_transition

T = TypeVar("T")

# What a hot statement's caller reads from its result.
FIRST, SCALAR, NOTHING = "first", "scalar", "nothing"


class Store:
    def __init__(self, url: str, *, engine: Engine | None = None, clock: Clock = SYSTEM) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        if self.is_postgres and not clock.real:
            # Production time is the database's: deadlines must not depend on a worker's clock,
            # and a fake one would desynchronise every process sharing this store.
            raise ConfigurationError(
                f"a fake clock ({clock!r}) is for the embedded SQLite test runtime only; "
                f"saga store {mask_url(url)} is PostgreSQL, whose time is the database clock",
                setting="clock",
            )
        self.clock = clock
        self._clears: DeferredClears | None = None
        self._driver = Driver(self.engine, url) if Driver.available(self.engine) else None

    def __repr__(self) -> str:
        return f"<Store {mask_url(self.url)}>"

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with translated(self.url), self.engine.begin() as conn:
            yield Tx(conn, self.is_postgres, self.clock)

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection for reads; driver errors come out as the store's typed errors."""
        with translated(self.url), self.engine.connect() as conn:
            yield conn.execution_options(**{READ_ONLY: True})

    def ping(self) -> None:
        try:
            with self._connect() as conn:
                conn.execute(text("SELECT 1"))
        except StoreUnavailable as exc:
            cause = getattr(exc.__cause__, "orig", exc.__cause__)
            raise StoreUnavailable(f"saga store {mask_url(self.url)} unreachable: {cause}") from exc

    def dispose(self) -> None:
        self.flush_clears()
        self.engine.dispose()

    # -- reads for operators and the sweeper --------------------------------------------------

    def get(self, saga_id: str) -> tuple[SagaRecord, SagaStatus, builtins.list[HistoryEntry]]:
        with self._connect() as conn:
            row = conn.execute(select(saga_table).where(saga_table.c.id == saga_id)).first()
            if row is None:
                raise SagaNotFound(f"no saga with id {saga_id!r}")
            record = record_from_row(row)
            status = status_from_rows(record, steps_of(conn, saga_id))
            events = conn.execute(
                select(history_table)
                .where(history_table.c.saga_id == saga_id)
                .order_by(history_table.c.id)
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
        with self._connect() as conn:
            return [record_from_row(r) for r in conn.execute(query)]

    def select_ids(self, flt: SagaFilter, *, limit: int = 10000) -> builtins.list[str]:
        """Ids of sagas matching ``flt`` (the list's filter), oldest change first: a bulk
        action's selection."""
        with self._operator_read() as conn:
            query = search_.ids_query(flt, self._clock_now(), limit=limit)
            return [row.id for row in conn.execute(query)]

    def forks_of(self, saga_id: str) -> builtins.list[str]:
        """Ids of the sagas forked from ``saga_id``, oldest first (the link's other way)."""
        query = (
            select(saga_table.c.id)
            .where(saga_table.c.forked_from == saga_id)
            .order_by(saga_table.c.created_at, saga_table.c.id)
        )
        with self._connect() as conn:
            return [row.id for row in conn.execute(query)]

    def search(
        self, flt: SagaFilter, *, limit: int = 50, after: Cursor | None = None
    ) -> search_.SagaPage:
        """Sagas matching ``flt``, newest first, ``limit`` a page; the page's ``next`` cursor
        continues after its last saga (one statement, keyset: ``sagas.store.search``)."""
        with self._operator_read() as conn:
            return search_.search(conn, self._clock_now(), flt, limit=limit, after=after)

    def counts(self, flt: SagaFilter | None = None) -> dict[str, Any]:
        """Sagas per state (zeros included), their total and how many are parked; store-wide,
        or of the sagas matching ``flt``."""
        with self._operator_read() as conn:
            return search_.counts(conn, self._clock_now(), flt or SagaFilter())

    def stuck_sagas(
        self, older_than: float, *, classes: Sequence[StuckClass] = (), limit: int = 100
    ) -> builtins.list[search_.StuckSaga]:
        """Active sagas stuck at least ``older_than`` seconds, by class, longest stuck first."""
        with self._operator_read() as conn:
            return search_.stuck(conn, self._clock_now(), older_than, classes=classes, limit=limit)

    @contextmanager
    def _operator_read(self) -> Iterator[Connection]:
        """A read connection for the operator queries. On PostgreSQL with JIT on, the planner's
        pessimistic estimate for the wait and step filters crosses ``jit_above_cost`` and
        compiles for 350-600 ms a query that runs in 4 ms (bench/README.md, "Operator
        queries"), so JIT is off for this transaction only."""
        with self._connect() as conn:
            if self.is_postgres:
                conn.execute(search_.JIT_OFF)
            yield conn

    def _clock_now(self) -> datetime | None:
        """The store's clock for a read's "now", or None: the database's, read in the SQL."""
        return None if self.is_postgres else self.clock.now()

    def due(self, limit: int) -> builtins.list[str]:
        """Ids of sagas with a timer due now (database clock)."""
        return [saga_id for saga_id, _ in self.due_kinds(limit)]

    def due_kinds(self, limit: int) -> builtins.list[tuple[str, SagaKind]]:
        """(id, kind) of sagas with a timer due now (database clock), most overdue first."""
        return self._reached(saga_table.c.wake_at, 0.0, limit)

    def unsent(self, grace: float, limit: int) -> builtins.list[str]:
        """Ids of sagas whose committed commands were not confirmed published in time."""
        return [saga_id for saga_id, _ in self.unsent_kinds(grace, limit)]

    def unsent_kinds(self, grace: float, limit: int) -> builtins.list[tuple[str, SagaKind]]:
        """``unsent`` with each saga's kind (the sweeper re-publishes commands or events)."""
        return self._reached(saga_table.c.outbox_at, grace, limit)

    def _reached(
        self, column: Any, older_than: float, limit: int
    ) -> builtins.list[tuple[str, SagaKind]]:
        """(id, kind) of sagas whose ``column`` is at least ``older_than`` s in the past."""
        with self._connect() as conn:
            cutoff = db_now(conn, self.is_postgres, self.clock) - timedelta(seconds=older_than)
            rows = conn.execute(
                select(saga_table.c.id, saga_table.c.kind)
                .where(column <= cutoff)
                .order_by(column)
                .limit(limit)
            )
            return [(r.id, SagaKind(r.kind)) for r in rows]

    def next_due(self, grace: float) -> datetime | None:
        """When the sweeper next has something to do: the earliest timer (``wake_at``) or
        unsent outbox past ``grace`` (None: nothing pending). What a fake clock steps to."""
        with self._connect() as conn:
            wake, outbox = conn.execute(
                select(func.min(saga_table.c.wake_at), func.min(saga_table.c.outbox_at))
            ).one()
        found: builtins.list[datetime] = []
        if wake is not None:
            found.append(utc(wake) or wake)
        if outbox is not None:
            found.append((utc(outbox) or outbox) + timedelta(seconds=grace))
        return min(found, default=None)

    def open_attempt(self, saga_id: str, index: int) -> StepStatus | None:
        """One step's state, attempts and deadline (what decides whether an attempt is still
        open); None if unknown. One indexed read."""
        params = {"saga_id": saga_id, "idx": index}
        row = self._single(lambda conn: conn.execute(statements.OPEN_ATTEMPT, params).first())
        if row is None:
            return None
        return StepStatus(
            name=row.name,
            state=StepState(row.state),
            attempt=row.attempt,
            compensation_attempt=row.compensation_attempt,
            deadline_at=utc(row.deadline_at),
        )

    def stuck(
        self, older_than: float, limit: int = 100, *, unmarked: str | None = None
    ) -> builtins.list[tuple[SagaRecord, str]]:
        """Active sagas an operator should look at, each with the reason. ``unmarked``: only
        those without a ledger key ``<unmarked><lock_version>:...`` (``mark_once``), so a
        caller that marks what it handled pages past it instead of meeting it every time."""
        with self._connect() as conn:
            cutoff = db_now(conn, self.is_postgres, self.clock) - timedelta(seconds=older_than)
            query = (
                select(saga_table)
                .where(
                    saga_table.c.state.in_(ACTIVE_STATES),
                    saga_table.c.paused_at.is_(None),  # an operator's pause is not stuck
                    (saga_table.c.parked.is_(True))
                    | (saga_table.c.updated_at <= cutoff)
                    | (saga_table.c.outbox_at <= cutoff),
                )
                .order_by(saga_table.c.updated_at)
                .limit(limit)
            )
            if unmarked is not None:
                # The prefix is a bound value; LIKE runs on the ledger's (saga_id, key) key.
                prefix = literal(unmarked) + cast(saga_table.c.lock_version, String) + ":%"
                query = query.where(
                    ~exists().where(
                        handled_table.c.saga_id == saga_table.c.id,
                        handled_table.c.key.like(prefix),
                    )
                )
            rows = conn.execute(query)
            found = []
            for row in rows:
                record = record_from_row(row)
                if record.parked:
                    why = "compensation exhausted (dead-lettered)"
                    if record.state is not SagaState.COMPENSATING:
                        why = (
                            "expected event not seen in time"
                            if record.kind is SagaKind.CHOREOGRAPHED
                            else "step parked for an operator"
                        )
                elif record.outbox_at is not None and record.outbox_at <= cutoff:
                    why = "commands committed but not published"
                elif record.state is SagaState.COMPENSATING:
                    why = "stuck compensating: no progress"
                else:
                    why = "stuck forward: no progress"
                found.append((record, why))
            return found

    def oldest_overdue(self) -> float | None:
        """Seconds the most overdue timer has been due (None: none due). A sweeper that runs
        keeps this under a few of its periods."""
        with self._connect() as conn:
            now = db_now(conn, self.is_postgres, self.clock)
            oldest = conn.execute(
                select(func.min(saga_table.c.wake_at)).where(saga_table.c.wake_at <= now)
            ).scalar_one()
        due = utc(oldest)
        return None if due is None else (now - due).total_seconds()

    def versions(self, *, active_only: bool = False) -> builtins.list[VersionCount]:
        """Sagas by name, version and definition fingerprint: how many are in flight and how
        many finished, with one in-flight saga's steps for each (what it was started on)."""
        active = saga_table.c.state.in_(ACTIVE_STATES)
        query = select(
            saga_table.c.name,
            saga_table.c.version,
            saga_table.c.definition_hash,
            func.count().filter(active).label("in_flight"),
            func.count().filter(~active).label("finished"),
            func.min(saga_table.c.id).filter(active).label("example"),
        ).group_by(saga_table.c.name, saga_table.c.version, saga_table.c.definition_hash)
        if active_only:
            query = query.where(active)
        with self._connect() as conn:
            rows = conn.execute(query.order_by(saga_table.c.name, saga_table.c.version)).all()
            return [
                VersionCount(
                    r.name,
                    r.version,
                    r.definition_hash,
                    r.in_flight,
                    r.finished,
                    r.example,
                    [s.name for s in steps_of(conn, r.example)] if r.example else [],
                )
                for r in rows
            ]

    def stats(self, *, unsent_grace: float) -> dict[str, Any]:
        """Store-wide gauges: sagas by (name, state), parked, due timers, unsent outboxes and the
        age of the oldest active saga (database clock). One scan of the saga table."""
        active = saga_table.c.state.in_(ACTIVE_STATES)
        with self._connect() as conn:
            now = db_now(conn, self.is_postgres, self.clock)
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
        """Parked sagas with the step waiting for an operator: a compensation that exhausted
        its retries, or a step routed to park (``Park``, or past the pivot)."""
        with self._connect() as conn:
            rows = conn.execute(
                select(saga_table)
                .where(saga_table.c.parked.is_(True))
                .order_by(saga_table.c.updated_at)
                .limit(limit)
            ).all()
            out = []
            for row in rows:
                record = record_from_row(row)
                for step in status_from_rows(record, steps_of(conn, record.id)).steps:
                    if step.state in (StepState.COMPENSATION_FAILED, StepState.PARKED):
                        out.append((record, step))
            return out

    def orphans(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        with self._connect() as conn:
            rows = conn.execute(
                select(orphan_table).order_by(orphan_table.c.at.desc()).limit(limit)
            )
            return [dict(r._mapping) for r in rows]

    def mark_once(self, saga_id: str, key: str) -> bool:
        """Take ``key`` in the saga's ledger, without a history row; False if taken before."""
        try:
            with self.transaction() as tx:
                return tx.claim(saga_id, key)
        except StoreConflict:  # another process claimed the same key at the same moment
            return False

    def note_once(self, saga_id: str, key: str, kind: HistoryKind, detail: dict[str, Any]) -> bool:
        """Append one history row unless ``key`` was noted for this saga before (the
        idempotency ledger makes it once-only across processes). True if appended."""
        try:
            with self.transaction() as tx:
                if not tx.claim(saga_id, key):
                    return False
                tx.record_only(saga_id, [HistoryRecord(kind, detail=detail)])
                return True
        except StoreConflict:  # another process claimed the same key at the same moment
            return False

    def clear_outbox(self, saga_id: str, outbox_at: datetime) -> None:
        """Mark the outbox written at ``outbox_at`` published.

        Keyed on when the outbox was written, not on the row version: a later transition that
        adds no commands leaves the outbox alone, so this clear must still apply; one that adds
        commands rewrites ``outbox_at`` and clears the lot itself once it has published.
        """
        params = {"saga_id": saga_id, "written_at": outbox_at}
        self._hot(statements.CLEAR_OUTBOX, params, NOTHING)

    def clear_outbox_soon(self, saga_id: str, outbox_at: datetime, *, within: float) -> None:
        """``clear_outbox``, written by this process within ``within`` seconds together with
        the other clears queued meanwhile (one statement for all; see ``clears``). At once on
        SQLite or with ``within`` 0."""
        if not self.is_postgres or within <= 0:
            self.clear_outbox(saga_id, outbox_at)
            return
        if self._clears is None or self._clears.delay != within:
            self.flush_clears()
            self._clears = DeferredClears(self._clear_many, within)
        self._clears.add(saga_id, outbox_at)

    def flush_clears(self) -> None:
        """Write the outbox clears this process queued (at shutdown; tests)."""
        if self._clears is not None:
            self._clears.flush()

    def pending_clears(self) -> int:
        return 0 if self._clears is None else self._clears.pending()

    def _clear_many(self, clears: builtins.list[tuple[str, datetime]]) -> None:
        rows = [{"id": saga_id, "at": at.isoformat()} for saga_id, at in clears]
        self._hot(statements.CLEAR_OUTBOXES, {"clears": rows}, NOTHING)

    def _hot(self, statement: Executable, params: dict[str, Any], fetch: str) -> Any:
        """One hot-path statement in autocommit: on psycopg's connection when nothing observes
        the engine (``driver``), else through SQLAlchemy; ``fetch``: FIRST, SCALAR or NOTHING."""
        driver = self._driver
        if driver is not None and driver.usable():
            return driver.run(statement, params, fetch)

        def run(conn: Connection) -> Any:
            result = conn.execute(statement, params)
            if fetch == FIRST:
                return result.first()
            return result.scalar_one() if fetch == SCALAR else None

        return self._single(run)

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
                if attempt == 2 or not dropped_connection(exc):
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def _autocommit(self) -> Iterator[Connection]:
        """A connection for one statement that needs no transaction of its own (saves the
        BEGIN and COMMIT round trips)."""
        with translated(self.url), self.engine.connect() as conn:
            if self.is_postgres:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
            if not self.is_postgres:
                conn.commit()

    # -- optimistic transitions (the hot path) --------------------------------------------------

    def load(self, saga_id: str) -> Snapshot | None:
        """A saga, its steps and the database clock, without a lock (None if unknown)."""
        if not self.is_postgres:
            with self.transaction() as tx:
                loaded = tx.lock(saga_id)
                return None if loaded is None else self.snapshot(*loaded, tx.now())
        row = self._hot(statements.LOAD, {"saga_id": saga_id}, FIRST)
        if row is None:
            return None
        record = record_from_row(row)
        steps = status_from_json(record, row.steps)
        return self.snapshot(record, steps, utc(row.db_now) or row.db_now)

    def snapshot(self, record: SagaRecord, status: SagaStatus, read_at: datetime) -> Snapshot:
        """A snapshot of ``record`` read at database time ``read_at``, taken now."""
        return Snapshot(record, status, read_at, self.clock.monotonic(), self.clock)

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
        statement, params = transition_statement(t, now=now)
        return bool(self._hot(statement, params, SCALAR))

    # -- signals for wait steps -------------------------------------------------------------

    def add_signal(self, saga_id: str, name: str, signal_id: str, data: Any) -> bool:
        """Keep a signal for the saga's wait ``name``; False if ``signal_id`` was sent to this
        saga before (a repeated send is one signal)."""
        row = {
            "saga_id": saga_id,
            "signal_id": signal_id,
            "name": name,
            "data": data,
            "received_at": self.now(),
        }
        try:
            self._single(lambda conn: conn.execute(insert(signal_table).values(row)))
        except StoreConflict:
            return False
        return True

    def pending_signal(self, saga_id: str, name: str) -> tuple[str, Any] | None:
        """The oldest signal for the wait ``name`` not taken yet: (signal id, data)."""
        query = (
            select(signal_table.c.signal_id, signal_table.c.data)
            .where(
                signal_table.c.saga_id == saga_id,
                signal_table.c.name == name,
                signal_table.c.consumed_at.is_(None),
            )
            .order_by(signal_table.c.received_at, signal_table.c.signal_id)
            .limit(1)
        )
        with self._connect() as conn:
            found = conn.execute(query).first()
        return None if found is None else (found.signal_id, found.data)

    def kept_signal(self, saga_id: str, signal_id: str) -> tuple[bool, Any]:
        """(still kept, its data) for a signal sent before: kept means not taken yet."""
        query = select(signal_table.c.consumed_at, signal_table.c.data).where(
            signal_table.c.saga_id == saga_id, signal_table.c.signal_id == signal_id
        )
        with self._connect() as conn:
            found = conn.execute(query).first()
        return (found is not None and found.consumed_at is None), (found.data if found else None)

    def kept_signals(self, older_than: float, limit: int) -> builtins.list[tuple[str, str]]:
        """(saga id, wait name) of signals kept longer than ``older_than`` seconds for active
        sagas: the sweeper delivers them if their saga waits (a sender that died between
        keeping a signal and delivering it)."""
        with self._connect() as conn:
            cutoff = db_now(conn, self.is_postgres, self.clock) - timedelta(seconds=older_than)
            rows = conn.execute(
                select(signal_table.c.saga_id, signal_table.c.name)
                .join(saga_table, saga_table.c.id == signal_table.c.saga_id)
                .where(
                    signal_table.c.consumed_at.is_(None),
                    signal_table.c.received_at <= cutoff,
                    saga_table.c.state.in_(ACTIVE_STATES),
                )
                .distinct()
                .limit(limit)
            ).all()
        return [(r.saga_id, r.name) for r in rows]

    def consume_signal(self, saga_id: str, signal_id: str, outcome: str) -> None:
        """Mark a signal taken (``outcome``: what the saga did with it)."""
        done = (
            update(signal_table)
            .where(
                signal_table.c.saga_id == saga_id,
                signal_table.c.signal_id == signal_id,
                signal_table.c.consumed_at.is_(None),
            )
            .values(consumed_at=self.now(), outcome=outcome[:32])
        )
        self._single(lambda conn: conn.execute(done))

    def signals(self, saga_id: str) -> builtins.list[dict[str, Any]]:
        """Every signal sent to the saga, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                select(signal_table)
                .where(signal_table.c.saga_id == saga_id)
                .order_by(signal_table.c.received_at, signal_table.c.signal_id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def now(self) -> datetime:
        """The database clock (Python's on SQLite, as everywhere the store reads it there),
        without a transaction: no lock is taken, so it never waits for another writer."""
        if not self.is_postgres:
            return self.clock.now()
        return self._single(lambda conn: db_now(conn, True, self.clock))

    def peek(self, saga_id: str) -> tuple[SagaRecord | None, datetime]:
        """The saga's record if it exists, and the database clock (one round trip)."""
        if not self.is_postgres:
            with self.transaction() as tx:
                return tx.peek(saga_id), tx.now()
        row = self._hot(statements.PEEK, {"saga_id": saga_id}, FIRST)
        return (None if row.id is None else record_from_row(row)), utc(row.db_now) or row.db_now

    # -- retention --------------------------------------------------------------------------------

    def finished_before(self, before: datetime, limit: int) -> builtins.list[str]:
        """Ids of up to ``limit`` finished sagas (completed or failed) whose row last changed
        before ``before`` (served by the (state, updated_at) index)."""
        query = (
            select(saga_table.c.id)
            .where(saga_table.c.state.in_(FINISHED_STATES), saga_table.c.updated_at < before)
            .limit(limit)
        )
        with self._connect() as conn:
            return [r.id for r in conn.execute(query)]

    def count_finished_before(self, before: datetime) -> int:
        query = select(func.count()).where(
            saga_table.c.state.in_(FINISHED_STATES), saga_table.c.updated_at < before
        )
        with self._connect() as conn:
            return int(conn.execute(query).scalar_one())

    def delete_finished(self, saga_ids: builtins.list[str], before: datetime) -> int:
        """Delete these sagas with their steps, history, signals and choreography ledger (ON
        DELETE CASCADE) if they are still finished and unchanged since ``before``. One short
        transaction; on PostgreSQL a row another transaction holds is skipped, not waited
        for, and active sagas are never touched. Returns how many were deleted."""
        if not saga_ids:
            return 0
        chosen = select(saga_table.c.id).where(
            saga_table.c.id.in_(saga_ids),
            saga_table.c.state.in_(FINISHED_STATES),
            saga_table.c.updated_at < before,
        )
        if self.is_postgres:
            chosen = chosen.with_for_update(skip_locked=True)
        stmt = delete(saga_table).where(saga_table.c.id.in_(chosen.scalar_subquery()))
        with translated(self.url), self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount or 0)

    def create(self, new: NewSaga, *, now: datetime) -> SagaRecord | None:
        """Insert a saga ``peek`` found free; None when inserted, or the existing record if the
        id was taken since (by a concurrent start, or by this call's own first attempt).

        On PostgreSQL the insert is one statement in autocommit (atomic on its own)."""
        if not self.is_postgres:
            with self.transaction() as tx:
                tx.now_is(now)
                return tx.insert(new)
        try:
            # Retried after a lost connection like write(): a committed first attempt makes the
            # retry fail on the primary key, and the row found is this start's own.
            ((statement, params),) = insert_statements(True, new, now=now)
            assert isinstance(params, dict)
            self._hot(statement, params, NOTHING)
        except StoreConflict:
            existing, _ = self.peek(new.saga_id)
            if existing is None:  # pragma: no cover - a conflict on a row deleted since
                raise
            return existing
        return None


ACTIVE_STATES = tuple(s.value for s in ACTIVE_SAGA_STATES)
FINISHED_STATES = tuple(s.value for s in SagaState if s.terminal)


@dataclass(frozen=True, slots=True)
class VersionCount:
    """``Store.versions``: one (name, version, fingerprint) and its sagas."""

    name: str
    version: int
    definition_hash: str | None
    in_flight: int
    finished: int
    example: str | None  # an in-flight saga's id (None: none in flight)
    example_steps: builtins.list[str]
