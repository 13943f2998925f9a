"""The dashboard's operator actions, by name: each is previewed (a plan the operator reads and
confirms) and then carried out on the saga's revision the operator saw.

An action is any object with ``name``, ``label``, ``preview`` and ``carry_out``; ``ACTIONS``
maps names to them and ``register`` adds one, so pause, resume, rerun or fork (with its own
preview) plug in by name without touching the pages: the saga page offers every registered
action, ``/sagas/{id}/actions/{name}`` shows its plan and ``POST`` to the same address carries it
out. The built-in ones are ``sagas.operations``' actions: their plans are ``operations.preview``'s,
the same text the CLI and the Python API show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import coordinator, operations
from ..definition import Saga, get_orchestrated
from ..errors import SagaInputError, SagaNotFound
from ..runtime import Runtime
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


ACTIVE = frozenset({SagaState.STARTED, SagaState.PENDING, SagaState.COMPENSATING})


class Recovery:
    """An operator action of ``sagas.operations`` (retry, cancel, pause, resume, rerun) on the
    dashboard: its plan is ``operations.preview``'s, the one the CLI and the Python API show,
    carried out on the plan's revision (``SagaChanged`` if the saga moved, ``ActionRefused`` if
    the plan was refused: nothing done)."""

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


register(Recovery(OperatorAction.RETRY, "Retry", ACTIVE))
register(
    Recovery(OperatorAction.CANCEL, "Cancel", frozenset({SagaState.STARTED, SagaState.PENDING}))
)
register(Recovery(OperatorAction.PAUSE, "Pause", ACTIVE))
register(Recovery(OperatorAction.RESUME, "Resume", ACTIVE))
register(
    Recovery(OperatorAction.RERUN, "Rerun from the failed step", frozenset({SagaState.FAILED}))
)
register(ForkAction())


def offered(state: SagaState) -> list[DashboardAction]:
    """The actions the saga page offers for a saga in ``state``."""
    return [a for a in ACTIONS.values() if state in a.states]
