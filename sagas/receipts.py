"""Exactly-once effects in a participant's own database (implemented in ``sagas.store``).

See ``sagas.store.receipts`` for how a receipt, written in the effect's own transaction, makes a
redelivered command return the recorded result and refuses a forward after its compensation.
"""

from __future__ import annotations

from .store.receipts import (
    AlreadyCompensated,
    Receipt,
    ReceiptNotRecorded,
    ReceiptRow,
    Receipts,
    metadata,
    receipt_table,
)

__all__ = [
    "AlreadyCompensated",
    "Receipt",
    "ReceiptNotRecorded",
    "ReceiptRow",
    "Receipts",
    "metadata",
    "receipt_table",
]
