"""The saga tables (SQLAlchemy 2 declarative). Alembic migrations must match these exactly;
``tests/unit/test_migrations.py`` checks that on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps with time zone, stored as UTC (SQLite would otherwise keep wall time and drop
    the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value


# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class SagaRow(Base):
    __tablename__ = "saga"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), server_default=text("'orchestrated'"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    payload_hash: Mapped[str] = mapped_column(String(64))
    correlation_id: Mapped[str] = mapped_column(String(128))
    failure: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    # Earliest due timer (retry, step timeout, saga deadline); NULL when none. The sweeper's
    # only scan is an index range on it, so finished sagas cost it nothing.
    wake_at: Mapped[datetime | None]
    # Commands committed but not yet confirmed published (the dual-write guard).
    outbox: Mapped[list[Any] | None] = mapped_column(JSONType, nullable=True)
    outbox_at: Mapped[datetime | None]
    parked: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    lock_version: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Saga.fingerprint of the definition it started on: a process whose definition of this
    # version differs refuses to move it. NULL for sagas started before the column existed.
    definition_hash: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The saga's trace (W3C traceparent/tracestate of its saga.start span) when tracing is on:
    # every step's span, in whichever worker, is parented to it. NULL with tracing off.
    trace_context: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # An operator paused it then (NULL: not paused); ``wake_at`` is NULL while it is.
    paused_at: Mapped[datetime | None]
    # The saga this one was forked from (``sagas.fork``); its forks are found by this index.
    forked_from: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (
        Index("ix_saga_forked_from", "forked_from"),
        Index("ix_saga_wake_at", "wake_at"),
        Index("ix_saga_outbox_at", "outbox_at"),
        Index("ix_saga_state_updated", "state", "updated_at"),
        Index("ix_saga_name_created", "name", "created_at"),
        Index("ix_saga_name_version_state", "name", "version", "state"),
        Index("ix_saga_correlation_id", "correlation_id"),
        Index("ix_saga_created_id", "created_at", "id"),  # the operator list: order and keyset
    )


class SagaStepRow(Base):
    __tablename__ = "saga_step"

    saga_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("saga.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(24))
    attempt: Mapped[int] = mapped_column(Integer)
    compensation_attempt: Mapped[int] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    # An earlier attempt timed out (or was superseded by an operator): its effect may exist even
    # if a later attempt failed, so the step is compensated rather than treated as never done.
    in_doubt: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Heartbeats: the open attempt's hard deadline (``deadline_at`` is then the heartbeat
    # deadline), its last heartbeat, and the last heartbeat's details (kept across attempts).
    timeout_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    progress: Mapped[Any | None] = mapped_column(JSONType, nullable=True)


class SagaHistoryRow(Base):
    """Append-only history: one row per thing that happened to a saga."""

    # The table keeps its first name (renaming it would need a migration for no behaviour);
    # in the code it is "history", so "event" only ever means a domain event or a core event.
    __tablename__ = "saga_event"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    saga_id: Mapped[str] = mapped_column(String(128), ForeignKey("saga.id", ondelete="CASCADE"))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_saga_event_saga_id", "saga_id", "id"),)


class SagaHandledRow(Base):
    """Choreography's idempotency ledger: one row per (saga, handler, event) processed."""

    __tablename__ = "saga_handled"

    saga_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("saga.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime]


class SagaOrphanEventRow(Base):
    """Events naming a saga id the store does not know: kept for an operator, not dropped."""

    __tablename__ = "saga_orphan_event"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service: Mapped[str] = mapped_column(String(128), primary_key=True)
    saga_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime]
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class SagaSignalRow(Base):
    """Signals sent to sagas' wait steps: kept from arrival (possibly before the saga reaches
    the wait) until the wait took it; ``signal_id`` makes a repeated send one signal."""

    __tablename__ = "saga_signal"

    saga_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("saga.id", ondelete="CASCADE"), primary_key=True
    )
    signal_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    data: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    received_at: Mapped[datetime]
    consumed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)

    __table_args__ = (Index("ix_saga_signal_pending", "saga_id", "name", "consumed_at"),)


saga_table = cast(Table, SagaRow.__table__)
step_table = cast(Table, SagaStepRow.__table__)
# Steps with an error, for the operators' error-type filter (partial: most steps have none).
Index(
    "ix_saga_step_error",
    step_table.c.saga_id,
    postgresql_where=step_table.c.error.is_not(None),
    sqlite_where=step_table.c.error.is_not(None),
)
history_table = cast(Table, SagaHistoryRow.__table__)
handled_table = cast(Table, SagaHandledRow.__table__)
orphan_table = cast(Table, SagaOrphanEventRow.__table__)
signal_table = cast(Table, SagaSignalRow.__table__)
