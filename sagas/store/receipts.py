"""Step receipts: exactly-once effects for local steps, in the participant's own database.

Celery delivers at least once (acks_late redelivery, a re-published outbox, a retry after a
timeout whose first attempt did commit), so a step may run twice. A receipt makes its *effect*
happen once: the step writes its effect and a receipt row keyed by (saga id, step, action) in one
transaction of the service's own database; a redelivered command finds the receipt and returns
the recorded result without running the effect again.

    receipts = Receipts(engine)     # the service's database (an Engine, or a function giving one)
    receipts.create_table()         # or add ``sagas.receipts.metadata`` to your Alembic target

    @receipts.exactly_once
    def charge(ctx: StepContext[Order], r: Receipt) -> dict[str, Any]:
        r.connection.execute(insert(charges).values(...))  # same transaction as the receipt
        return {"charge_id": ...}                       # recorded; returned on redelivery

    @receipts.exactly_once
    def refund(ctx: StepContext[Order], r: Receipt) -> dict[str, Any]:
        if not r.forward_done:      # the charge never committed (timed out, never ran)
            return {"refunded": False}
        r.connection.execute(update(charges)...)  # r.forward_result: what charge returned
        return {"refunded": True}

Spelled out: ``with receipts.once(ctx) as r: if r.done: return r.result; ...; return
r.record(result)``. A remote step's Celery task passes its ``saga`` keyword dict as ``ctx``.

How it holds:

- The receipt row is inserted *first* (``ON CONFLICT DO NOTHING`` on its primary key). A
  concurrent duplicate's insert waits on that key (PostgreSQL's unique index, SQLite's write lock)
  until the first transaction ends, then sees the committed receipt (``done``) - or, if the first
  rolled back, becomes the run that applies the effect.
- An effect that raises rolls everything back: no receipt, so a retry applies it. Leaving the
  block without ``record()`` raises ``ReceiptNotRecorded`` and rolls back as well.
- A compensation reads the forward receipt under lock: ``forward_done`` says whether the forward
  effect committed - authoritative even when the coordinator only knows the step timed out (its
  ``ctx.result`` is then None). In the same transaction it marks the forward receipt
  ``compensated``, or writes a ``voided`` tombstone if there was none.
- A forward command arriving after its compensation committed (a late redelivery of a timed-out
  step) meets that tombstone and raises ``AlreadyCompensated`` (a ``PermanentError``) before the
  effect runs; the coordinator records the reply as ignored, the step being settled already.
- Results must be JSON (``check_json``): otherwise ``PayloadNotJSON`` (reported as a permanent
  ``StepResultNotJSON``) and nothing is written.

PostgreSQL must run at READ COMMITTED (its default). On SQLite use ``Receipts.from_url`` or
``sagas.store.make_engine`` (WAL, busy timeout, ``BEGIN IMMEDIATE``), and keep the service's file
apart from a SQLite saga store: choreography handlers run holding the store's write lock.
Receipts are never deleted here: purge old rows (``updated_at``) on the service's own schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..definition import StepContext
from ..errors import PermanentError
from ..payload import check_json
from ..state import Action
from .engine import make_engine
from .schema import JSONType

R = TypeVar("R")

DONE, COMPENSATED, VOIDED = "done", "compensated", "voided"

metadata = sa.MetaData()
receipt_table = sa.Table(
    "saga_receipt",
    metadata,
    sa.Column("saga_id", sa.String(128), primary_key=True),
    sa.Column("step", sa.String(64), primary_key=True),
    sa.Column("action", sa.String(16), primary_key=True),  # forward | compensate
    sa.Column("state", sa.String(16), nullable=False),  # done | compensated | voided (forward only)
    sa.Column("result", JSONType, nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    *(
        sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)
        for name in ("created_at", "updated_at")
    ),
)


class AlreadyCompensated(PermanentError):
    """This forward command arrived after the step's compensation committed: not applied."""


class ReceiptNotRecorded(PermanentError):
    """A ``once`` block ended without ``record()``: its effect was rolled back."""


@dataclass
class Receipt:
    """One run of one side of a step, inside the service-database transaction of ``once``."""

    connection: Connection  # do the effect on this connection: it commits with the receipt
    saga_id: str
    step: str
    action: Action
    done: bool = False  # an earlier run committed; ``result`` is what it recorded
    result: Any = None
    forward_done: bool | None = None  # compensation only: did the forward effect commit?
    forward_result: Any = None  # compensation only: what the forward run recorded
    recorded: bool = False

    def record(self, result: R) -> R:
        """Store ``result`` (JSON) with the effect; returns it, so ``return r.record(x)``."""
        if self.done or self.recorded:
            raise RuntimeError(f"receipt for {self.saga_id}:{self.step} is already recorded")
        check_json(result, field=f"{self.step} result")
        self.connection.execute(
            sa.update(receipt_table)
            .where(_key(self.saga_id, self.step, self.action.value))
            .values(result=result, updated_at=sa.func.now())
        )
        self.recorded = True
        return result


@dataclass(frozen=True)
class ReceiptRow:
    state: str
    result: Any
    attempt: int


class Receipts:
    """Receipts in a service's own database (``engine``: an Engine, or a function giving one,
    e.g. created lazily after a prefork worker forks)."""

    def __init__(self, engine: sa.Engine | Callable[[], sa.Engine]) -> None:
        self._engine = engine

    @classmethod
    def from_url(cls, url: str) -> Receipts:

        return cls(make_engine(url))

    @property
    def engine(self) -> sa.Engine:
        return self._engine if isinstance(self._engine, sa.Engine) else self._engine()

    def create_table(self) -> None:
        """Create ``saga_receipt`` if missing (safe when several processes race to do it)."""
        engine = self.engine
        try:
            metadata.create_all(engine, tables=[receipt_table])
        except sa.exc.SQLAlchemyError:
            if not sa.inspect(engine).has_table(receipt_table.name):
                raise

    @contextmanager
    def once(self, ctx: StepContext[Any] | Mapping[str, Any]) -> Iterator[Receipt]:
        """Open a transaction on the service database holding this run's receipt. ``ctx`` is a
        ``StepContext``, or the ``saga`` dict a remote step's Celery task is called with."""
        if isinstance(ctx, Mapping):
            saga_id, step = str(ctx["saga_id"]), str(ctx["step"])
            action, attempt = Action(ctx["action"]), int(ctx["attempt"])
        else:
            saga_id, step, action, attempt = ctx.saga_id, ctx.step, Action(ctx.action), ctx.attempt
        with self.engine.begin() as conn:
            r = Receipt(conn, saga_id, step, action)
            if _claim(conn, saga_id, step, action.value, DONE, attempt):
                if action is Action.COMPENSATE:
                    _settle_forward(conn, r, attempt)
            else:
                row = _read(conn, saga_id, step, action.value, lock=False)
                assert row is not None  # the insert conflicted with a committed row
                if row.state != DONE:
                    raise AlreadyCompensated(
                        f"saga {saga_id} step {step}: its compensation already ran "
                        f"({row.state}); this late forward run was not applied"
                    )
                r.done, r.result = True, row.result
            yield r
            if not r.done and not r.recorded:
                raise ReceiptNotRecorded(
                    f"saga {saga_id} step {step}: the block ended without r.record(result); "
                    "its effect was rolled back"
                )

    def exactly_once(
        self, fn: Callable[[StepContext[Any], Receipt], R]
    ) -> Callable[[StepContext[Any]], R]:
        """Decorate ``fn(ctx, receipt)``: it runs at most once per (saga, step, action) and its
        return value is recorded; a redelivery returns the recorded value without calling it."""

        @wraps(fn)
        def run(ctx: StepContext[Any]) -> R:
            with self.once(ctx) as r:
                if r.done:
                    return cast(R, r.result)
                return r.record(fn(ctx, r))

        return run

    def get(
        self, saga_id: str, step: str, action: Action | str = Action.FORWARD
    ) -> ReceiptRow | None:
        """The committed receipt of (saga, step, action), if any (operators, tests)."""
        with self.engine.connect() as conn:
            return _read(conn, saga_id, step, Action(action).value, lock=False)


def _key(saga_id: str, step: str, action: str) -> Any:
    t = receipt_table.c
    return sa.and_(t.saga_id == saga_id, t.step == step, t.action == action)


def _claim(
    conn: Connection, saga_id: str, step: str, action: str, state: str, attempt: int
) -> bool:
    """Insert the receipt row unless one exists; True if this transaction inserted it."""
    values = dict(saga_id=saga_id, step=step, action=action, state=state, attempt=attempt)
    dialect = conn.dialect.name
    if dialect == "postgresql":  # RETURNING: psycopg's rowcount is -1 here under SQLAlchemy 2.1
        stmt = postgresql.insert(receipt_table).values(values).on_conflict_do_nothing()
        return conn.execute(stmt.returning(receipt_table.c.state)).first() is not None
    if dialect == "sqlite":
        stmt_ = sqlite.insert(receipt_table).values(values).on_conflict_do_nothing()
        return conn.execute(stmt_).rowcount == 1
    try:  # any other database: a savepoint absorbs the duplicate key
        with conn.begin_nested():
            conn.execute(sa.insert(receipt_table).values(values))
    except sa.exc.IntegrityError:
        return False
    return True


def _read(
    conn: Connection, saga_id: str, step: str, action: str, *, lock: bool
) -> ReceiptRow | None:
    t = receipt_table.c
    query = sa.select(t.state, t.result, t.attempt).where(_key(saga_id, step, action))
    row = conn.execute(query.with_for_update() if lock else query).first()
    return None if row is None else ReceiptRow(row.state, row.result, row.attempt)


def _settle_forward(conn: Connection, r: Receipt, attempt: int) -> None:
    """Compensation: learn whether the forward effect committed and close its key for good."""
    forward = Action.FORWARD.value
    if _claim(conn, r.saga_id, r.step, forward, VOIDED, attempt):
        r.forward_done = False  # never ran (or rolled back): nothing to undo; a late run is void
        return
    row = _read(conn, r.saga_id, r.step, forward, lock=True)
    assert row is not None
    r.forward_done, r.forward_result = row.state != VOIDED, row.result
    conn.execute(
        sa.update(receipt_table)
        .where(_key(r.saga_id, r.step, forward))
        .values(state=COMPENSATED if r.forward_done else VOIDED, updated_at=sa.func.now())
    )
