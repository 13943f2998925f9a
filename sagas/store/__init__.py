"""The saga store: the only package that imports SQLAlchemy.

``Store`` (optimistic reads and compare-and-set writes, operator and sweeper queries), ``Tx``
(a transaction holding a saga's row lock), the records they hand out, the schema and its Alembic
migrations. Driver errors leave this package as ``StoreError``/``StoreUnavailable``/
``StoreConflict`` (``engine.translated``).
"""

from __future__ import annotations

from .engine import make_engine
from .records import (
    HistoryEntry,
    NewSaga,
    SagaRecord,
    Snapshot,
    Transition,
    inserted_record,
    payload_hash,
    utc,
)
from .search import SagaPage, StuckSaga
from .store import Store, VersionCount
from .tx import Tx

__all__ = [
    "HistoryEntry",
    "NewSaga",
    "SagaRecord",
    "SagaPage",
    "Snapshot",
    "Store",
    "StuckSaga",
    "Transition",
    "Tx",
    "VersionCount",
    "inserted_record",
    "make_engine",
    "payload_hash",
    "utc",
]
