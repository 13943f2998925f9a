"""Checks on what callers hand the engine: JSON values, payload size, saga ids.

Every check raises a ``SagaInputError`` subclass naming the field; none writes anything.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import InvalidSagaId, PayloadInvalid, PayloadNotJSON, PayloadTooLarge

SAGA_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Saga, step, group, signal and handler names (checked when a definition is declared).
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_INT_BITS = 4096
# PostgreSQL's jsonb cannot store NUL, nor the escapes of lone UTF-16 surrogates (which are not
# UTF-8 either).
_FORBIDDEN_CHARS = re.compile("[\x00\ud800-\udfff]")


def check_saga_id(saga_id: object, *, field: str = "saga_id") -> str:
    if not isinstance(saga_id, str) or not SAGA_ID_RE.fullmatch(saga_id):
        raise InvalidSagaId(
            f"{field} must be 1-128 characters of A-Z a-z 0-9 . _ : - starting with a letter "
            f"or digit, got {_short(saga_id)}",
            field=field,
        )
    return saga_id


def check_json(value: Any, *, field: str = "payload", max_depth: int = 32) -> None:
    """Raise ``PayloadNotJSON`` naming the path of the first value JSON cannot carry.

    Rejects NaN/Infinity, bytes, sets, tuples' cousins (any non-list/dict container), non-string
    keys, NUL and lone surrogate characters (PostgreSQL's jsonb cannot store them) and nesting
    past ``max_depth`` (checked iteratively, so hostile nesting never raises RecursionError).
    """
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > max_depth:
            raise PayloadNotJSON(f"{path}: nested deeper than {max_depth} levels", field=path)
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int | float):
            _check_number(item, path)
        elif isinstance(item, str):
            if _FORBIDDEN_CHARS.search(item):
                raise PayloadNotJSON(
                    f"{path}: strings may not contain NUL (\\u0000) or lone surrogates", field=path
                )
        elif isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise PayloadNotJSON(f"{path}: key {_short(key)} is not a string", field=path)
                if _FORBIDDEN_CHARS.search(key):
                    raise PayloadNotJSON(
                        f"{path}: keys may not contain NUL or lone surrogates", field=path
                    )
                stack.append((sub, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            for i, sub in enumerate(item):
                stack.append((sub, f"{path}[{i}]", depth + 1))
        else:
            raise PayloadNotJSON(f"{path}: {type(item).__name__} is not a JSON value", field=path)


def _check_number(value: int | float, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PayloadNotJSON(f"{path}: {value} is not a JSON number", field=path)
    # Python refuses to print ints past ~4300 digits (json.dumps raises a bare ValueError).
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise PayloadNotJSON(f"{path}: integer wider than {MAX_INT_BITS} bits", field=path)


def encode(value: Any) -> str:
    """Canonical compact JSON (already checked by ``check_json``)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def validate_payload(
    model: type[BaseModel],
    payload: Any,
    *,
    saga: str,
    max_bytes: int,
    max_depth: int,
) -> dict[str, Any]:
    """Validate ``payload`` strictly against ``model``; return its canonical JSON form."""
    if isinstance(payload, BaseModel):
        if not isinstance(payload, model):
            raise PayloadInvalid(
                f"payload for saga {saga!r} must be a {model.__name__}, "
                f"got {type(payload).__name__}",
                field="payload",
                saga=saga,
            )
        payload = payload.model_dump(mode="json")
    if not isinstance(payload, dict):
        raise PayloadInvalid(
            f"payload for saga {saga!r} must be a JSON object, got {type(payload).__name__}",
            field="payload",
            saga=saga,
        )
    check_json(payload, max_depth=max_depth)
    raw = encode(payload)
    if len(raw.encode()) > max_bytes:
        raise PayloadTooLarge(
            f"payload for saga {saga!r} is {len(raw.encode())} bytes, over the {max_bytes} limit",
            field="payload",
            saga=saga,
        )
    try:
        # Strict JSON-mode validation: True is not an int, "1" is not an int; ISO dates are fine.
        validated = model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PayloadInvalid(
            f"payload for saga {saga!r}: field {where or 'payload'!r}: {first['msg']}"
            + (f" ({len(exc.errors())} errors)" if len(exc.errors()) > 1 else ""),
            field=f"payload.{where}" if where else "payload",
            saga=saga,
        ) from None
    result: dict[str, Any] = validated.model_dump(mode="json")
    return result


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
