"""``saga doctor``: is this deployment able to run sagas? One line per check, what is wrong.

Checks, in order: the store is reachable and migrated to head; the broker is reachable; every
queue the registered sagas need (the coordinator's, each step's and compensation's, each
choreography service's event queue) is consumed by a running worker; the sweeper runs (no timer
overdue by more than a few sweep periods). Checks that need the Celery app are skipped, and
say so, when none is given.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import choreographies
from .choreography.definition import event_queue_name
from .definition import orchestrated_sagas
from .errors import SagaError
from .settings import Settings, mask_url
from .store import Store
from .store.migrate import current_revision, head_revision
from .transport import CeleryApp, broker_reachable, queues_consumed

OVERDUE_PERIODS = 3  # a timer due for longer than this many sweep periods: no sweeper is running


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool | None  # None: skipped
    what: str
    detail: str

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        return f"{mark}  {self.what}: {self.detail}"


def needed_queues(coordinator_queue: str) -> dict[str, set[str]]:
    """queue -> the sagas that need it consumed."""
    needed: dict[str, set[str]] = {coordinator_queue: {"the coordinator"}}
    for saga in orchestrated_sagas().values():
        for step in saga.steps:
            if step.is_wait:
                continue  # a wait runs no task: its signal comes through the store
            needed.setdefault(step.queue, set()).add(saga.name)
            if step.compensable:
                needed.setdefault(step.compensation_queue, set()).add(saga.name)
    for choreo in choreographies():
        for handler in choreo.handlers:
            needed.setdefault(event_queue_name(handler.service), set()).add(choreo.name)
    return needed


def run(settings: Settings, store: Store, app: CeleryApp | None) -> list[Check]:
    checks = [_store(settings, store)]
    if checks[0].ok is False:
        return checks
    if app is None:
        skip = "no --app given (or SAGAS_CELERY_APP)"
        checks += [Check(None, w, skip) for w in ("broker", "queues")]
    else:
        broker = _broker(app)
        checks.append(broker)
        if broker.ok:
            checks.extend(_queues(app, settings))
    checks.append(_sweeper(settings, store))
    return checks


def _store(settings: Settings, store: Store) -> Check:
    where = mask_url(settings.database_url)
    try:
        store.ping()
        current = current_revision(store.engine, settings)
    except SagaError as exc:
        return Check(False, "store", str(exc).splitlines()[0])
    head = head_revision()
    if current != head:
        return Check(
            False, "store", f"{where} at revision {current}, not {head}: run saga db upgrade"
        )
    return Check(True, "store", f"{where} at revision {head}")


def _broker(app: CeleryApp) -> Check:
    url = mask_url(str(app.conf.broker_url))
    try:
        broker_reachable(app)
    except Exception as exc:  # noqa: BLE001 - kombu/amqp/redis errors vary by transport
        return Check(False, "broker", f"{url} unreachable: {type(exc).__name__}: {exc}")
    return Check(True, "broker", f"{url} reachable")


# Replies to ``inspect`` arrive within the window or not at all; a busy worker, or a polling
# transport (filesystem://, SQS), can miss a short one. Ask again with a longer window before
# saying a queue has no consumer.
INSPECT_WINDOWS = (2.0, 5.0)


def _queues(app: CeleryApp, settings: Settings) -> list[Check]:
    needed = needed_queues(settings.coordinator_queue)
    consumed: dict[str, set[str]] = {}
    for window in INSPECT_WINDOWS:
        for worker, queues in queues_consumed(app, timeout=window).items():
            consumed.setdefault(worker, set()).update(queues)
        if set(needed) <= set().union(*consumed.values()):
            break
    served = set().union(*consumed.values()) if consumed else set()
    out = []
    for queue, users in sorted(needed.items()):
        if queue in served:
            workers = sorted(w for w, qs in consumed.items() if queue in qs)
            out.append(Check(True, f"queue {queue}", f"consumed by {', '.join(workers)}"))
        else:
            needs = ", ".join(sorted(users))
            out.append(Check(False, f"queue {queue}", f"no running worker consumes it ({needs})"))
    return out


def _sweeper(settings: Settings, store: Store) -> Check:
    overdue = store.oldest_overdue()
    limit = OVERDUE_PERIODS * settings.sweep_interval
    if overdue is not None and overdue > max(limit, settings.outbox_grace):
        return Check(
            False,
            "sweeper",
            f"a timer has been due for {overdue:.0f}s (sweep interval {settings.sweep_interval}s): "
            "is beat running sagas.sweep?",
        )
    return Check(True, "sweeper", "no timer overdue")
