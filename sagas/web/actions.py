"""The dashboard's operator actions, by name: each is previewed (a plan the operator reads and
confirms) and then carried out on the saga's revision the operator saw.

An action is any object with ``name``, ``label``, ``preview`` and ``carry_out``; ``ACTIONS``
maps names to them and ``register`` adds one, so pause, resume, rerun or fork (with its own
preview) plug in by name without touching the pages: the saga page offers every registered
action, ``/sagas/{id}/actions/{name}`` shows its plan and ``POST`` to the same address carries it
out. The two built in here wrap today's ``coordinator.retry`` and ``coordinator.cancel``; their
plans come from the pure core: the decision the action would make now, and for a cancel the
compensations that would follow it, simulated step by step with ``decide``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import coordinator, operations
from ..definition import Saga, get_orchestrated
from ..errors import ActionRefused, SagaInputError, SagaNotFound
from ..machine import (
    Cancel,
    Decision,
    Dispatch,
    Event,
    Retry,
    SagaStatus,
    StepSucceeded,
    decide,
    why_no_cancel,
)
from ..runtime import Runtime
from ..state import Action as StepAction
from ..state import OperatorAction, SagaState
from ..store import Snapshot


@dataclass(frozen=True, slots=True)
class Plan:
    """What an action would do, as the operator reads it before confirming."""

    action: str
    saga_id: str
    revision: int  # the saga's lock_version the plan was made from
    lines: tuple[str, ...] = ()
    refused: str | None = None  # why it cannot happen now (nothing would change)
    extra: Mapping[str, Any] = field(default_factory=dict)  # an action's own (fork: the diff)


@dataclass(frozen=True, slots=True)
class Landed:
    """What an action that made another saga returns: the page shows that saga next."""

    message: str
    saga_id: str


class DashboardAction(Protocol):
    name: str
    label: str
    danger: bool  # runs compensations or re-runs effects (the button is red)
    states: frozenset[SagaState]  # offered on sagas in these states

    def preview(
        self, rt: Runtime, saga_id: str, revision: int, form: Mapping[str, str], by: str
    ) -> Plan:
        """The plan; ``SagaChanged`` if the saga is not at ``revision``; never writes."""
        ...

    def carry_out(
        self, rt: Runtime, plan: Plan, form: Mapping[str, str], by: str, reason: str
    ) -> str | Landed:
        """Do it on ``plan.revision`` (``SagaChanged``/``ActionRefused``: nothing done);
        returns what happened, in one line (``Landed``: and the saga it made)."""
        ...


def load(rt: Runtime, saga_id: str, revision: int) -> tuple[Snapshot, Saga[Any]]:
    """The saga at ``revision`` and its definition (``SagaChanged``, ``SagaNotFound``,
    ``UnknownSaga`` when this process does not define it)."""
    snap = rt.store.load(saga_id)
    if snap is None:
        raise SagaNotFound(f"no saga with id {saga_id!r}")
    coordinator.check_revision(snap.record, revision)
    return snap, get_orchestrated(snap.record.name, snap.record.version)


def _name(saga: Saga[Any], step: int) -> str:
    return saga.plan.steps[step].name


def _sequence(names: list[list[str]]) -> str:
    return ", then ".join(
        " and ".join(group) + (" together" if len(group) > 1 else "") for group in names
    )


def compensation_waves(saga: Saga[Any], decision: Decision) -> list[list[str]]:
    """The compensations ``decision`` starts and those that would follow each succeeding, in
    order (a wave is dispatched at once: a parallel group's branches)."""
    waves: list[list[str]] = []
    status: SagaStatus = decision.status
    pending = [c for c in decision.commands if isinstance(c, Dispatch)]
    seen: set[int] = set()
    for _ in range(len(saga.plan.steps) + 1):
        wave = [c for c in pending if c.action is StepAction.COMPENSATE and c.step not in seen]
        if not wave:
            break
        waves.append([_name(saga, c.step) for c in wave])
        nxt: list[Dispatch] = []
        for c in wave:
            seen.add(c.step)
            d = decide(saga.plan, status, StepSucceeded(c.step, c.attempt, c.action, c.deadline_at))
            status = d.status
            nxt.extend(x for x in d.commands if isinstance(x, Dispatch))
        pending = nxt
    return waves


ACTIVE = frozenset({SagaState.STARTED, SagaState.PENDING, SagaState.COMPENSATING})


class _Builtin:
    name = ""
    label = ""
    danger = True
    states = ACTIVE

    def event(self, snap: Snapshot, by: str, reason: str) -> Event:
        raise NotImplementedError

    def describe(self, saga: Saga[Any], snap: Snapshot, decision: Decision) -> tuple[str, ...]:
        raise NotImplementedError

    def refusal(self, saga: Saga[Any], status: SagaStatus) -> str:
        return f"the saga is {status.state.value}: nothing to {self.name}"

    def preview(
        self, rt: Runtime, saga_id: str, revision: int, form: Mapping[str, str], by: str
    ) -> Plan:
        snap, saga = load(rt, saga_id, revision)
        decision = decide(saga.plan, snap.status, self.event(snap, by, ""))
        if not decision.changed:
            return Plan(self.name, saga_id, revision, refused=self.refusal(saga, snap.status))
        return Plan(self.name, saga_id, revision, self.describe(saga, snap, decision))

    def carry_out(
        self, rt: Runtime, plan: Plan, form: Mapping[str, str], by: str, reason: str
    ) -> str:
        if plan.refused is not None:
            raise ActionRefused(plan.refused)
        decision = self.run(rt, plan, by, reason)
        return f"{self.name}: saga {plan.saga_id} is now {decision.status.state.value}"

    def run(self, rt: Runtime, plan: Plan, by: str, reason: str) -> Decision:
        raise NotImplementedError


class RetryAction(_Builtin):
    name = "retry"
    label = "Retry"
    danger = True

    def event(self, snap: Snapshot, by: str, reason: str) -> Event:
        return Retry(snap.now(), reason, by)

    def describe(self, saga: Saga[Any], snap: Snapshot, decision: Decision) -> tuple[str, ...]:
        lines = []
        for c in decision.commands:
            if not isinstance(c, Dispatch):
                continue
            step = _name(saga, c.step)
            if c.action is StepAction.COMPENSATE:
                lines.append(f"will retry the compensation of {step} (attempt {c.attempt})")
            else:
                lines.append(
                    f"will re-run {step} (attempt {c.attempt}) with the same idempotency key"
                )
        return tuple(lines) or ("will re-drive the saga",)

    def run(self, rt: Runtime, plan: Plan, by: str, reason: str) -> Decision:
        return coordinator.retry(plan.saga_id, reason, rt=rt, by=by, revision=plan.revision)


class CancelAction(_Builtin):
    name = "cancel"
    label = "Cancel"
    danger = True
    states = frozenset({SagaState.STARTED, SagaState.PENDING})

    def event(self, snap: Snapshot, by: str, reason: str) -> Event:
        return Cancel(snap.now(), reason or "cancelled by an operator", by)

    def refusal(self, saga: Saga[Any], status: SagaStatus) -> str:
        return why_no_cancel(saga.plan, status) or super().refusal(saga, status)

    def describe(self, saga: Saga[Any], snap: Snapshot, decision: Decision) -> tuple[str, ...]:
        waves = compensation_waves(saga, decision)
        running = [
            s.name
            for s in snap.status.steps
            if s.in_flight and s.name not in {n for w in waves for n in w}
        ]
        lines = ["will stop going forward"]
        if waves:
            lines.append("will compensate " + _sequence(waves))
        if running:
            lines.append(
                "will compensate " + ", ".join(running) + " too once it answers (it is running)"
            )
        if not waves and not running:
            lines.append("nothing was done that needs compensating: the saga fails at once")
        return tuple(lines)

    def run(self, rt: Runtime, plan: Plan, by: str, reason: str) -> Decision:
        return coordinator.cancel(plan.saga_id, reason, rt=rt, by=by, revision=plan.revision)


class Recovery:
    """An operator action of ``sagas.operations`` (pause, resume, rerun) on the dashboard: its
    own plan (``operations.preview``), carried out on the plan's revision."""

    danger = True

    def __init__(self, action: OperatorAction, label: str, states: frozenset[SagaState]) -> None:
        self.action, self.name, self.label, self.states = action, action.value, label, states

    def _plan(self, rt: Runtime, saga_id: str, revision: int, by: str, reason: str) -> Any:
        return operations.preview(
            saga_id, self.action, reason=reason, by=by, revision=revision, rt=rt
        )

    def preview(
        self, rt: Runtime, saga_id: str, revision: int, form: Mapping[str, str], by: str
    ) -> Plan:
        # operations.preview wants a reason; the confirmation asks for the real one.
        found = self._plan(rt, saga_id, revision, by, "preview")
        return Plan(self.name, saga_id, revision, tuple(found.lines), found.refused)

    def carry_out(
        self, rt: Runtime, plan: Plan, form: Mapping[str, str], by: str, reason: str
    ) -> str:
        done = operations.carry_out(self._plan(rt, plan.saga_id, plan.revision, by, reason), rt=rt)
        state = done.after.value if done.after else "changed"
        return f"{self.name}: saga {plan.saga_id} is now {state}"


class ForkAction:
    """``sagas.operations.fork`` on the dashboard: the operator picks the step to start from
    and the payload fields to change (a JSON object of field path to new value; the rest is
    the original's, and the result is validated by the saga's model), reads the plan (what is
    reused, what runs, the payload diff), then confirms; the new saga's page comes next. The
    form never shows the original payload: redacted fields stay unseen (they can be set)."""

    name = "fork"
    label = "Fork from a step"
    danger = True
    states = frozenset({SagaState.COMPLETED, SagaState.FAILED})
    fields = ("from_step", "changes")

    def _plan(
        self, rt: Runtime, saga_id: str, revision: int, form: Mapping[str, str], by: str,
        reason: str,
    ) -> Any:  # fmt: skip
        changes = _json_object(form.get("changes", ""))
        return operations.preview(
            saga_id,
            OperatorAction.FORK,
            reason=reason,
            by=by,
            revision=revision,
            from_step=form.get("from_step", "").strip(),
            changes=changes,
            rt=rt,
        )

    def preview(
        self, rt: Runtime, saga_id: str, revision: int, form: Mapping[str, str], by: str
    ) -> Plan:
        _, saga = load(rt, saga_id, revision)
        edit = {
            "steps": [s.name for s in saga.steps],
            "from_step": form.get("from_step", "") or saga.steps[0].name,
            "changes": form.get("changes") or "{}",
        }
        if not form.get("from_step"):  # first the form: which step, which payload
            return Plan(self.name, saga_id, revision, extra={"edit": edit})
        found = self._plan(rt, saga_id, revision, form, by, "preview")  # with the diff
        extra = {"edit": edit, "ready": found.refused is None}
        return Plan(self.name, saga_id, revision, tuple(found.lines), found.refused, extra)

    def carry_out(
        self, rt: Runtime, plan: Plan, form: Mapping[str, str], by: str, reason: str
    ) -> str | Landed:
        done = operations.carry_out(
            self._plan(rt, plan.saga_id, plan.revision, form, by, reason), rt=rt
        )
        assert done.fork is not None
        new = done.fork.saga_id
        return Landed(f"fork: saga {new} started from {done.fork.from_step} of {plan.saga_id}", new)


def _json_object(raw: str) -> dict[str, Any] | None:
    """The fields to change: a JSON object (None: none, the original payload is kept)."""
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SagaInputError(
            f"changes: not JSON ({exc.msg} at line {exc.lineno})", field="changes"
        ) from None
    if not isinstance(value, dict):
        raise SagaInputError(
            'changes: a JSON object of field: new value, e.g. {"mode": "ok"}', field="changes"
        )
    return value or None


ACTIONS: dict[str, DashboardAction] = {}


def register(action: DashboardAction) -> DashboardAction:
    """Offer ``action`` on every saga page (replacing one of the same name)."""
    ACTIONS[action.name] = action
    return action


register(RetryAction())
register(CancelAction())
register(Recovery(OperatorAction.PAUSE, "Pause", ACTIVE))
register(Recovery(OperatorAction.RESUME, "Resume", ACTIVE))
register(
    Recovery(OperatorAction.RERUN, "Rerun from the failed step", frozenset({SagaState.FAILED}))
)
register(ForkAction())


def offered(state: SagaState) -> list[DashboardAction]:
    """The actions the saga page offers for a saga in ``state``."""
    return [a for a in ACTIONS.values() if state in a.states]
