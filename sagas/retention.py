"""Retention: finished sagas older than an age are deleted in batches, optionally archived
first as JSON lines (one saga per line: its row, steps and history).

    saga prune --older-than 30d --archive sagas-2026-11.jsonl     # or SAGAS_RETENTION=2592000

Only completed and failed sagas are touched, each batch in one short transaction that skips a
row another transaction holds: active sagas are never read for it, locked or slowed. The
cutoff is taken once, from the database clock, when a run begins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from .observability import get_logger, metrics
from .payload import encode
from .store import Store

log = get_logger("sagas.retention")


@dataclass(frozen=True, slots=True)
class Pruned:
    cutoff: datetime
    deleted: int
    archived: int
    batches: int


def due(store: Store, older_than: float) -> tuple[datetime, int]:
    """The cutoff for ``older_than`` seconds and how many finished sagas are past it."""
    cutoff = store.now() - timedelta(seconds=older_than)
    return cutoff, store.count_finished_before(cutoff)


def prune(
    store: Store,
    older_than: float,
    *,
    batch: int = 500,
    archive: IO[str] | None = None,
    max_batches: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Pruned:
    """Delete finished sagas last changed more than ``older_than`` seconds ago, ``batch`` at
    a time (at most ``max_batches`` batches), writing each to ``archive`` first when given.
    ``progress`` is called with each batch's count."""
    if older_than <= 0 or batch <= 0:
        raise ValueError("older_than and batch must be positive")
    cutoff = store.now() - timedelta(seconds=older_than)
    deleted = archived = batches = 0
    while max_batches is None or batches < max_batches:
        ids = store.finished_before(cutoff, batch)
        if not ids:
            break
        if archive is not None:
            for saga_id in ids:
                archive.write(encode(_archived(store, saga_id)) + "\n")
            archive.flush()  # on disk before the rows are gone
            archived += len(ids)
        n = store.delete_finished(ids, cutoff)
        batches += 1
        deleted += n
        if progress is not None:
            progress(n)
        if n == 0:
            break  # every candidate changed or is held by another transaction: next time
    if deleted:
        metrics.inc("sagas_pruned_total", deleted)
        log.info("pruned %d finished saga(s) last changed before %s", deleted, cutoff)
    return Pruned(cutoff, deleted, archived, batches)


def _archived(store: Store, saga_id: str) -> dict[str, Any]:
    record, status, history = store.get(saga_id)
    return {
        "id": record.id,
        "name": record.name,
        "version": record.version,
        "kind": record.kind.value,
        "state": record.state.value,
        "correlation_id": record.correlation_id,
        "payload": record.payload,
        "failure": record.failure.as_json() if record.failure else None,
        "created_at": record.created_at.isoformat(),
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "steps": [
            {
                "name": s.name,
                "state": s.state.value,
                "attempt": s.attempt,
                "compensation_attempt": s.compensation_attempt,
                "result": s.result,
                "error": s.error.as_json() if s.error else None,
            }
            for s in status.steps
        ],
        "history": [
            {
                "at": h.at.isoformat(),
                "kind": h.kind,
                "step": h.step,
                "attempt": h.attempt,
                "detail": h.detail,
            }
            for h in history
        ],
    }
