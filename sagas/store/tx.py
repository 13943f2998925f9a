"""``Tx``: one open transaction on the saga tables, holding the saga row's lock.

Used where a transition must exclude every other (the sweeper's re-publish, choreography's
claims and outcomes, the escalation ledger). ``lock`` is ``SELECT ... FOR UPDATE`` on
PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` (see ``engine``) already serialises writers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from ..clock import SYSTEM, Clock
from ..errors import StoreUnavailable
from ..machine import HistoryRecord, SagaStatus
from . import statements
from .engine import db_now
from .records import (
    NewSaga,
    SagaRecord,
    Transition,
    history_rows,
    record_from_row,
    status_from_json,
    status_from_rows,
    utc,
)
from .schema import handled_table, history_table, orphan_table, step_table
from .writes import insert_saga, write_transition


class Tx:
    """One open transaction on the saga tables."""

    def __init__(self, conn: Connection, is_postgres: bool, clock: Clock = SYSTEM) -> None:
        self.conn = conn
        self.is_postgres = is_postgres
        self.clock = clock
        self._now: datetime | None = None
        self._peeked: str | None = None  # a saga id peek() found free in this transaction

    def now_is(self, now: datetime) -> None:
        """Use ``now`` (read by the caller in this same transaction) as the database clock."""
        self._now = now

    def now(self) -> datetime:
        if self._now is None:
            self._now = db_now(self.conn, self.is_postgres, self.clock)
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
        ``StoreConflict`` (from ``Store.transaction``) and its caller looks again.
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
            return record, status_from_json(record, row.steps)
        row = self.conn.execute(statements.SELECT_SAGA, {"saga_id": saga_id}).first()
        if row is None:
            return None
        record = record_from_row(row)
        return record, status_from_rows(record, steps_of(self.conn, saga_id))

    def lock_unsent(self, saga_id: str, grace: float) -> tuple[SagaRecord, SagaStatus] | None:
        """Lock a saga whose outbox has waited ``grace`` seconds unsent (the sweeper's
        re-publish); None if it is busy (``SKIP LOCKED``), gone, or has nothing overdue."""
        loaded = self.lock(saga_id, skip_locked=True)
        if loaded is None:
            return None
        record, _ = loaded
        if record.outbox_at is None or (self.now() - record.outbox_at).total_seconds() < grace:
            return None
        return loaded

    def save(
        self,
        record: SagaRecord,
        old: SagaStatus,
        new: SagaStatus,
        history: Sequence[HistoryRecord],
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

    def claimed(self, saga_id: str, key: str) -> bool:
        """Is this idempotency key already taken for this saga?"""
        taken = self.conn.execute(
            select(handled_table.c.key).where(
                handled_table.c.saga_id == saga_id, handled_table.c.key == key
            )
        ).first()
        return taken is not None

    def claim(self, saga_id: str, key: str) -> bool:
        """Take an idempotency key for this saga; False if already taken (commits with the tx)."""
        if self.claimed(saga_id, key):
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

    def record_only(self, saga_id: str, history: Sequence[HistoryRecord]) -> None:
        events = history_rows(saga_id, history, self.now())
        if events:
            self.conn.execute(insert(history_table), events)


def steps_of(conn: Connection, saga_id: str) -> list[Any]:
    return list(
        conn.execute(
            select(step_table).where(step_table.c.saga_id == saga_id).order_by(step_table.c.idx)
        )
    )
