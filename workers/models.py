"""The order-fulfillment payload."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
