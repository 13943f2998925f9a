"""Operator actions with provenance: the same calls serve the CLI, a dashboard and scripts.

Each action is previewed first and carried out second::

    plan = sagas.preview("order-1", "cancel", reason="customer called", by="ana")
    print(plan.text())            # "will compensate charge_payment, then reserve_inventory"
    sagas.carry_out(plan)         # refused (SagaChanged) if the saga moved since the preview

or in one call (``sagas.cancel("order-1", reason=..., by=...)``), which previews and carries
out at once. Every action records who (``by``; the OS user when not given) and why (``reason``)
in the saga's history; ``revision=`` (the saga's revision as the operator saw it, shown by
``saga show`` and ``SagaInfo.revision``) refuses the action if the saga changed since.

A plan is made by the pure core (``sagas.recovery``) from the saga's current revision and is
carried out against that same revision, so what an operator confirmed is what happens.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from . import coordinator
from .definition import Saga
from .errors import (
    ActionRefused,
    PayloadInvalid,
    SagaError,
    SagaInputError,
    SagaNotFound,
    StepUnknown,
)
from .machine import Event, HistoryRecord, Rerun
from .payload import check_saga_id, validate_payload
from .recovery import (
    ActionPlan,
    ForkDetail,
    dropped_paths,
    edited_payload,
    operator_event,
    payload_diff,
    plan_action,
    plan_fork,
)
from .runtime import Runtime, get_runtime
from .state import HistoryKind, OperatorAction, SagaKind, SagaState
from .store import Snapshot

BULK_ACTIONS = frozenset({OperatorAction.RETRY, OperatorAction.CANCEL, OperatorAction.RESUME})
MAX_REASON = 500  # characters of a reason kept in the history


def default_actor() -> str:
    """Who acts when nobody said: the OS user of this process."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (some containers)
        return "unknown"


def preview(
    saga_id: str,
    action: OperatorAction | str,
    *,
    reason: str = "",
    by: str | None = None,
    revision: int | None = None,
    from_step: str | None = None,
    payload: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
    new_id: str | None = None,
    rt: Runtime | None = None,
) -> ActionPlan:
    """What ``action`` would do to ``saga_id`` now, without doing it.

    A refused action comes back with ``plan.refused`` saying why; bad input raises:
    ``SagaNotFound``, ``InvalidSagaId``, ``SagaChanged`` (not at ``revision``), and for a fork
    ``StepUnknown`` (``from_step``) and ``PayloadInvalid`` (naming the field)."""
    rt = rt or get_runtime()
    what = _action(action)
    who = _who(by, reason)
    snap, saga = _load(rt, saga_id, revision)
    record, status, now = snap.record, snap.status, snap.now()
    if what is OperatorAction.FORK:
        return _fork_plan(rt, saga, snap, from_step, payload, changes, new_id, *who)
    deadline = None
    if what is OperatorAction.RERUN and status.state is SagaState.FAILED and saga.deadline:
        deadline = now + timedelta(seconds=saga.deadline)  # the old one has passed
    event = operator_event(what, now, by=who[0], reason=who[1], deadline_at=deadline)
    plan, _ = plan_action(what, saga.plan, status, event, revision=record.lock_version)
    return plan


def carry_out(plan: ActionPlan, *, rt: Runtime | None = None) -> ActionPlan:
    """Do what ``plan`` says, on the revision it was made from. ``ActionRefused`` if the plan
    was refused, ``SagaChanged`` if the saga moved since; nothing is changed then."""
    rt = rt or get_runtime()
    if plan.refused is not None:
        raise ActionRefused(plan.text())
    if plan.fork is not None:
        _fork(rt, plan)
        return replace(plan, after=rt.store.get(plan.saga_id)[0].state)  # the original's
    event = plan.event
    assert event is not None

    def at_now(now: datetime, _saga: Saga[Any]) -> Event:
        # The event as planned, at the time of the write (the revision is the plan's).
        if isinstance(event, Rerun) and event.deadline_at is not None:
            return replace(event, at=now, deadline_at=now + (event.deadline_at - event.at))
        return replace(event, at=now)

    decision = coordinator.operator_transition(plan.saga_id, at_now, plan.action, rt, plan.revision)
    return replace(plan, after=decision.status.state)


def retry(saga_id: str, *, reason: str, by: str | None = None, revision: int | None = None,
          rt: Runtime | None = None) -> ActionPlan:  # fmt: skip
    """Run the open step's next attempt, or a parked compensation, now."""
    return _now(saga_id, OperatorAction.RETRY, reason, by, revision, rt)


def cancel(saga_id: str, *, reason: str, by: str | None = None, revision: int | None = None,
           rt: Runtime | None = None) -> ActionPlan:  # fmt: skip
    """Stop going forward and compensate what was done, newest first."""
    return _now(saga_id, OperatorAction.CANCEL, reason, by, revision, rt)


def pause(saga_id: str, *, reason: str, by: str | None = None, revision: int | None = None,
          rt: Runtime | None = None) -> ActionPlan:  # fmt: skip
    """Dispatch nothing new until ``resume`` (what is out may still answer)."""
    return _now(saga_id, OperatorAction.PAUSE, reason, by, revision, rt)


def resume(saga_id: str, *, reason: str, by: str | None = None, revision: int | None = None,
           rt: Runtime | None = None) -> ActionPlan:  # fmt: skip
    """Carry on from where the paused saga stands (whatever fell due meanwhile fires now)."""
    return _now(saga_id, OperatorAction.RESUME, reason, by, revision, rt)


def rerun(saga_id: str, *, reason: str, by: str | None = None, revision: int | None = None,
          rt: Runtime | None = None) -> ActionPlan:  # fmt: skip
    """Run a failed saga again from its failed step (or a parked step), in the same saga."""
    return _now(saga_id, OperatorAction.RERUN, reason, by, revision, rt)


def fork(
    saga_id: str,
    from_step: str,
    *,
    reason: str,
    by: str | None = None,
    payload: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
    new_id: str | None = None,
    revision: int | None = None,
    rt: Runtime | None = None,
) -> ActionPlan:
    """Start a new saga from step ``from_step`` of finished saga ``saga_id``: the steps before
    it are taken as done with their recorded results; ``payload`` replaces the original's,
    ``changes`` (``{"address.city": "Lyon"}``) edits it; both are validated by the saga's model.
    Returns the plan carried out (``plan.fork.saga_id`` is the new saga)."""
    plan = preview(
        saga_id,
        OperatorAction.FORK,
        reason=reason,
        by=by,
        revision=revision,
        from_step=from_step,
        payload=payload,
        changes=changes,
        new_id=new_id,
        rt=rt,
    )
    return carry_out(plan, rt=rt)


# -- bulk ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkItem:
    saga_id: str
    plan: ActionPlan | None  # None: the saga could not be read (``error``)
    done: bool = False
    error: str | None = None  # why it was refused or failed


@dataclass(frozen=True, slots=True)
class BulkResult:
    action: OperatorAction
    dry_run: bool
    items: tuple[BulkItem, ...] = field(default_factory=tuple)

    @property
    def done(self) -> int:
        return sum(1 for i in self.items if i.done)

    @property
    def refused(self) -> int:
        return sum(1 for i in self.items if i.error is not None)

    @property
    def planned(self) -> int:
        """How many would be acted on (a dry run) or were (``done``)."""
        return sum(1 for i in self.items if i.error is None)


def bulk(
    action: OperatorAction | str,
    saga_ids: Iterable[str],
    *,
    reason: str,
    by: str | None = None,
    dry_run: bool = False,
    progress: Callable[[BulkItem], None] | None = None,
    rt: Runtime | None = None,
) -> BulkResult:
    """``retry``, ``cancel`` or ``resume`` each saga of ``saga_ids`` (any iterable: a list, or
    a query's selection), each on the revision its own plan was made from. A saga that cannot
    take the action is reported in its item and the others go on. ``dry_run`` only plans."""
    rt = rt or get_runtime()
    what = _action(action)
    if what not in BULK_ACTIONS:
        names = ", ".join(sorted(a.value for a in BULK_ACTIONS))
        raise SagaInputError(
            f"bulk action must be one of {names}, not {what.value!r}", field="action"
        )
    who = _who(by, reason)
    items = []
    for sid in saga_ids:
        item = _bulk_one(rt, what, sid, who, dry_run)
        items.append(item)
        if progress is not None:
            progress(item)
    return BulkResult(what, dry_run, tuple(items))


def _bulk_one(
    rt: Runtime, what: OperatorAction, sid: str, who: tuple[str, str], dry_run: bool
) -> BulkItem:
    try:
        plan = preview(sid, what, by=who[0], reason=who[1], rt=rt)
    except SagaError as exc:
        return BulkItem(sid, None, error=str(exc))
    if plan.refused is not None:
        return BulkItem(sid, plan, error=plan.refused)
    if dry_run:
        return BulkItem(sid, plan)
    try:
        carry_out(plan, rt=rt)
    except SagaError as exc:
        return BulkItem(sid, plan, error=str(exc))
    return BulkItem(sid, plan, done=True)


# -- helpers ---------------------------------------------------------------------------------------


def _now(
    saga_id: str,
    action: OperatorAction,
    reason: str,
    by: str | None,
    revision: int | None,
    rt: Runtime | None,
) -> ActionPlan:
    plan = preview(saga_id, action, reason=reason, by=by, revision=revision, rt=rt)
    return carry_out(plan, rt=rt)


def _action(action: OperatorAction | str) -> OperatorAction:
    try:
        return OperatorAction(action)
    except ValueError:
        names = ", ".join(a.value for a in OperatorAction)
        raise SagaInputError(
            f"unknown action {action!r} (one of {names})", field="action"
        ) from None


def _who(by: str | None, reason: str) -> tuple[str, str]:
    if not isinstance(reason, str) or not reason.strip():
        raise SagaInputError("a reason is required (it is recorded in the history)", field="reason")
    actor = (by if by is not None else default_actor()).strip()
    if not actor or len(actor) > 128:
        raise SagaInputError("by: 1 to 128 characters naming who acts", field="by")
    return actor, reason.strip()[:MAX_REASON]


def _load(rt: Runtime, saga_id: str, revision: int | None) -> tuple[Snapshot, Saga[Any]]:
    check_saga_id(saga_id, field="saga_id")
    snap = rt.store.load(saga_id)
    if snap is None:
        raise SagaNotFound(f"no saga with id {saga_id!r}")
    if snap.record.kind is not SagaKind.ORCHESTRATED:
        raise ActionRefused(f"saga {saga_id!r} is a choreography: its services act on events")
    coordinator.check_revision(snap.record, revision)
    return snap, coordinator.definition_of(snap.record, snap.status)


def _fork_plan(
    rt: Runtime,
    saga: Saga[Any],
    snap: Snapshot,
    from_step: str | None,
    payload: dict[str, Any] | None,
    changes: dict[str, Any] | None,
    new_id: str | None,
    by: str,
    reason: str,
) -> ActionPlan:
    record = snap.record
    if from_step is None:
        raise StepUnknown("a fork needs the step to start from", field="from_step", saga=saga.name)
    try:
        index = saga.plan.index(from_step)
    except KeyError:
        names = ", ".join(s.name for s in saga.plan.steps)
        raise StepUnknown(
            f"saga {saga.name!r} has no step {from_step!r} (its steps: {names})",
            field="from_step",
            saga=saga.name,
        ) from None
    edits = dict(changes or {})
    edited = edited_payload(payload if payload is not None else record.payload, edits)
    settings = rt.settings
    data = validate_payload(
        saga.payload_model,
        edited,
        saga=saga.name,
        max_bytes=settings.max_payload_bytes,
        max_depth=settings.max_payload_depth,
    )
    for path in dropped_paths(edits, data):
        raise PayloadInvalid(
            f"payload for saga {saga.name!r}: {path!r} is not a field of "
            f"{saga.payload_model.__name__}",
            field=f"payload.{path}",
            saga=saga.name,
        )
    if new_id is None:
        new_id = f"{record.id}.fork{len(rt.store.forks_of(record.id)) + 1}"
        if len(new_id) > 128:
            new_id = f"fork-{uuid.uuid4().hex}"  # a long id has no room for a suffix
    check_saga_id(new_id, field="new_id")
    diff = payload_diff(record.payload, data)
    reused = tuple(s.name for s in snap.status.steps[:index])
    detail = ForkDetail(new_id, from_step, reused, data, diff, index, by, reason)
    return plan_fork(saga.plan, snap.status, index, detail, revision=record.lock_version)


def _fork(rt: Runtime, plan: ActionPlan) -> None:
    detail = plan.fork
    assert detail is not None
    _, saga = _load(rt, plan.saga_id, plan.revision)
    common = {"step": detail.from_step, "by": detail.by, "reason": detail.reason}
    history_from = HistoryRecord(
        HistoryKind.FORKED_FROM,
        detail={"saga_id": plan.saga_id, **common, "reused": list(detail.reused),
                "changes": detail.changes},
    )  # fmt: skip
    history_to = HistoryRecord(
        HistoryKind.FORKED_TO,
        detail={"saga_id": detail.saga_id, **common, "changes": detail.changes},
    )
    coordinator.fork(
        rt, saga, plan.saga_id, plan.revision, detail.saga_id, detail.payload,
        detail.from_index, history_from, history_to,
    )  # fmt: skip
