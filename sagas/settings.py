"""Configuration, read once at the edge (CLI, worker start, ``sagas.install``).

Each setting is read from the Celery app's configuration when one is given (``sagas_<name>``
in ``app.conf``, so Django's ``CELERY_SAGAS_<NAME>`` works through Celery's namespace), else
from the environment (``SAGAS_<NAME>``), else its default. Everything inside the engine takes a
``Settings`` explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///sagas.db"
SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAGAS_", extra="ignore", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the saga store (PostgreSQL in production).",
    )
    database_schema: str | None = Field(
        None,
        description="Schema of the saga store's Alembic version table (sagas_alembic_version); "
        "unset: the connection's default schema. It must exist already. Only the version table "
        "goes there: the saga tables stay in the default schema (a schema for them would mean "
        "qualifying every table and statement). On SQLite, leave it unset.",
    )
    broker_url: str | None = Field(
        None,
        validation_alias="CELERY_BROKER_URL",
        description="Celery broker; unset means the embedded in-process default.",
    )
    coordinator_queue: str = Field("sagas", description="Queue of the coordinator's tasks.")
    max_payload_bytes: int = Field(256 * 1024, gt=0, description="Largest accepted payload (JSON).")
    max_payload_depth: int = Field(32, gt=0, le=128, description="Deepest payload nesting.")
    sweep_interval: float = Field(5.0, gt=0, description="Seconds between sweeper passes (beat).")
    outbox_grace: float = Field(
        10.0, gt=0, description="Seconds before the sweeper re-publishes unsent commands."
    )
    outbox_clear_delay: float = Field(
        0.1,
        ge=0,
        le=5,
        description=(
            "Seconds within which a worker marks published commands sent, many sagas in one "
            "statement (0: one statement per publish, at once)."
        ),
    )
    max_countdown: float = Field(
        300.0,
        gt=0,
        description="Longest wake-up sent as a countdown message; longer timers wait for the "
        "sweeper (Redis redelivers unacked messages after its visibility timeout).",
    )
    sweep_batch: int = Field(200, gt=0, description="Sagas handled per sweeper pass.")
    stuck_after: float = Field(
        600.0,
        gt=0,
        description="Seconds without progress after which the sweeper escalates an active saga "
        "(its timers did not move it: a parked compensation, an unsent outbox, a stalled saga).",
    )
    retention: float | None = Field(
        None,
        gt=0,
        description="Seconds a finished (completed or failed) saga is kept; past it the sweeper "
        "deletes it with its steps and history, retention_batch per pass (unset: kept for "
        "ever; `saga prune --older-than 30d` does the same on demand, with --archive).",
    )
    retention_batch: int = Field(
        500, gt=0, description="Finished sagas the sweeper deletes per pass (one transaction)."
    )
    escalation_task: str | None = Field(
        None,
        description="Celery task the sweeper sends each escalation to (kwargs saga_id, saga, "
        "state, reason, correlation_id), e.g. one that pages an operator; unset: logs and the "
        "sagas_escalated_total counter only.",
    )
    local_transitions: bool = Field(
        True,
        description="A participant that can reach the store applies its step's transition "
        "itself instead of sending a reply message (falls back to the message if it cannot).",
    )
    start_on_step_queue: bool = Field(
        False,
        description="start_saga.delay from a process that has the saga's definition goes to its "
        "first step's queue (when that step is local), where the worker records the start and "
        "runs step 1 in the same task: one hop and one outbox round trip fewer per saga. The "
        "saga row then exists only once that worker took the message (with the coordinator "
        "queue it exists as soon as the coordinator did), so an outage of the first step's "
        "service hides new sagas in its queue instead of timing them out.",
    )
    start_in_caller: bool | None = Field(
        None,
        description="start_saga.delay from a process that has the saga's definition records "
        "the start itself (the saga row, its first dispatch, the publish of step 1 to its "
        "queue) and returns an already-finished result holding the saga id: no coordinator "
        "hop, and the start is durable once delay returns. Falls back to the message when the "
        "store is unreachable, or when the call asks for a countdown, eta, queue or other "
        "delivery option. Unset: on when this process's store is configured (the database URL "
        "given, not the built-in sagas.db default, which a worker elsewhere would not share) "
        "and start_on_step_queue is off; false: always the message.",
    )
    inline_steps: bool = Field(
        True,
        description="With local transitions, run the next step in the same task when it lives "
        "on a queue this worker consumes (no broker round trip).",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Worker log lines: text (Celery's format with the saga fields appended) or "
        "json (one object per line: ts, level, logger, message, saga_id, saga, step, attempt, "
        "correlation_id).",
    )
    metrics: bool = Field(
        False,
        description="Export the engine's counters and histograms with prometheus_client (in a "
        "prefork worker also set PROMETHEUS_MULTIPROC_DIR). Implied by metrics_port.",
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="A worker serves /metrics (every child's values and the store-wide gauges) "
        "on this port; unset: no server (use `saga metrics serve` or mount the app).",
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the worker's metrics server binds to."
    )

    @property
    def exports_metrics(self) -> bool:
        return self.metrics or self.metrics_port is not None

    @field_validator("database_url")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("must be a SQLAlchemy URL such as postgresql+psycopg://host/db")
        return value

    @field_validator("database_schema")
    @classmethod
    def _schema_is_identifier(cls, value: str | None) -> str | None:
        if value is not None and not SQL_IDENTIFIER.fullmatch(value):
            raise ValueError(
                "database_schema must be a plain SQL identifier (a letter or _, then up to 62 "
                "letters, digits or _)"
            )
        return value

    @classmethod
    def from_config(cls, conf: Mapping[str, Any] | Any | None = None) -> Settings:
        """Settings from a Celery app's ``conf`` (``sagas_<name>`` keys; the broker from
        ``broker_url``), falling back to the environment. A wrong value raises
        ``ConfigurationError`` naming the setting, in one line."""
        given: dict[str, Any] = {}
        if conf is not None:
            for name in cls.model_fields:
                key = "broker_url" if name == "broker_url" else f"sagas_{name}"
                value = conf.get(key)
                if value is not None:
                    # Given by its alias: the broker field reads only CELERY_BROKER_URL.
                    given["CELERY_BROKER_URL" if name == "broker_url" else name] = value
        try:
            return cls(**given)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = str(first["loc"][0]) if first["loc"] else "?"
            where = f"sagas_{name} / SAGAS_{name.upper()}"
            got = first.get("input")
            shown = mask_url(str(got)) if name.endswith("url") else repr(got)
            raise ConfigurationError(
                f"setting {where}: {first['msg']} (got {shown})", setting=name
            ) from None

    @property
    def starts_in_caller(self) -> bool:
        """Whether ``start_saga.delay`` records the start in the calling process (see
        ``start_in_caller``): by default only with a store URL given explicitly, since a
        caller on the built-in default would write into a SQLite file no worker reads."""
        if self.start_in_caller is not None:
            return self.start_in_caller
        return "database_url" in self.model_fields_set and not self.start_on_step_queue

    @property
    def database_url_sqlalchemy(self) -> str:
        # Plain postgresql:// URLs mean psycopg 3 here (psycopg2 is not a dependency).
        url = self.database_url
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            return "postgresql+psycopg://" + url.split("://", 1)[1]
        return url


def mask_url(url: str | None) -> str:
    """A URL safe to log: the password replaced by ***."""
    if not url or "://" not in url:
        return str(url)
    url = re.sub(r"(?i)([?&](?:password|pass|pwd)=)[^&#]*", r"\1***", url)  # libpq-style
    scheme, rest = url.split("://", 1)
    if "@" not in rest:
        return url
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
