"""Which sagas to read: the filter shared by the HTTP API, the CLI, the dashboard and bulk
actions, and the opaque page cursor (pure, no I/O).

``SagaFilter`` validates everything a caller can type — states, names, ids, error types, dates
or ages — so a bad value is a ``FilterInvalid`` naming the field before any query runs (the store
binds every value as a parameter besides). ``Cursor`` is a keyset position, ``(created_at, id)``
of the last saga on a page, encoded as base64url JSON with a digest; ``Cursor.decode`` is strict
and refuses anything it did not write (``CursorInvalid``).

Why strict validation and a digest, not an HMAC with a secret: a cursor grants nothing — every
position it can name is reachable with ``until`` — so forging one gains nothing, and a secret
would have to be shared by every process that hands out cursors (the CLI prints one that the next
``saga list`` takes back). What matters is that an edited, truncated or foreign cursor is refused
with a clear error instead of silently serving some other page; the digest catches every edit
short of recomputing it, and the decoder checks every part of what it reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from .errors import SagaInputError
from .payload import NAME_RE, SAGA_ID_RE
from .state import SagaState, StepState


class FilterInvalid(SagaInputError):
    """A filter value is malformed (``field`` names it); no query ran."""


class CursorInvalid(SagaInputError):
    """A page cursor that this package did not hand out, or that was altered (``field`` is
    ``"cursor"``)."""

    @classmethod
    def refused(cls, why: str) -> CursorInvalid:
        return cls(f"cursor: {why}; start again without it", field="cursor")


# An exception's class name as the store keeps it, possibly dotted (a remote task's error).
ERROR_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_AGE_RE = re.compile(r"(\d{1,9})([smhdw])")
_LEAP_SECOND = re.compile(r"(T\d\d:\d\d):60")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_AGE = timedelta(days=100 * 366)  # keeps "now - age" inside datetime's range
_WHEN_HELP = (
    "an ISO 8601 date or date-time (2026-12-01, 2026-12-01T10:00:00Z; UTC if no offset) or an "
    "age before now (45s, 30m, 2h, 7d, 2w)"
)


def _when(value: Any) -> datetime | timedelta | None:
    """A point in time (aware UTC) or an age before now (resolved by the store's clock)."""
    if value is None or isinstance(value, timedelta):
        return value
    leap = timedelta(0)
    if isinstance(value, datetime):
        found = value
    elif isinstance(value, str):
        text = value.strip()
        age = _AGE_RE.fullmatch(text)
        if age:
            delta = timedelta(seconds=int(age.group(1)) * _AGE_UNITS[age.group(2)])
            if delta > MAX_AGE:
                raise ValueError(f"age {text!r} is more than 100 years")
            return delta
        text = text.upper()  # RFC 3339 allows "t" and "z"
        if _LEAP_SECOND.search(text):  # RFC 3339's 23:59:60: the instant after :59
            text, leap = _LEAP_SECOND.sub(r"\1:59", text, count=1), timedelta(seconds=1)
        try:
            found = (
                datetime.combine(date.fromisoformat(text), time())
                if len(text) == 10
                else datetime.fromisoformat(text)
            )
        except ValueError:
            raise ValueError(f"expected {_WHEN_HELP}, got {value[:80]!r}") from None
    else:
        raise ValueError(f"expected {_WHEN_HELP}")
    if found.tzinfo is None:
        found = found.replace(tzinfo=UTC)
    try:
        return found.astimezone(UTC) + leap
    except OverflowError:  # within a day of datetime's ends: before or after every saga
        return (
            datetime.min.replace(tzinfo=UTC)
            if found.year == 1
            else datetime.max.replace(tzinfo=UTC)
        )


def _choices(value: Any) -> Any:
    """Several values as a list, a repeated query parameter, or one comma-separated string (an
    empty part stays, and fails as an unknown value)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            out.extend(part.strip() for part in item.split(","))
        else:
            out.append(item)
    return tuple(out)


# Patterns anchored, so the published schema says exactly what is accepted.
Name = Annotated[str, StringConstraints(pattern=f"^{NAME_RE.pattern}$")]
Id = Annotated[str, StringConstraints(pattern=f"^{SAGA_ID_RE.pattern}$")]
ErrorType = Annotated[str, StringConstraints(pattern=f"^{ERROR_TYPE_RE.pattern}$")]
# Published as a date-time; an age ("2h") is accepted too (the description says so).
When = Annotated[
    datetime | timedelta,
    BeforeValidator(_when),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class SagaFilter(BaseModel):
    """Sagas matching every field given (an empty filter: every saga). Newest first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: Annotated[tuple[SagaState, ...], BeforeValidator(_choices)] = Field(
        (), description="Any of these saga states (repeat or comma-separate)."
    )
    name: Name | None = Field(None, description="Saga name.")
    version: int | None = Field(None, ge=1, le=2**31 - 1, description="Definition version.")
    correlation_id: Id | None = Field(None, description="The id the starter passed along.")
    error_type: ErrorType | None = Field(
        None, description="The saga's failure, or any step's last error, is of this type."
    )
    step: Name | None = Field(
        None,
        description="The saga is at, or stopped at, this step: it is running, waiting to "
        "retry, parked, failed, timed out or compensating (or in `step_state`).",
    )
    step_state: Annotated[tuple[StepState, ...], BeforeValidator(_choices)] = Field(
        (), description="A step (`step`, or any) is in one of these states."
    )
    waiting: bool | None = Field(
        None, description="The saga waits for a signal (a wait step, or a parked step's go-ahead)."
    )
    signal: Name | None = Field(
        None, description="The saga waits for this signal (with `waiting=false`: does not)."
    )
    parked: bool | None = Field(None, description="The saga is parked for an operator.")
    since: When | None = Field(None, description=f"Created at or after: {_WHEN_HELP}.")
    until: When | None = Field(
        None, description=f"Created before: {_WHEN_HELP}. Before `since`: nothing matches."
    )
    updated_since: When | None = Field(None, description="Last changed at or after (as since).")
    updated_until: When | None = Field(None, description="Last changed before (as until).")

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> SagaFilter:
        """Validate ``data`` (None values dropped); ``FilterInvalid`` names the first bad field."""
        try:
            return cls.model_validate({k: v for k, v in data.items() if v is not None})
        except ValidationError as exc:
            raise filter_error(exc) from None


def filter_error(exc: ValidationError) -> SagaInputError:
    """The first problem pydantic found, as one ``FilterInvalid`` naming its field."""
    first = exc.errors(include_url=False)[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, SagaInputError):  # raised by a model validator: already named
        return cause
    field = str(first["loc"][0]) if first["loc"] else "filter"
    message = first["msg"].removeprefix("Value error, ")
    return FilterInvalid(f"{field}: {message}", field=field)


class StuckClass(StrEnum):
    """Why an active saga is on the stuck list (each saga is in one class, the first that
    applies in this order)."""

    DEAD_LETTERED = "dead_lettered"  # parked: a compensation or a step waits for an operator
    UNSENT_COMMANDS = "unsent_commands"  # committed commands not published (outbox)
    WAITING_PAST_DUE = "waiting_past_due"  # a timer (retry, timeout, wait) due and not fired
    NO_PROGRESS = "no_progress"  # nothing scheduled and nothing changed


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last saga's creation time and id (the list's sort key)."""

    created_at: datetime
    saga_id: str

    _VERSION = 1
    _MAX_LENGTH = 400

    def encode(self) -> str:
        body = json.dumps(
            {"v": self._VERSION, "c": self.created_at.isoformat(), "i": self.saga_id},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(body)}.{_b64(_digest(body))}"

    @classmethod
    def decode(cls, token: str) -> Cursor:
        refuse = CursorInvalid.refused
        if not isinstance(token, str) or not 0 < len(token) <= cls._MAX_LENGTH:
            raise refuse("not a cursor this API handed out")
        head, dot, tag = token.partition(".")
        if not dot:
            raise refuse("not a cursor this API handed out")
        try:
            body, mac = _unb64(head), _unb64(tag)
        except (binascii.Error, ValueError):
            raise refuse("not a cursor this API handed out") from None
        if not hmac.compare_digest(mac, _digest(body)):
            raise refuse("it was altered or truncated")
        try:  # the digest matched, so this is a cursor we wrote (or someone recomputed it)
            data = json.loads(body)
            if set(data) != {"v", "c", "i"} or data["v"] != cls._VERSION:
                raise ValueError("unknown layout")
            created = datetime.fromisoformat(data["c"])
            if created.tzinfo is None or not SAGA_ID_RE.fullmatch(data["i"]):
                raise ValueError("bad position")
        except (ValueError, TypeError, KeyError):
            raise refuse("its position is malformed") from None
        return cls(created.astimezone(UTC), data["i"])


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16, person=b"sagas.cursor").digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
