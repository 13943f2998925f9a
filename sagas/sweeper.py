"""The sweeper: one pass fires every due timer and re-publishes unsent commands.

Run by beat every ``sweep_interval`` seconds. Two beats at once are safe: each saga is handled
under its row lock with ``SKIP LOCKED``, and a ``Wake`` with nothing due changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import coordinator, faults
from .errors import SagaError
from .observability import escape, get_logger
from .runtime import Runtime

log = get_logger("sagas.sweeper")


@dataclass
class SweepReport:
    woken: int = 0
    republished: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep(rt: Runtime) -> SweepReport:
    report = SweepReport()
    due = rt.store.due_kinds(rt.settings.sweep_batch)
    faults.hit("sweeper.after_select")
    for saga_id, kind in due:
        try:
            if kind == "choreographed":
                from . import eventbus

                woke = eventbus.wake(saga_id, rt=rt)
            else:
                woke = coordinator.wake(saga_id, rt=rt, skip_locked=True) is not None
            if woke:
                report.woken += 1
        except SagaError as exc:
            report.errors += 1
            log.error("sweeper could not wake saga %s: %s", saga_id, escape(exc))
    for saga_id in rt.store.unsent(rt.settings.outbox_grace, rt.settings.sweep_batch):
        try:
            report.republished += coordinator.republish(saga_id, rt.settings.outbox_grace, rt=rt)
        except SagaError as exc:
            report.errors += 1
            log.error("sweeper could not re-publish for saga %s: %s", saga_id, escape(exc))
    return report
