"""Admitting a start: the checks both patterns share, before and after the saga row exists.

``validate_start`` canonicalises the payload against the definition's model and checks the saga
and correlation ids (nothing is written when it raises); ``check_duplicate_start`` decides what
a start whose id is already taken means: the same saga again is a no-op, anything else a
``SagaConflict`` naming what differs.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel

from .errors import SagaConflict
from .observability import get_logger, metrics
from .payload import check_saga_id, validate_payload
from .settings import Settings
from .store.records import SagaRecord, payload_hash

log = get_logger("sagas.admission")


def validate_start(
    name: str,
    payload_model: type[BaseModel],
    payload: Any,
    saga_id: object,
    correlation_id: object,
    settings: Settings,
) -> tuple[dict[str, Any], str, str]:
    """Canonical payload, saga id and correlation id of a start (new ids when not given)."""
    sid = check_saga_id(saga_id) if saga_id is not None else uuid.uuid4().hex
    cid = (
        check_saga_id(correlation_id, field="correlation_id")
        if correlation_id is not None
        else uuid.uuid4().hex
    )
    data = validate_payload(
        payload_model,
        payload,
        saga=name,
        max_bytes=settings.max_payload_bytes,
        max_depth=settings.max_payload_depth,
    )
    return data, sid, cid


def check_duplicate_start(existing: SagaRecord, name: str, data: dict[str, Any]) -> None:
    """A start whose id is taken: the same saga again is fine; anything else is a conflict."""
    if existing.name == name and existing.payload_hash == payload_hash(data):
        log.info("start is a duplicate of an existing saga; nothing to do")
        return
    metrics.inc("sagas_start_rejected_total", saga=name, reason="SagaConflict")
    differs = "name" if existing.name != name else "payload"
    raise SagaConflict(
        f"saga id {existing.id!r} already exists as a {existing.name!r} saga with a "
        f"different {differs}",
        field="saga_id",
        saga=name,
    )
