"""Served metrics: the one module that imports ``prometheus_client``.

``enable()`` plugs a sink into ``sagas.observability.metrics``: from then on the engine's counts
and timings also go to Prometheus counters and histograms (below, with their labels). Off by
default (the engine then pays one empty-list check per count). Label values are bounded: saga
and step names come from the definitions (a start naming an unknown saga counts as
``saga="(unknown)"``), outcomes and reasons are fixed words; never saga ids.

In a prefork Celery worker every child is its own process: set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory in the worker's environment before it starts (``prometheus_client`` reads it when
first imported). Each child then writes its values to a file there, and ``registry()`` merges
them for the one endpoint a scrape reads: ``serve(port)`` (the worker's ``SAGAS_METRICS_PORT``,
``saga metrics serve``), or ``wsgi_app()`` / ``asgi_app()`` mounted at ``/metrics``. The store-wide
gauges of ``saga metrics`` are added to the same page when a ``gauges`` function is given.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    make_asgi_app,
    make_wsgi_app,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "(unknown)"

# Seconds: a step from a few milliseconds (a local write) to minutes (a slow remote service).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
SAGA_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)

# name -> (documentation, label names); counters are exported as <name> (ending in _total).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sagas_started_total": ("Sagas started.", ("saga",)),
    "sagas_finished_total": ("Sagas finished, by final state.", ("saga", "state")),
    "sagas_step_attempts_total": (
        "Step attempts settled, by outcome (succeeded, failed, timed_out).",
        ("saga", "step", "outcome"),
    ),
    "sagas_step_retries_total": ("Retries scheduled after a failed attempt.", ("saga", "step")),
    "sagas_compensations_total": (
        "Compensation attempts settled, by outcome (compensated, failed, parked).",
        ("saga", "step", "outcome"),
    ),
    "sagas_escalated_total": ("Sagas escalated to an operator by the sweeper.", ("saga", "reason")),
    "sagas_start_rejected_total": ("Starts rejected (bad input, conflict).", ("saga", "reason")),
    "sagas_parked_total": ("Sagas parked for an operator.", ("saga",)),
}
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "sagas_saga_duration_seconds": (
        "From start to completed or failed (database clock).",
        ("saga", "outcome"),
        SAGA_BUCKETS,
    ),
    "sagas_step_duration_seconds": (
        "Time in a local step's function (or compensation), per attempt, in the worker.",
        ("saga", "step", "action", "outcome"),
        STEP_BUCKETS,
    ),
}


class PrometheusSink:
    """Receives ``metrics.inc`` / ``metrics.observe`` and updates the Prometheus metric of the
    same name; names it does not export are ignored."""

    def __init__(self, known_saga: Callable[[str], bool], registry: CollectorRegistry) -> None:
        self._known = known_saga
        self._counters = {
            name: Counter(name.removesuffix("_total"), doc, labels, registry=registry)
            for name, (doc, labels) in COUNTERS.items()
        }
        self._histograms = {
            name: Histogram(name, doc, labels, buckets=buckets, registry=registry)
            for name, (doc, labels, buckets) in HISTOGRAMS.items()
        }

    def _labels(self, names: tuple[str, ...], given: dict[str, str]) -> list[str]:
        values = [str(given.get(n, "")) for n in names]
        if names and names[0] == "saga" and not self._known(values[0]):
            values[0] = UNKNOWN
        return values

    def count(self, name: str, amount: float, labels: dict[str, str]) -> None:
        counter = self._counters.get(name)
        if counter is not None:
            counter.labels(*self._labels(COUNTERS[name][1], labels)).inc(amount)

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        histogram = self._histograms.get(name)
        if histogram is not None:
            histogram.labels(*self._labels(HISTOGRAMS[name][1], labels)).observe(value)


_lock = threading.Lock()
_sink: PrometheusSink | None = None


def enable(known_saga: Callable[[str], bool], *, registry: CollectorRegistry | None = None) -> Any:
    """Create the metrics (once per process) and return the sink to add to
    ``observability.metrics``. ``registry``: a private one (tests); default: the global one."""
    global _sink
    if registry is not None:
        return PrometheusSink(known_saga, registry)
    with _lock:
        if _sink is None:
            _sink = PrometheusSink(known_saga, REGISTRY)
        return _sink


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def mark_process_dead(pid: int) -> None:
    """A prefork child exited: drop its live gauges' files (counters stay in the totals)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


class _Forward(Collector):
    """This process's own registry, on a page that adds the gauges."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


class _Gauges(Collector):
    """The store-wide gauges (``saga metrics``), read from the store on each scrape."""

    def __init__(self, gauges: Callable[[], dict[str, Any]]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        try:
            stats = self._gauges()
        except Exception:  # noqa: BLE001 - a store outage must not fail the process' own metrics
            return
        by_state = GaugeMetricFamily(
            "sagas_in_store", "Sagas in the store by saga name and state.", labels=["saga", "state"]
        )
        for (name, state), n in sorted(stats["by_state"].items()):
            by_state.add_metric([name, state], n)
        yield by_state
        for metric, key, text in (
            ("sagas_parked", "parked", "Sagas parked for an operator."),
            ("sagas_timers_due", "timers_due", "Sagas with a timer due now."),
            ("sagas_outbox_unsent", "outbox_unsent", "Sagas with commands left unpublished."),
            ("sagas_oldest_active_seconds", "oldest_active_seconds", "Oldest active saga's age."),
        ):
            yield GaugeMetricFamily(metric, text, value=stats[key])


def registry(gauges: Callable[[], dict[str, Any]] | None = None) -> CollectorRegistry:
    """What one scrape shows: every process's values (multiprocess mode) or this process's,
    and the store-wide gauges when ``gauges`` is given."""
    if multiprocess_dir():
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
    else:
        reg = CollectorRegistry()
        reg.register(_Forward(REGISTRY))
    if gauges is not None:
        reg.register(_Gauges(gauges))
    return reg


def serve(
    port: int, host: str = "127.0.0.1", gauges: Callable[[], dict[str, Any]] | None = None
) -> Any:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns (server, thread)."""
    return start_http_server(port, addr=host, registry=registry(gauges))


def wsgi_app(gauges: Callable[[], dict[str, Any]] | None = None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the metrics page (mount it at ``/metrics``)."""
    app: Callable[..., Iterable[bytes]] = make_wsgi_app(registry(gauges))
    return app


def asgi_app(gauges: Callable[[], dict[str, Any]] | None = None) -> Callable[..., Any]:
    """An ASGI app serving the metrics page (mount it at ``/metrics``)."""
    app: Callable[..., Any] = make_asgi_app(registry(gauges))
    return app
