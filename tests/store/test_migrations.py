"""The Alembic migrations build exactly the schema ``sagas.schema`` declares, on both backends,
and go down and up again cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, text

from sagas.filters import SagaFilter
from sagas.state import SagaState
from sagas.store import NewSaga, Store, Transition, make_engine, migrate
from sagas.store.schema import Base, saga_table, step_table
from tests.services import scratch_database

TABLES = set(Base.metadata.tables)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A fresh, empty database (no tables at all)."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path_factory.mktemp('migrations') / 'm.db'}")
        yield eng
        eng.dispose()
        return
    with scratch_database("sagas_migrations") as url:
        eng = make_engine(url)
        yield eng
        eng.dispose()


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        opts = {"compare_type": True, "version_table": migrate.VERSION_TABLE}
        context = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(context, Base.metadata))


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {migrate.VERSION_TABLE}


def downgrade(engine: Engine, revision: str) -> None:
    cfg = migrate.alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_upgrade_matches_the_declared_schema(engine: Engine) -> None:
    assert {"saga", "saga_step", "saga_event"} <= TABLES
    assert table_names(engine) == set()
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert table_names(engine) == TABLES
    assert migrate.current_revision(engine) == migrate.head_revision() is not None
    assert schema_diff(engine) == []


def _indexes(engine: Engine) -> dict[str, list[Any]]:
    """Every index as reflected, with a partial index's condition as its SQL text (reflection
    hands it back as a new clause object each time)."""
    return {
        t: [
            {**ix, "dialect_options": {k: str(v) for k, v in ix.get("dialect_options", {}).items()}}
            for ix in inspect(engine).get_indexes(t)
        ]
        for t in TABLES
    }


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    migrate.upgrade(engine)
    indexes = _indexes(engine)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert _indexes(engine) == indexes
    assert schema_diff(engine) == []


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    migrate.upgrade(engine)
    downgrade(engine, "base")
    assert table_names(engine) == set()
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert table_names(engine) == TABLES
    assert schema_diff(engine) == []


def test_the_sweeper_queries_have_indexes(engine: Engine) -> None:
    migrate.upgrade(engine)
    indexed = {tuple(ix["column_names"]) for t in TABLES for ix in inspect(engine).get_indexes(t)}
    for columns in [("wake_at",), ("outbox_at",), ("state", "updated_at"), ("saga_id", "id")]:
        assert columns in indexed, f"no index on {columns}"


def test_a_schema_drift_would_be_detected(engine: Engine) -> None:
    """The comparison is not vacuous: a database missing a migrated index differs."""
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_saga_wake_at")
    diff = schema_diff(engine)
    assert any("ix_saga_wake_at" in repr(d) for d in diff), diff


def test_upgrade_from_0003_with_a_saga_in_flight(engine: Engine) -> None:
    """A store at 0003 (before fingerprints, signals and heartbeats) holding a saga in flight,
    written with the columns that revision had: 0004 to 0006 apply, the saga keeps its state
    and steps (no fingerprint: it is checked by its step names; its running step keeps its one
    deadline, no heartbeat deadline), it can heartbeat, move on and take signals."""
    migrate.upgrade(engine, "0003")
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO saga (id, name, kind, version, state, payload, payload_hash, "
                "correlation_id, created_at, updated_at, wake_at, parked, lock_version) VALUES "
                "('old-1', 'order', 'orchestrated', 1, 'pending', :payload, 'h', 'c', :now, :now, "
                ":wake, false, 3)"
            ),
            {"payload": '{"order_id": "o-1"}', "now": now, "wake": now + timedelta(seconds=30)},
        )
        for idx, (name, state) in enumerate((("reserve", "succeeded"), ("charge", "running"))):
            conn.execute(
                text(
                    "INSERT INTO saga_step (saga_id, idx, name, state, attempt, "
                    "compensation_attempt, deadline_at, in_doubt) VALUES "
                    "('old-1', :idx, :name, :state, 1, 0, :deadline, false)"
                ),
                {"idx": idx, "name": name, "state": state, "deadline": now},
            )
    migrate.upgrade(engine)
    assert schema_diff(engine) == []
    store = Store(str(engine.url.render_as_string(hide_password=False)), engine=engine)
    snap = store.load("old-1")
    assert snap is not None
    assert snap.record.definition_hash is None and snap.record.lock_version == 3
    assert [(s.name, s.state.value) for s in snap.status.steps] == [
        ("reserve", "succeeded"),
        ("charge", "running"),
    ]
    charge = snap.status.steps[1]
    assert charge.deadline_at == now and charge.timeout_at is None and charge.progress is None
    beat = replace(charge, heartbeat_at=now, progress={"page": 3})
    beating = replace(snap.status, steps=(snap.status.steps[0], beat))
    assert store.write(Transition(snap.record, snap.status, beating, ()), now=now)
    snap = store.load("old-1")
    assert snap is not None and snap.status.steps[1].progress == {"page": 3}
    assert snap.status.steps[1].heartbeat_at == now
    done = replace(snap.status, state=SagaState.COMPLETED)
    assert store.write(Transition(snap.record, snap.status, done, ()), now=now)
    assert store.add_signal("old-1", "approval", "s-1", {"by": "ops"})
    assert store.pending_signal("old-1", "approval") == ("s-1", {"by": "ops"})


def test_upgrade_from_0006_with_sagas_in_flight_then_query_them(engine: Engine) -> None:
    """A store at 0006 holding a saga in flight (a step failed, waiting to retry) and a finished
    one: 0007 adds the operator query indexes; both sagas are found by the new filters and
    pages, and the one in flight moves on."""
    migrate.upgrade(engine, "0006")
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    error = {"type": "GatewayDown", "message": "503", "retryable": True}
    # 0007 adds indexes only, so today's table definitions write what 0006 holds (and in the
    # store's own timestamp format, as the engine writes it).
    with engine.begin() as conn:
        for sid, state, at in (
            ("old-1", "pending", now),
            ("old-0", "completed", now - timedelta(1)),
        ):
            conn.execute(
                insert(saga_table).values(
                    id=sid, name="order", kind="orchestrated", version=1, state=state,
                    payload={"order_id": "o-1"}, payload_hash="h", correlation_id="c",
                    created_at=at, updated_at=at, parked=False, lock_version=2,
                )
            )  # fmt: skip
        conn.execute(
            insert(step_table).values(
                saga_id="old-1", idx=0, name="charge", state="pending", attempt=1,
                compensation_attempt=0, error=error, in_doubt=False,
            )
        )  # fmt: skip
    migrate.upgrade(engine)
    assert schema_diff(engine) == []
    names = {ix["name"] for t in ("saga", "saga_step") for ix in inspect(engine).get_indexes(t)}
    assert {"ix_saga_created_id", "ix_saga_step_error"} <= names
    store = Store(str(engine.url.render_as_string(hide_password=False)), engine=engine)
    first = store.search(SagaFilter(), limit=1)
    assert [r.id for r in first.records] == ["old-1"] and first.next is not None
    assert [r.id for r in store.search(SagaFilter(), limit=1, after=first.next).records] == [
        "old-0"
    ]
    found = store.search(SagaFilter(error_type="GatewayDown", step="charge"))
    assert [r.id for r in found.records] == ["old-1"]
    snap = store.load("old-1")
    assert snap is not None
    done = replace(snap.status, state=SagaState.COMPLETED)
    assert store.write(Transition(snap.record, snap.status, done, ()), now=now)
    assert store.counts()["by_state"]["completed"] == 2


def test_upgrade_from_0007_with_a_saga_in_flight(engine: Engine) -> None:
    """A store at 0007 (before trace contexts) holding a saga in flight: 0008 applies, the saga
    reads with no trace context, moves on, and a new saga stores and reads back its own."""
    migrate.upgrade(engine, "0007")
    now = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO saga (id, name, kind, version, state, payload, payload_hash, "
                "correlation_id, created_at, updated_at, parked, lock_version, definition_hash) "
                "VALUES ('old-2', 'order', 'orchestrated', 1, 'pending', :payload, 'h', 'c', "
                ":now, :now, false, 2, 'f')"
            ),
            {"payload": '{"order_id": "o-2"}', "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO saga_step (saga_id, idx, name, state, attempt, "
                "compensation_attempt, deadline_at, in_doubt) VALUES "
                "('old-2', 0, 'reserve', 'running', 1, 0, :now, false)"
            ),
            {"now": now},
        )
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert schema_diff(engine) == []
    store = Store(str(engine.url.render_as_string(hide_password=False)), engine=engine)
    snap = store.load("old-2")
    assert snap is not None
    assert snap.record.trace_context is None and snap.record.lock_version == 2
    assert [(s.name, s.state.value) for s in snap.status.steps] == [("reserve", "running")]
    done = replace(snap.status, state=SagaState.COMPLETED)
    assert store.write(Transition(snap.record, snap.status, done, ()), now=now)
    after = store.load("old-2")
    assert after is not None and after.record.state is SagaState.COMPLETED
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    new = NewSaga(
        "new-1", "order", 1, {"order_id": "o-3"}, "c", done, (), (), trace_context=carrier
    )
    store.create(new, now=now)
    created = store.load("new-1")
    assert created is not None and created.record.trace_context == carrier


def test_upgrade_from_0008_with_sagas_in_flight_then_pause_and_fork(engine: Engine) -> None:
    """A store at 0008 holding a saga in flight (a running step, a timer due) upgrades through
    0009: it reads as neither paused nor forked, keeps its state, steps and revision, can be
    paused (its timer leaves the sweeper's range) and resumed, and a saga forked from it is
    found from it by the new index."""
    migrate.upgrade(engine, "0008")
    now = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
    wake = now + timedelta(seconds=30)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO saga (id, name, kind, version, state, payload, payload_hash, "
                "correlation_id, created_at, updated_at, wake_at, parked, lock_version, "
                "definition_hash) VALUES ('live-1', 'order', 'orchestrated', 1, 'pending', "
                ":payload, 'h', 'c', :now, :now, :wake, false, 4, 'abc')"
            ),
            {"payload": '{"order_id": "o-1"}', "now": now, "wake": wake},
        )
        for idx, (name, state) in enumerate((("reserve", "succeeded"), ("charge", "running"))):
            conn.execute(
                text(
                    "INSERT INTO saga_step (saga_id, idx, name, state, attempt, "
                    "compensation_attempt, deadline_at, in_doubt) VALUES "
                    "('live-1', :idx, :name, :state, 1, 0, :deadline, false)"
                ),
                {"idx": idx, "name": name, "state": state, "deadline": wake},
            )
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == "0009"
    assert schema_diff(engine) == []
    store = Store(str(engine.url.render_as_string(hide_password=False)), engine=engine)
    snap = store.load("live-1")
    assert snap is not None
    record = snap.record
    assert (record.paused_at, record.forked_from, record.lock_version) == (None, None, 4)
    assert record.definition_hash == "abc" and not snap.status.paused
    assert [(s.name, s.state.value) for s in snap.status.steps] == [
        ("reserve", "succeeded"),
        ("charge", "running"),
    ]
    paused = replace(snap.status, paused_at=now)
    assert store.write(Transition(record, snap.status, paused, ()), now=now)
    again = store.load("live-1")
    assert again is not None and again.status.paused_at == now
    assert again.record.wake_at is None  # the sweeper's scan no longer reaches it
    assert "live-1" not in store.due(100)
    resumed = replace(again.status, paused_at=None)
    assert store.write(Transition(again.record, again.status, resumed, ()), now=now)
    last = store.load("live-1")
    assert last is not None and last.record.paused_at is None and last.record.wake_at == wake
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO saga (id, name, kind, version, state, payload, payload_hash, "
                "correlation_id, created_at, updated_at, parked, lock_version, forked_from) "
                "VALUES ('live-1.fork1', 'order', 'orchestrated', 1, 'started', :payload, 'h', "
                "'c', :now, :now, false, 1, 'live-1')"
            ),
            {"payload": '{"order_id": "o-1"}', "now": now},
        )
    assert store.forks_of("live-1") == ["live-1.fork1"]
    assert store.load("live-1.fork1").record.forked_from == "live-1"  # type: ignore[union-attr]
