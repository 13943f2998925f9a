"""Logging with saga context, and counters.

Every record the engine logs for a saga carries ``saga_id``, ``saga``, ``correlation_id``, and
inside a step attempt ``step`` and ``attempt``, attributes (for structured handlers) and ends
with ``[saga=... id=... corr=...]`` in its text. User strings are escaped so a payload cannot
forge log lines or send terminal escapes. ``JSONFormatter`` writes one JSON object per record
(``SAGAS_LOG_FORMAT=json``).

``metrics`` counts per process; sinks added to it (``sagas.prometheus``) receive every count
and timing as well. Without a sink a timing costs one empty-list check.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

_context: ContextVar[dict[str, str] | None] = ContextVar("sagas_log_context", default=None)


@contextmanager
def saga_context(**fields: str | None) -> Iterator[None]:
    """Attach saga ids to every log record emitted inside the block (this thread/task only)."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get() or {})


def escape(text: object) -> str:
    """Make untrusted text safe for one log line (CR, LF, ESC and other controls escaped)."""
    value = str(text)
    if value.isprintable():
        return value
    return value.encode("unicode_escape").decode("ascii")


class SagaContextFilter(logging.Filter):
    """Adds saga_id/saga/correlation_id attributes to every record (empty when outside a saga)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get() or {}
        record.saga_id = ctx.get("saga_id", "")
        record.saga = ctx.get("saga", "")
        record.correlation_id = ctx.get("correlation_id", "")
        record.step = ctx.get("step", "")
        record.attempt = ctx.get("attempt", "")
        if record.exc_info and not record.exc_text:
            # A traceback repeats the exception's message verbatim: escape it line by line.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = "\n".join(escape(line) for line in text.splitlines())
        return True


class _Adapter(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        ctx = _context.get()
        if ctx:
            tags = " ".join(
                f"{k}={escape(ctx[k])}" for k in ("saga", "saga_id", "correlation_id") if k in ctx
            )
            msg = f"{msg} [{tags}]"
        return msg, kwargs


def get_logger(name: str) -> logging.LoggerAdapter[logging.Logger]:
    logger = logging.getLogger(name)
    if not any(isinstance(f, SagaContextFilter) for f in logger.filters):
        logger.addFilter(SagaContextFilter())
    return _Adapter(logger, {})


# The fields a JSON line carries besides time, level, logger and message (empty ones left out).
JSON_FIELDS = ("saga_id", "saga", "step", "attempt", "correlation_id")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the saga fields
    (``SagaContextFilter`` adds them) and ``exc_info`` text when there is one."""

    converter = staticmethod(time.gmtime)  # timestamps in UTC, whatever the host's zone

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JSON_FIELDS:
            value = getattr(record, name, "")
            if value not in ("", None):
                line[name] = int(value) if name == "attempt" and str(value).isdigit() else value
        if record.exc_info:
            line["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class Sink(Protocol):
    """Where counts and timings go besides the per-process counters (an exporter)."""

    def count(self, name: str, amount: float, labels: dict[str, str]) -> None: ...

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None: ...


class Metrics:
    """Thread-safe per-process counters keyed by (name, labels); ``snapshot()`` renders them
    for an exporter. Store-wide gauges: ``saga metrics``. Sinks get every count and timing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._sinks: list[Sink] = []

    def add_sink(self, sink: Sink) -> None:
        """Send counts and timings to ``sink`` too (idempotent)."""
        with self._lock:
            if sink not in self._sinks:
                self._sinks = [*self._sinks, sink]

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[key] += amount
        for sink in self._sinks:
            sink.count(name, amount, labels)

    def observe(self, name: str, value: float, **labels: str) -> None:
        """A timing (seconds) for the sinks' histograms; nothing is kept here."""
        for sink in self._sinks:
            sink.observe(name, value, labels)

    @property
    def exporting(self) -> bool:
        """Is any sink listening? (Callers skip computing a timing when not.)"""
        return bool(self._sinks)

    def get(self, name: str, **labels: str) -> int:
        with self._lock:
            return sum(
                n
                for (k, lbl), n in self._counts.items()
                if k == name and all(dict(lbl).get(a) == b for a, b in labels.items())
            )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                name + ("{" + ",".join(f'{k}="{v}"' for k, v in lbl) + "}" if lbl else ""): n
                for (name, lbl), n in sorted(self._counts.items())
            }


metrics = Metrics()
