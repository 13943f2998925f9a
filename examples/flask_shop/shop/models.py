from sqlalchemy.orm import Mapped, mapped_column

from . import db


class Order(db.Model):
    id: Mapped[str] = mapped_column(primary_key=True)
    item: Mapped[str]
    status: Mapped[str] = mapped_column(default="new")


class Charge(db.Model):
    order_id: Mapped[str] = mapped_column(primary_key=True)
    charged_by: Mapped[str]
