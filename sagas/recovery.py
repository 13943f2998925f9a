"""Operator recovery, decided before it is done: the plan an action would carry out.

Pure (no I/O). ``plan_action`` runs the core's own ``decide`` on the operator's event and says
in words what the decision does: which compensations run and in which order, which effects run
again and under which idempotency key, what a pause holds. The action then applies the same
event to the same revision of the saga (a saga that moved in between is refused), so the plan
an operator confirmed is the plan carried out. For forks: why one is refused, the new saga's
first status (the steps before the fork point reused with their recorded results), the edited
payload and its diff against the original.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .context import idempotency_key
from .errors import PayloadInvalid
from .machine import (
    PAUSED_REFUSAL,
    Cancel,
    Decision,
    Dispatch,
    Event,
    Pause,
    Plan,
    Rerun,
    Resume,
    Retry,
    SagaStatus,
    StepStatus,
    decide,
    new_status,
    rerun_from,
    why_no_cancel,
    why_no_pause,
    why_no_rerun,
    why_no_resume,
)
from .state import Action, OperatorAction, SagaState, StepState


@dataclass(frozen=True, slots=True)
class ForkDetail:
    """What a fork takes from its original and changes."""

    saga_id: str  # the new saga's id
    from_step: str
    reused: tuple[str, ...]  # steps taken as done, with the original's results
    payload: dict[str, Any]  # the new saga's payload (validated)
    changes: dict[str, Any]  # payload diff: {"path": {"old": ..., "new": ...}}
    from_index: int = 0
    by: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ActionPlan:
    """What an operator action on ``saga_id`` will do, made from revision ``revision``.

    ``refused`` says why it cannot happen (None: it can); ``compensates`` lists the steps whose
    compensations it runs, in order; ``reruns`` the steps whose effects run again. ``text()``
    is what the CLI prints and a dashboard shows."""

    action: OperatorAction
    saga_id: str
    revision: int
    lines: tuple[str, ...]
    refused: str | None = None
    compensates: tuple[str, ...] = ()
    reruns: tuple[str, ...] = ()
    fork: ForkDetail | None = None
    event: Event | None = field(default=None, compare=False, repr=False)
    # Set on the plan ``carry_out`` returns: the saga's state just after the action.
    after: SagaState | None = None

    @property
    def needs_confirmation(self) -> bool:
        """Does it run compensations or run effects again (so an operator confirms first)?"""
        return bool(self.compensates or self.reruns) or self.fork is not None

    def text(self) -> str:
        if self.refused is not None:
            return refusal(self.action, self.saga_id, self.refused)
        return "\n".join(self.lines)


def operator_event(
    action: OperatorAction,
    at: datetime,
    *,
    by: str,
    reason: str,
    deadline_at: datetime | None = None,
) -> Event:
    """The core event an operator action stands for (a fork has none: it starts a saga)."""
    match action:
        case OperatorAction.RETRY:
            return Retry(at, reason, by)
        case OperatorAction.CANCEL:
            return Cancel(at, reason, by)
        case OperatorAction.PAUSE:
            return Pause(at, reason, by)
        case OperatorAction.RESUME:
            return Resume(at, reason, by)
        case OperatorAction.RERUN:
            return Rerun(at, reason, by, deadline_at)
    raise ValueError(f"{action.value} is not a transition of an existing saga")


def why_refused(
    action: OperatorAction, plan: Plan, saga: SagaStatus, decision: Decision
) -> str | None:
    """Why ``action`` would change nothing (None: it changes the saga as ``decision`` says)."""
    specific = {
        OperatorAction.CANCEL: why_no_cancel,
        OperatorAction.RERUN: why_no_rerun,
    }
    why: str | None
    if action in specific:
        why = specific[action](plan, saga)
    elif action is OperatorAction.PAUSE:
        why = why_no_pause(saga)
    elif action is OperatorAction.RESUME:
        why = why_no_resume(saga)
    else:
        why = PAUSED_REFUSAL if saga.paused else None
    if why is None and not decision.changed:
        why = f"saga is {saga.state.value}"
    return why


def refusal(action: OperatorAction, saga_id: str, why: str) -> str:
    """The one-line message of a refused action: "nothing to retry: saga 'o-1' is completed"."""
    if why.startswith("saga "):
        return f"nothing to {action.value}: saga {saga_id!r} {why.removeprefix('saga ')}"
    return f"nothing to {action.value}: saga {saga_id!r}: {why}"


def plan_action(
    action: OperatorAction,
    plan: Plan,
    saga: SagaStatus,
    event: Event,
    *,
    revision: int,
) -> tuple[ActionPlan, Decision]:
    """Decide ``event`` (an operator's) and describe what it does."""
    decision = decide(plan, saga, event)
    refused = why_refused(action, plan, saga, decision)
    base = ActionPlan(action, saga.id, revision, (), refused, event=event)
    if refused is not None:
        return base, decision
    lines = [_headline(action, saga, event)]
    reruns: list[str] = []
    for cmd in decision.commands:
        if isinstance(cmd, Dispatch) and cmd.action is Action.FORWARD:
            line, again = _forward_line(saga, decision.status, cmd)
            lines.append(line)
            if again:
                reruns.append(saga.steps[cmd.step].name)
    lines += _extra_lines(action, plan, saga, decision.status)
    order = compensation_order(plan, decision.status)
    if order:
        lines.append("will compensate " + ", then ".join(order))
        if action is OperatorAction.RESUME and saga.state is not SagaState.COMPENSATING:
            lines.append("(the saga's deadline passed while it was paused)")
    elif decision.status.state is SagaState.FAILED and saga.state is not SagaState.FAILED:
        lines.append("nothing to compensate: the saga fails at once")
    return replace(base, lines=tuple(lines), compensates=order, reruns=tuple(reruns)), decision


def compensation_order(plan: Plan, saga: SagaStatus) -> tuple[str, ...]:
    """The compensations a compensating saga still runs, newest first (those in flight or
    parked included); empty when the saga is not compensating."""
    if saga.state is not SagaState.COMPENSATING:
        return ()
    owed = (StepState.COMPENSATING, StepState.COMPENSATION_FAILED)
    done = (StepState.SUCCEEDED, StepState.TIMED_OUT)
    return tuple(
        s.name
        for i, s in reversed(list(enumerate(saga.steps)))
        if s.state in owed or (s.state in done and plan.steps[i].compensable)
    )


def _headline(action: OperatorAction, saga: SagaStatus, event: Event) -> str:
    sid = saga.id
    if isinstance(event, Resume) and saga.paused_at is not None:
        return f"resume {sid} (paused since {saga.paused_at.isoformat(timespec='seconds')})"
    if isinstance(event, Rerun):
        start = rerun_from_name(saga)
        return f"rerun {sid} from {start} in the same saga (its history is kept)"
    if isinstance(event, Cancel):
        return f"cancel {sid}: stop going forward"
    if isinstance(event, Pause):
        return f"pause {sid}: nothing new is dispatched until it is resumed"
    return f"{action.value} {sid}"


def rerun_from_name(saga: SagaStatus) -> str:
    for s in saga.steps:
        if s.state in (StepState.PARKED, StepState.FAILED):
            return s.name
    return "?"


def _forward_line(before: SagaStatus, after: SagaStatus, cmd: Dispatch) -> tuple[str, bool]:
    """One forward dispatch in words, and whether it runs an effect again."""
    old, name = before.steps[cmd.step], before.steps[cmd.step].name
    key = idempotency_key(before.id, name, Action.FORWARD)
    if old.attempt == 0:
        return f"will run {name}", False
    doubt = ""
    if old.in_doubt or old.state in (StepState.RUNNING, StepState.PARKED):
        doubt = " (an earlier attempt may have taken effect: the key lets it be deduplicated)"
    return (
        f"will re-run {name} (attempt {cmd.attempt}) with the same idempotency key {key}{doubt}",
        True,
    )


def _extra_lines(
    action: OperatorAction, plan: Plan, before: SagaStatus, after: SagaStatus
) -> list[str]:
    lines: list[str] = []
    running = [s.name for s in before.steps if s.state is StepState.RUNNING and s.in_flight]
    if action is OperatorAction.PAUSE:
        for name in running:
            lines.append(f"{name} is running: its reply is recorded, what follows it is held")
        lines.append(
            "timers (retries, step timeouts, the saga deadline) do not fire while paused; "
            "on resume whatever fell due fires at once (a deadline is not extended)"
        )
    if action is OperatorAction.CANCEL:
        for name in running:
            lines.append(f"{name} is running: its outcome is unknown, so it is compensated too")
    if action is OperatorAction.RETRY:
        for i, s in enumerate(after.steps):
            if s.state is StepState.COMPENSATING and before.steps[i].state is not s.state:
                key = idempotency_key(before.id, s.name, Action.COMPENSATE)
                lines.append(f"will retry the compensation of {s.name} with the key {key}")
    if action is OperatorAction.RERUN:
        start = rerun_from(plan, before)
        kept = [s.name for s in before.steps[: start or 0] if s.state is StepState.SUCCEEDED]
        if kept:
            lines.append("steps before it stand and are not run again: " + ", ".join(kept))
        later = [
            s.name
            for i, s in enumerate(after.steps)
            if i > (start or 0) and s.state is StepState.PENDING and s.attempt == 0
        ]
        if later and before.state is SagaState.FAILED:
            lines.append("then " + ", ".join(later))
        if after.deadline_at != before.deadline_at and after.deadline_at is not None:
            lines.append(f"new saga deadline {after.deadline_at.isoformat(timespec='seconds')}")
    return lines


# -- forks ---------------------------------------------------------------------------------------


def why_no_fork(plan: Plan, original: SagaStatus, from_step: int) -> str | None:
    """Why the saga cannot be forked from step ``from_step`` (None: it can).

    Only a finished saga is forked (a running one would own the same effects twice), from the
    first step of a parallel group or a step outside one, and only past steps whose effects
    stand in the original: a compensated step's result describes an effect that was undone."""
    if not original.state.terminal:
        return (
            f"saga is {original.state.value}: fork a finished saga (cancel it, or let it "
            "finish, first)"
        )
    if plan.members(from_step)[0] != from_step:
        first = plan.steps[plan.members(from_step)[0]].name
        return (
            f"step {plan.steps[from_step].name!r} is inside a parallel group: fork from {first!r}"
        )
    for s in original.steps[:from_step]:
        if s.state is not StepState.SUCCEEDED:
            return (
                f"step {s.name!r} is {s.state.value} in the original: only steps whose effect "
                f"stands can be reused; fork from {s.name!r} or earlier"
            )
    return None


def fork_status(
    plan: Plan,
    original: SagaStatus,
    from_step: int,
    saga_id: str,
    deadline_at: datetime | None,
) -> SagaStatus:
    """The fork's first status: steps before ``from_step`` succeeded with the original's
    results (never dispatched in the fork), the rest not started."""
    fresh = new_status(saga_id, plan, deadline_at)
    steps = tuple(
        StepStatus(
            name=s.name,
            state=StepState.SUCCEEDED,
            result=s.result,
            started_at=s.started_at,
            finished_at=s.finished_at,
        )
        if i < from_step
        else fresh.steps[i]
        for i, s in enumerate(original.steps)
    )
    return replace(fresh, steps=steps)


def plan_fork(
    plan: Plan,
    original: SagaStatus,
    from_step: int,
    detail: ForkDetail,
    *,
    revision: int,
) -> ActionPlan:
    refused = why_no_fork(plan, original, from_step)
    lines = [f"fork {original.id} from {detail.from_step} as {detail.saga_id}"]
    if detail.reused:
        lines.append(
            "steps before it reused with their recorded results, not run again: "
            + ", ".join(detail.reused)
        )
    else:
        lines.append("no step reused: every step runs")
    rest = [s.name for s in plan.steps[from_step:]]
    lines.append(
        f"will run {', '.join(rest)} as new effects (idempotency keys of {detail.saga_id})"
    )
    if detail.changes:
        for path, change in detail.changes.items():
            old = repr(change["old"]) if "old" in change else "(absent)"
            new = repr(change["new"]) if "new" in change else "(removed)"
            lines.append(f"payload {path}: {old} -> {new}")
    else:
        lines.append("payload unchanged")
    lines.append(f"{original.id} is not changed; each records the link to the other")
    return ActionPlan(
        OperatorAction.FORK, original.id, revision, tuple(lines), refused, fork=detail
    )


def edited_payload(original: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``original`` with each dotted path in ``changes`` set (``{"address.city": "Lyon"}``).

    An intermediate that is not an object is a ``PayloadInvalid`` naming the path."""
    out = copy.deepcopy(dict(original))
    for path, value in changes.items():
        parts = path.split(".")
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                where = ".".join(parts[: i + 1])
                raise PayloadInvalid(f"{where!r} is not an object", field=f"payload.{where}")
        node[parts[-1]] = value
    return out


def payload_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Changed leaves by dotted path: ``{"address.city": {"old": "Paris", "new": "Lyon"}}``
    ("old" absent for an added field, "new" absent for a removed one)."""
    a, b = _leaves(old), _leaves(new)
    out: dict[str, Any] = {}
    for path in sorted(set(a) | set(b)):
        if a.get(path, _ABSENT) != b.get(path, _ABSENT):
            change = {}
            if path in a:
                change["old"] = a[path]
            if path in b:
                change["new"] = b[path]
            out[path] = change
    return out


_ABSENT = object()


def _leaves(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            out.update(_leaves(item, path + "."))
        else:
            out[path] = item
    return out


def dropped_paths(changes: Mapping[str, Any], validated: Mapping[str, Any]) -> list[str]:
    """Paths an operator set that the model dropped (no such field): each an error."""
    leaves = _leaves(validated)
    return [
        path
        for path in changes
        if path not in leaves and not any(k.startswith(path + ".") for k in leaves)
    ]
