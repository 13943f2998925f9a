"""The order-fulfillment payload, and the example services' own databases."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy import Engine, MetaData
from sqlalchemy.engine import make_url

from sagas.receipts import Receipts
from sagas.runtime import get_runtime
from sagas.store import make_engine


class Item(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0)
    unit_cents: int = Field(ge=0)


class Address(BaseModel):
    line1: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    country: str = Field(min_length=2, max_length=2)


class Simulation(BaseModel):
    """Knobs for the demo: how often the carrier API fails, or whether it refuses the address."""

    carrier_outages: int = Field(0, ge=0, le=10)
    undeliverable: bool = False


class Order(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    email: str = Field(min_length=3, max_length=254)
    card_number: str = Field(pattern=r"^[0-9]{12,19}$")
    items: list[Item] = Field(min_length=1, max_length=100)
    ship_to: Address
    simulate: Simulation = Simulation()

    @property
    def total_cents(self) -> int:
        return sum(i.quantity * i.unit_cents for i in self.items)


class ServiceDatabase:
    """An example service's own database (never the saga store): its tables and its receipts.

    URL: ``<SERVICE>_DATABASE_URL``, else a SQLite file named after the service next to the saga
    store's SQLite file (``sqlite:///payment.db`` beside ``sagas.db``), else in the working
    directory. Resolved on each use and one engine kept per URL, so a prefork child opens its own
    connections and an embedded test's temporary store gets temporary service files.
    """

    def __init__(self, service: str, metadata: MetaData) -> None:
        self.service = service
        self.metadata = metadata
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def url(self) -> str:
        url = os.environ.get(f"{self.service.upper()}_DATABASE_URL")
        if url:  # a plain postgresql:// URL means psycopg 3, as for the saga store
            scheme, _, rest = url.partition("://")
            return f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else url
        store = make_url(get_runtime().settings.database_url_sqlalchemy)
        if store.get_backend_name() == "sqlite" and store.database not in (None, "", ":memory:"):
            return f"sqlite:///{Path(store.database or '').with_name(self.service + '.db')}"
        return f"sqlite:///{self.service}.db"

    def engine(self) -> Engine:
        url = self.url()
        with self._lock:
            engine = self._engines.get(url)
            if engine is None:
                engine = make_engine(url)
                self.metadata.create_all(engine)
                Receipts(engine).create_table()
                self._engines[url] = engine
            return engine
