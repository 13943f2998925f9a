"""Step doubles: replace what a step does for one test, without touching the saga definition.

    doubles = StepDoubles(app)                    # or the ``saga_doubles`` fixture
    doubles.replace(charge_payment, [Transient, Transient, ok({"charge_id": "ch-1"})])
    doubles.replace("order_fulfillment.create_shipment", PermanentError("no carrier"))
    doubles.replace("notification.send_confirmation", lambda payload, saga: {"sent": True})
    doubles.replace(release_inventory, fail_then_ok)          # a compensation, by its function
    ...
    doubles.restore()                              # the fixture does this at teardown

A target is a step's (or compensation's) function, ``"<saga>.<step>"`` (``"<saga>.<step>
.compensate"`` for its compensation), or the Celery task name of a remote step. A behaviour is
a function (called as the original: with the ``StepContext``, or for a remote task with its
keyword arguments), an exception class or instance (raised every time), ``ok(result)``, or a
list of those played in order — the last one repeats once the list runs out.

The engine still does everything else for real: messages, retries, timeouts, compensation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..definition import Saga, StepDef, orchestrated_sagas
from ..errors import DefinitionError, TransientError
from ..state import Action

Transient = TransientError  # reads well in a script: [Transient, Transient, ok({...})]


@dataclass(frozen=True)
class Ok:
    """A scripted success returning ``result``."""

    result: Any = None


def ok(result: Any = None) -> Ok:
    """A scripted success: the step returns ``result``."""
    return Ok(result)


Behaviour = Callable[..., Any] | BaseException | type[BaseException] | Ok | Sequence[Any]


@dataclass
class Double:
    """One replaced step: what it was called with, in order."""

    target: str
    calls: list[Any] = field(default_factory=list)
    _script: list[Any] | None = None
    _fn: Callable[..., Any] | None = None

    @property
    def call_count(self) -> int:
        return len(self.calls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(args[0] if args else kwargs)
        if self._fn is not None:
            return self._fn(*args, **kwargs)
        assert self._script is not None
        outcome = self._script[min(len(self.calls), len(self._script)) - 1]
        return _play(outcome, self.target, len(self.calls))


def _play(outcome: Any, target: str, call: int) -> Any:
    if isinstance(outcome, Ok):
        return outcome.result
    if isinstance(outcome, type) and issubclass(outcome, BaseException):
        raise outcome(f"{outcome.__name__} from the double of {target} (call {call})")
    if isinstance(outcome, BaseException):
        raise outcome
    raise TypeError(f"double of {target}: cannot play {outcome!r} (use ok(...) or an exception)")


def _double(target: str, behaviour: Behaviour) -> Double:
    if isinstance(behaviour, Ok | BaseException) or (
        isinstance(behaviour, type) and issubclass(behaviour, BaseException)
    ):
        return Double(target, _script=[behaviour])
    if isinstance(behaviour, Sequence) and not isinstance(behaviour, str):
        if not behaviour:
            raise ValueError(f"double of {target}: an empty script")
        return Double(target, _script=list(behaviour))
    if callable(behaviour):
        return Double(target, _fn=behaviour)
    raise TypeError(f"double of {target}: {behaviour!r} is not a behaviour")


class StepDoubles:
    """Replaces steps and remote tasks; ``restore()`` puts every original back."""

    def __init__(self, app: Any = None) -> None:
        self.app = app
        self._undo: list[Callable[[], None]] = []

    def replace(self, target: Callable[..., Any] | str, behaviour: Behaviour) -> Double:
        """Replace ``target`` (see the module docstring) with ``behaviour``; returns the
        ``Double``, which records the calls."""
        if isinstance(target, str):
            found = _by_name(target)
            if not found:
                return self._remote(target, behaviour)
        else:
            found = _by_function(target)
            if not found:
                name = getattr(target, "__qualname__", repr(target))
                raise DefinitionError(f"{name} is not a step or compensation of any saga")
        label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        double = _double(label, behaviour)
        for saga, step, action in found:
            self._swap(saga, step, action, double)
        return double

    def _swap(self, saga: Saga[Any], step: StepDef, action: Action, double: Double) -> None:
        current = saga.steps[step.index]
        if action is Action.FORWARD:
            if current.fn is None:
                return self._remote_step(current, double)
            saga.steps[step.index] = dataclasses.replace(current, fn=double)
        else:
            if current.compensation_fn is None:
                return self._remote_step(current, double, compensation=True)
            saga.steps[step.index] = dataclasses.replace(current, compensation_fn=double)

        def undo() -> None:
            saga.steps[step.index] = current

        self._undo.append(undo)

    def _remote_step(self, step: StepDef, double: Double, *, compensation: bool = False) -> None:
        name = step.compensation_task if compensation else step.task
        if name is None:
            raise DefinitionError(f"{step.saga}.{step.name} has no compensation to replace")
        self._remote(name, double)

    def _remote(self, task_name: str, behaviour: Behaviour) -> Double:
        """Register a Celery task called ``task_name`` on the app for the test."""
        if self.app is None:
            raise DefinitionError(
                f"{task_name!r} is no step of a registered saga; replacing a remote task needs "
                "the Celery app (StepDoubles(app), or the saga_doubles fixture)"
            )
        double = behaviour if isinstance(behaviour, Double) else _double(task_name, behaviour)

        def remote(**kwargs: Any) -> Any:
            return double(**kwargs)

        tasks = self.app.tasks
        before = tasks.pop(task_name, None)  # app.task() would hand back an existing task
        self.app.task(name=task_name, shared=False, acks_late=True)(remote)

        def undo() -> None:
            tasks.pop(task_name, None)
            if before is not None:
                tasks[task_name] = before

        self._undo.append(undo)
        return double

    def restore(self) -> None:
        """Put back every original, newest replacement first."""
        while self._undo:
            self._undo.pop()()


def _by_function(fn: Callable[..., Any]) -> list[tuple[Saga[Any], StepDef, Action]]:
    found = []
    for saga in orchestrated_sagas().values():
        for step in saga.steps:
            if step.fn is fn:
                found.append((saga, step, Action.FORWARD))
            if step.compensation_fn is fn:
                found.append((saga, step, Action.COMPENSATE))
    return found


def _by_name(target: str) -> list[tuple[Saga[Any], StepDef, Action]]:
    action = Action.FORWARD
    name = target
    if target.endswith(".compensate"):
        name, action = target.removesuffix(".compensate"), Action.COMPENSATE
    saga_name, _, step_name = name.partition(".")
    saga = orchestrated_sagas().get(saga_name)
    if saga is not None and step_name:
        try:
            return [(saga, saga.step_def(step_name), action)]
        except KeyError:
            raise DefinitionError(f"saga {saga_name!r} has no step {step_name!r}") from None
    return []
