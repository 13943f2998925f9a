"""The sweeper: one pass repairs what it can and escalates what it cannot.

Run by beat every ``sweep_interval`` seconds. Per class of trouble:

- a timer is due (retry wait over, step or compensation timed out — an orphaned command —, saga
  deadline passed): fire it (``Wake``), which retries, times out or compensates per the policy;
- commands committed but not published (a crash between commit and publish): re-publish them;
- an active saga without progress for ``stuck_after`` seconds that its timers do not move (a
  parked compensation, an outbox the broker keeps refusing, a stalled choreography): escalate it
  once per (saga, reason, version) — a ``saga_escalated`` history row, an error log, the
  ``sagas_escalated_total`` counter and, if configured, a message to ``escalation_task``.

Two beats at once are safe: each saga is handled under its row lock with ``SKIP LOCKED`` or by
compare-and-set, a ``Wake`` with nothing due changes nothing, and an escalation is claimed in
the store before it is sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import coordinator, faults, retention
from .choreography import runner
from .definition import get_orchestrated
from .errors import SagaError, VersionUnavailable
from .observability import escape, get_logger, metrics, saga_context
from .runtime import Runtime
from .state import HistoryKind, SagaKind, StepState
from .store import SagaRecord
from .transport import send_escalation

log = get_logger("sagas.sweeper")
STUCK_FORWARD = "stuck forward: no progress"
ESCALATED = "escalated:"  # ledger keys escalated:<lock_version>:<reason>


def waiting_for_signal(rt: Runtime, record: SagaRecord) -> bool:
    """Is the saga at a wait step whose timeout has not passed yet?"""
    if record.kind is not SagaKind.ORCHESTRATED:
        return False
    try:
        saga = get_orchestrated(record.name, record.version)
        _, status, _ = rt.store.get(record.id)
    except SagaError:
        return False  # unknown here: escalate it as any other
    return any(
        step.is_wait and s.state is StepState.RUNNING
        for step, s in zip(saga.steps, status.steps, strict=False)
    )


@dataclass
class SweepReport:
    woken: int = 0
    republished: int = 0
    escalated: int = 0
    signals: int = 0
    pruned: int = 0
    unavailable: int = 0  # due, but this process lacks its definition's version
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep(rt: Runtime) -> SweepReport:
    report = SweepReport()
    due = rt.store.due_kinds(rt.settings.sweep_batch)
    faults.hit("sweeper.after_select")
    for saga_id, kind in due:
        try:
            match kind:
                case SagaKind.CHOREOGRAPHED:
                    woke = runner.wake(saga_id, rt=rt)
                case SagaKind.ORCHESTRATED:
                    woke = coordinator.wake(saga_id, rt=rt, skip_locked=True) is not None
            if woke:
                report.woken += 1
        except VersionUnavailable as exc:
            # Expected while a deploy rolls: a process that has the version wakes it (and
            # stuck detection escalates a version nobody has). Not an error each pass.
            report.unavailable += 1
            log.debug("sweeper left saga %s to a process with its version: %s", saga_id, exc)
        except SagaError as exc:
            report.errors += 1
            log.error("sweeper could not wake saga %s: %s", saga_id, escape(exc))
    grace = rt.settings.outbox_grace
    for saga_id, kind in rt.store.unsent_kinds(grace, rt.settings.sweep_batch):
        try:
            match kind:
                case SagaKind.CHOREOGRAPHED:
                    report.republished += runner.republish(saga_id, grace, rt=rt)
                case SagaKind.ORCHESTRATED:
                    report.republished += coordinator.republish(saga_id, grace, rt=rt)
        except SagaError as exc:
            report.errors += 1
            log.error("sweeper could not re-publish for saga %s: %s", saga_id, escape(exc))
    report.signals = deliver_kept_signals(rt)
    report.escalated = escalate(rt)
    if rt.settings.retention is not None:
        try:
            pruned = retention.prune(
                rt.store, rt.settings.retention, batch=rt.settings.retention_batch, max_batches=1
            )
            report.pruned = pruned.deleted
        except SagaError as exc:
            report.errors += 1
            log.error("sweeper could not prune finished sagas: %s", escape(exc))
    return report


def deliver_kept_signals(rt: Runtime) -> int:
    """Deliver signals kept past the outbox grace to sagas that now wait for them (their
    sender died between keeping and delivering). Returns how many were delivered."""
    delivered = 0
    for saga_id, name in rt.store.kept_signals(rt.settings.outbox_grace, rt.settings.sweep_batch):
        try:
            record, status, _ = rt.store.get(saga_id)
            saga = get_orchestrated(record.name, record.version)
            step = saga.wait_step(name)
            if status.steps[step.index].state is StepState.RUNNING:
                outcome = coordinator.take_kept_signal(rt, saga, saga_id, step.index)
                delivered += outcome == "delivered"
        except SagaError as exc:
            log.error("sweeper could not deliver a signal to saga %s: %s", saga_id, escape(exc))
    return delivered


def escalate(rt: Runtime) -> int:
    """Escalate stuck sagas not escalated before in their current version. Returns how many."""
    sent = 0
    # Sagas escalated (or found waiting) in their current version are skipped by the query
    # itself: if the page held them, the same oldest ones would fill it every pass and the
    # rest would never be escalated (seen with 1,000 stuck sagas and a batch of 200).
    stuck = rt.store.stuck(rt.settings.stuck_after, rt.settings.sweep_batch, unmarked=ESCALATED)
    for record, why in stuck:
        if why == STUCK_FORWARD and waiting_for_signal(rt, record):
            # Idle by design until its signal or its timeout (a durable timer); either writes
            # the saga, and the new version is looked at again.
            rt.store.mark_once(record.id, f"{ESCALATED}{record.lock_version}:waiting")
            continue
        key = f"{ESCALATED}{record.lock_version}:{why}"[:200]
        if not rt.store.note_once(record.id, key, HistoryKind.SAGA_ESCALATED, {"reason": why}):
            continue  # already escalated (by us or another beat) in this version
        sent += 1
        metrics.inc("sagas_escalated_total", saga=record.name, reason=why)
        with saga_context(
            saga=record.name, saga_id=record.id, correlation_id=record.correlation_id
        ):
            log.error("saga escalated to an operator: %s (state %s)", why, record.state.value)
            task = rt.settings.escalation_task
            if task:
                try:
                    send_escalation(
                        rt.celery,
                        task,
                        {
                            "saga_id": record.id,
                            "saga": record.name,
                            "state": record.state.value,
                            "reason": why,
                            "correlation_id": record.correlation_id,
                        },
                    )
                except Exception as exc:  # noqa: BLE001 - the history row and log remain
                    log.error("escalation task %s not sent: %s", task, escape(exc))
    return sent
