"""The dashboard's settings (``SAGAS_DASHBOARD_*``) and its password hash.

The password is never configured in clear: ``SAGAS_DASHBOARD_PASSWORD_HASH`` holds an scrypt
hash (``saga dashboard --hash-password`` prints one), checked in constant time. scrypt is in
the standard library (``hashlib``), so no extra dependency is needed for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..errors import ConfigurationError
from ..views import SagaDetail

# scrypt cost 2^15 x 8 x 1: 32 MiB and about 0.2 s per check (measured on the 2-core CI
# machine): slow for a guesser, fine once per login.
_N, _R, _P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024
_HASH_RE = re.compile(
    r"scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)"
)


def hash_password(password: str, *, n: int = _N) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64url) for ``SAGAS_DASHBOARD_PASSWORD_HASH``."""
    if not password:
        raise ConfigurationError("the password is empty", setting="password")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=_R, p=_P, maxmem=_MAXMEM)
    return f"scrypt${n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison of the digests)."""
    m = _HASH_RE.fullmatch(stored)
    if m is None:
        return False
    n, r, p = (int(m.group(i)) for i in (1, 2, 3))
    salt, expected = _unb64(m.group(4)), _unb64(m.group(5))
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected)
    )
    return hmac.compare_digest(digest, expected)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _names(value: Any) -> Any:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


class DashboardSettings(BaseSettings):
    """What the dashboard reads from the environment (or is passed to ``create_app``)."""

    model_config = SettingsConfigDict(env_prefix="SAGAS_DASHBOARD_", extra="ignore", frozen=True)

    user: str | None = Field(
        None, max_length=100, description="The operator's login name (no user: no actions)."
    )
    password_hash: str | None = Field(
        None, repr=False, description="scrypt hash from `saga dashboard --hash-password`."
    )
    read_login: bool | None = Field(
        None,
        description="Reading pages needs a login (default: yes when a user is configured).",
    )
    secret_key: str | None = Field(
        None,
        repr=False,
        min_length=32,
        description="Signs the session cookie; default: random per process (logins then end "
        "when it restarts, and several processes do not share them).",
    )
    secure_cookies: bool = Field(False, description="Send the session cookie over HTTPS only.")
    login_max_failures: int = Field(
        5,
        ge=1,
        le=1000,
        description="Failed logins from one client address, or for one user name, within "
        "login_window seconds before more are refused (HTTP 429 with Retry-After).",
    )
    login_window: float = Field(
        300.0, gt=0, le=86400, description="Seconds a failed login counts against the limit."
    )
    redact: Annotated[list[str], NoDecode, BeforeValidator(_names)] = Field(
        default_factory=list,
        description="Payload and result fields shown as *** (any depth), e.g. card_number,password.",
    )
    trace_url: str | None = Field(
        None,
        description="Link for a correlation id, e.g. https://tempo.example/trace/{correlation_id}.",
    )

    @field_validator("password_hash")
    @classmethod
    def _hash_format(cls, value: str | None) -> str | None:
        if value is not None and not _HASH_RE.fullmatch(value):
            raise ValueError("not a hash from `saga dashboard --hash-password`")
        return value

    @field_validator("trace_url")
    @classmethod
    def _trace_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "{correlation_id}" not in value or not value.startswith(("https://", "http://")):
            raise ValueError("an http(s) URL containing {correlation_id}")
        return value

    def checked(self) -> DashboardSettings:
        """``ConfigurationError`` for a user without a password hash, or the reverse."""
        if (self.user is None) != (self.password_hash is None):
            raise ConfigurationError(
                "SAGAS_DASHBOARD_USER and SAGAS_DASHBOARD_PASSWORD_HASH go together",
                setting="dashboard_user",
            )
        return self

    @property
    def reads_need_login(self) -> bool:
        return self.read_login if self.read_login is not None else self.user is not None

    def trace_link(self, correlation_id: str) -> str | None:
        if self.trace_url is None:
            return None
        return self.trace_url.replace("{correlation_id}", quote(correlation_id, safe=""))


def from_environment() -> DashboardSettings:
    """``SAGAS_DASHBOARD_*`` from the environment; ``ConfigurationError`` names a bad one."""
    try:
        return DashboardSettings().checked()
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = str(first["loc"][0]) if first["loc"] else "dashboard"
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(
            f"SAGAS_DASHBOARD_{name.upper()}: {message}", setting=f"dashboard_{name}"
        ) from None


REDACTED = "***"


def redact(value: Any, fields: frozenset[str]) -> Any:
    """``value`` with every key in ``fields`` (at any depth) replaced by ``***``; a dotted key
    ending in one (a fork's diff names ``customer.card_number``) too."""
    if not fields:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if _hidden(k, fields) else redact(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, fields) for v in value]
    return value


def _hidden(key: Any, fields: frozenset[str]) -> bool:
    # Any segment: a redacted "customer" hides "customer.card_number" too.
    return isinstance(key, str) and (key in fields or any(p in fields for p in key.split(".")))


_CHANGE_LINE = re.compile(r"^payload (\S+): ")


def redact_lines(lines: Sequence[str], fields: frozenset[str]) -> tuple[str, ...]:
    """A plan's lines with the values of redacted payload paths hidden (a fork's diff lines
    read ``payload PATH: OLD -> NEW``)."""
    out = []
    for line in lines:
        found = _CHANGE_LINE.match(line)
        if found and _hidden(found.group(1), fields):
            line = f"payload {found.group(1)}: {REDACTED} -> {REDACTED}"
        out.append(line)
    return tuple(out)


def redact_detail(detail: SagaDetail, fields: frozenset[str]) -> SagaDetail:
    """One saga as the pages and the JSON API show it: payload, step results and history
    details redacted alike (one place, so no route shows what another hides)."""
    if not fields:
        return detail
    steps = [s.model_copy(update={"result": redact(s.result, fields)}) for s in detail.steps]
    history = [h.model_copy(update={"detail": redact(h.detail, fields)}) for h in detail.history]
    return detail.model_copy(
        update={"payload": redact(detail.payload, fields), "steps": steps, "history": history}
    )
