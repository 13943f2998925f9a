"""The test runtime: the real engine in one thread, on a fake clock, with no servers.

    with local_runtime(app) as rt:                       # or the ``saga_runtime`` fixture
        saga_id = rt.start(order_fulfillment, payload)   # runs until nothing is left to do now
        rt.wait(saga_id)                                 # skips fake time to each due timer
        assert_completed(saga_id)

Everything the engine does runs for real: the coordinator, the participants' step tasks
(through Celery's task tracer), the sweeper and a SQLite store. Only the broker is replaced
(``InProcessBroker``: a FIFO drained in the test's thread) and time is a ``FakeClock``:

- ``rt.advance(timedelta(hours=1))`` moves the clock through every timer that falls due on the
  way — a retry's backoff, a step's timeout, the saga's deadline, an outbox left unsent — and
  at each one runs what would happen then: countdown messages become ready at their time, and
  the sweeper passes at its next period (``sweep_interval``), as beat would run it;
- ``rt.wait(saga_id)`` does that by itself: whenever nothing is left to run it skips to the
  next due timer, until the saga finished (a one-hour deadline takes milliseconds).

A single thread makes every run reproducible: the same test runs the same messages in the same
order, which is what lets ``explore`` name a crash point and replay it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .. import sweeper
from ..catalog import get_saga
from ..clock import FakeClock
from ..definition import Startable
from ..errors import ConfigurationError, SagaError, SagaNotFound
from ..install import configure
from ..report import timeline
from ..runtime import Runtime, reset
from ..settings import Settings
from ..state import SagaState
from ..store import SagaRecord, Store
from ..store.migrate import upgrade
from .broker import InProcessBroker, WorkerCrash
from .embedded import private_database

DEFAULT_HORIZON = timedelta(days=30)  # ``wait`` gives up skipping time past this


class SagaStuck(SagaError, AssertionError):
    """The saga did not finish: nothing left to run and no timer due within the horizon."""


@dataclass
class LocalRuntime:
    """The running test runtime (see the module docstring)."""

    runtime: Runtime
    broker: InProcessBroker
    clock: FakeClock
    started_at: datetime
    max_steps: int = 100_000
    sweeps: int = 0
    _driving: bool = False
    started: list[str] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def app(self) -> Any:
        return self.broker.app

    # -- starting and running -----------------------------------------------------------------

    def start(
        self,
        saga: Startable[Any] | str,
        payload: Any,
        *,
        saga_id: str | None = None,
        correlation_id: str | None = None,
        run: bool = True,
    ) -> str:
        """Start ``saga`` (a definition or its name) and, with ``run``, run it until nothing
        is left to do without time passing. Returns the saga id."""
        definition = get_saga(saga) if isinstance(saga, str) else saga
        sid = saga_id or f"test-{uuid.uuid4().hex[:16]}"
        handle = definition.start(payload, saga_id=sid, correlation_id=correlation_id)
        self.started.append(str(handle))
        if run:
            self.run()
        return str(handle)

    def run(self) -> int:
        """Deliver messages until none is ready (time does not move). Returns how many ran."""
        ran = 0
        while self.broker.deliver() is not None:
            ran += 1
            if ran > self.max_steps:
                pending = ", ".join(m.describe() for m in self.broker.pending()[:5])
                raise SagaStuck(f"{ran} messages without settling (a loop?): {pending}")
        return ran

    def sweep(self) -> None:
        """One sweeper pass now (what beat runs every ``sweep_interval``)."""
        self.sweeps += 1
        try:
            sweeper.sweep(self.runtime)
        except WorkerCrash:
            pass  # beat's process died mid-pass (a test's fault): the next period sweeps again

    def advance(self, delta: timedelta | float) -> datetime:
        """Move the fake clock forward, firing every timer on the way (``FakeClock.advance``)."""
        return self.clock.advance(delta)

    def _drive(self, target: datetime) -> None:
        """The clock's driver: step to each due timer up to ``target``, running what it starts.

        Called from inside a task (a step that "takes" an hour), it only moves the clock and
        sweeps; what that publishes runs when the task is over, as with a real worker."""
        if self._driving:
            self.clock.set(target)
            self.broker.release_due()
            self.sweep()
            return
        self._driving = True
        try:
            self.run()
            while True:
                when = self.next_event()
                if when is None or when > target:
                    break
                self._fire(max(when, self.clock.now()))
            # Beat would have swept in between: a pass at the end sees what time made due
            # (an escalation past ``stuck_after``); with nothing due it changes nothing.
            self._fire(target, sweep=True)
        finally:
            self._driving = False

    def _fire(self, when: datetime, *, sweep: bool | None = None) -> None:
        """Be at ``when``: ready the messages due, sweep if beat would now, run the rest."""
        self.clock.set(when)
        self.broker.release_due()
        if sweep if sweep is not None else self._tick_at_or_after(when) == when:
            self.sweep()
        self.run()

    def next_event(self) -> datetime | None:
        """When something next happens by itself: a countdown message becomes ready, or the
        sweeper's first pass after a stored timer is due (None: nothing scheduled)."""
        due = self.store.next_due(self.settings.outbox_grace)
        times = [self.broker.next_due()]
        if due is not None:
            times.append(self._tick_at_or_after(max(due, self.clock.now())))
        found = [t for t in times if t is not None]
        return min(found) if found else None

    def _tick_at_or_after(self, when: datetime) -> datetime:
        """The sweeper's first period boundary at or after ``when`` (beat runs it on a grid)."""
        period = self.settings.sweep_interval
        elapsed = (when - self.started_at).total_seconds()
        ticks = math.ceil(elapsed / period - 1e-9)
        return self.started_at + timedelta(seconds=ticks * period)

    def wait(
        self,
        saga_id: str,
        *,
        states: Iterable[SagaState] = (SagaState.COMPLETED, SagaState.FAILED),
        parked: bool = True,
        horizon: timedelta = DEFAULT_HORIZON,
    ) -> SagaRecord:
        """Run, skipping fake time to each next timer, until the saga is in one of ``states``
        (or parked for an operator, if ``parked``). ``SagaStuck`` with its timeline if it
        cannot get there within ``horizon`` of fake time."""
        wanted = set(states)
        limit = self.clock.now() + horizon
        while True:
            self.run()
            record = self._record(saga_id)
            if record is not None and (record.state in wanted or (parked and record.parked)):
                return record
            when = self.next_event()
            if when is None or when > limit:
                why = "nothing scheduled" if when is None else f"next timer {when} past horizon"
                raise SagaStuck(
                    f"saga {saga_id!r} did not reach {sorted(s.value for s in wanted)}: "
                    f"idle, {why}\n{self.timeline(saga_id)}"
                )
            self.advance(max((when - self.clock.now()).total_seconds(), 0.0))

    def settle(self, saga_ids: Iterable[str] | None = None) -> None:
        """``wait`` for each saga (default: every one this runtime started)."""
        for sid in list(saga_ids if saga_ids is not None else self.started):
            self.wait(sid)

    # -- reading ------------------------------------------------------------------------------

    def _record(self, saga_id: str) -> SagaRecord | None:
        try:
            return self.store.get(saga_id)[0]
        except SagaNotFound:
            return None

    def timeline(self, saga_id: str) -> str:
        """The saga's step table and history, as ``saga show`` prints it."""
        try:
            return timeline(*self.store.get(saga_id))
        except SagaNotFound:
            return f"(no saga {saga_id!r} in the store)"


@contextmanager
def local_runtime(
    app: Any,
    *,
    clock: FakeClock | None = None,
    database_url: str | None = None,
    settings: Settings | None = None,
    consume: Iterable[str] | None = None,
    **overrides: Any,
) -> Iterator[LocalRuntime]:
    """Configure sagas on ``app`` with a fake clock, a fresh SQLite store (a temporary file
    unless ``database_url`` names one) and the in-process broker; undone on exit.

    ``settings`` (or keyword ``overrides`` of ``Settings`` fields, e.g.
    ``local_transitions=False``) tune the engine as in production. ``consume``: the queues the
    in-process worker stands for — a step on one of them runs inline in the task before it, as
    on a worker consuming that queue (default: only the coordinator's: one worker per service,
    every step its own message)."""
    clock = clock or FakeClock()
    base = settings or Settings(sweep_interval=5.0)
    with private_database(database_url or (settings.database_url if settings else None)) as url:
        if not url.startswith("sqlite"):
            raise ConfigurationError(
                f"local_runtime runs on SQLite only (got {url.split(':', 1)[0]}): the fake clock "
                "replaces the database clock, which PostgreSQL does not allow",
                setting="database_url",
            )
        final = base.model_copy(update={"database_url": url, **overrides})
        store = Store(final.database_url_sqlalchemy, clock=clock)
        upgrade(store.engine)
        app.loader.import_default_modules()
        app.conf.task_always_eager = False
        broker = InProcessBroker(app, clock)
        broker.install()
        queues = app.amqp.queues
        consumed_before = queues._consume_from  # restored on exit: the app outlives the test
        queues.select([final.coordinator_queue, *(consume or ())])
        try:
            rt = configure(settings=final, store=store, app=app)
            local = LocalRuntime(rt, broker, clock, clock.now())
            clock.drive(local._drive)
            try:
                yield local
            finally:
                clock.drive(None)
        finally:
            queues._consume_from = consumed_before
            broker.uninstall()
            store.dispose()
            reset()  # the next test (or get_runtime) starts from scratch
