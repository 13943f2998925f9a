"""A service database per backend (SQLite file, PostgreSQL scratch database) with a receipts
table and an ``effects`` table standing for the service's own rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, delete, func, select

from sagas.receipts import Receipts, receipt_table
from sagas.store import make_engine
from tests.services import scratch_database

metadata = MetaData()
effects = Table(
    "effects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
)


@dataclass
class ServiceDb:
    receipts: Receipts
    backend: str

    def effects(self, saga_id: str, kind: str | None = None) -> int:
        query = select(func.count()).select_from(effects).where(effects.c.saga_id == saga_id)
        if kind is not None:
            query = query.where(effects.c.kind == kind)
        with self.receipts.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def receipt_rows(self, saga_id: str) -> int:
        query = select(func.count()).where(receipt_table.c.saga_id == saga_id)
        with self.receipts.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


def _open(url: str, backend: str) -> Iterator[ServiceDb]:
    engine = make_engine(url)
    receipts = Receipts(engine)
    receipts.create_table()
    receipts.create_table()  # idempotent
    metadata.create_all(engine)
    try:
        yield ServiceDb(receipts, backend)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceDb]:
    yield from _open(f"sqlite:///{tmp_path_factory.mktemp('receipts') / 'service.db'}", "sqlite")


@pytest.fixture(scope="session")
def postgresql_db() -> Iterator[ServiceDb]:
    with scratch_database("sagas_receipts") as url:
        yield from _open(url, "postgresql")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> ServiceDb:
    service: ServiceDb = request.getfixturevalue(f"{request.param}_db")
    with service.receipts.engine.begin() as conn:
        conn.execute(delete(effects))
        conn.execute(delete(receipt_table))
    return service
