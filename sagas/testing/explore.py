"""The crash-point harness: run a saga once per thing that can go wrong, check the invariants.

    result = explore(order_fulfillment, payload, app=app, effects=count_effects)
    assert result.ok, result.report()

First a clean run discovers the points: every step call, every committed transition, every
message sent. Then the saga runs again once per point, in the test runtime (the real
coordinator, participants, sweeper and SQLite store, on a fake clock), with that one fault:

- ``crash:before_effect:<step>`` / ``crash:after_effect:<step>``: the worker dies just before
  or just after the step's function (its effect) ran; the message is redelivered (acks_late);
- ``crash:before_commit:<transition>`` / ``crash:after_commit:<transition>``: the worker dies
  before a transition is written, or after it is committed and before its commands are sent;
- ``lost:<message>`` / ``dup:<message>``: a command or reply is lost, or delivered twice;
- ``timeout:<step>``: the step runs longer than its timeout (the sweeper times it out meanwhile);
- ``fail:<step>``: the step fails permanently;
- ``fail_compensation:<step>`` / crash points of compensations: under a permanent failure of
  the last step (``@fail:<step>`` in the point's name), a compensation fails once, or dies.

After each, ``invariants.check_saga``: completed, or failed with every step that may have
taken effect compensated once, newest first; no effect applied twice (given ``effects``);
nothing left in the outbox; nothing run forward after compensation began. Points are run with
the default fast path and again with every command and reply sent as a message (``modes``).
A failing point prints the one line that replays it: ``explore(..., only="<point>")``.

In-process "crashes" are ``WorkerCrash`` raised at the engine's seams — the step function, the
store's ``write``, the fault points (``sagas.faults``) after a commit, the broker's publish —
and recovery is the engine's own: redelivery, the sweeper's timeouts and outbox repair.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from .. import faults
from ..catalog import get_saga
from ..definition import Saga, StepDef
from ..errors import PermanentError, TransientError
from ..state import Action
from ..store import Store, Transition
from ..transport import REMOTE_ERROR_TASK, REMOTE_OK_TASK, REPLY_TASK, START_TASK, WAKE_TASK
from .broker import Message, WorkerCrash
from .invariants import check_saga
from .runtime import LocalRuntime, SagaStuck, local_runtime

Effects = Callable[[str], Mapping[str, int]]
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "messages": {"local_transitions": False, "inline_steps": False},
}


class InjectedFailure(PermanentError):
    """The harness's permanent failure of a step (``fail:<step>``)."""


class InjectedTransient(TransientError):
    """The harness's one-off failure of a compensation (``fail_compensation:<step>``)."""


@dataclass(frozen=True)
class Point:
    """One fault: ``kind:where``, in ``mode``, under a permanent failure of ``base``."""

    kind: str
    where: str
    mode: str = "default"
    base: str | None = None

    @property
    def id(self) -> str:
        head = "" if self.mode == "default" else f"{self.mode}:"
        tail = f"@fail:{self.base}" if self.base else ""
        return f"{head}{self.kind}:{self.where}{tail}" if self.where else f"{head}{self.kind}"

    @classmethod
    def parse(cls, text: str) -> Point:
        body, _, base = text.partition("@fail:")
        mode = "default"
        head, _, rest = body.partition(":")
        if head in MODES:
            mode, body = head, rest
        kind, _, where = body.partition(":")
        if kind == "crash":
            phase, _, target = where.partition(":")
            where = f"{phase}:{target}"
        return cls(kind, where, mode, base or None)


@dataclass
class PointResult:
    point: str
    saga_id: str
    state: str
    violations: list[str]
    notes: list[str]
    timeline: str
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class Exploration:
    saga: str
    results: list[PointResult]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[PointResult]:
        return [r for r in self.results if not r.ok]

    def reproduction(self, point: str) -> str:
        return f'explore(get_saga("{self.saga}"), payload, only="{point}")'

    def report(self) -> str:
        """One line per point; each failing point's violations, timeline and reproduction."""
        lines = [
            f"explore {self.saga}: {len(self.results)} points, {len(self.failures)} failing, "
            f"{self.seconds:.2f}s"
        ]
        for r in self.results:
            extra = f"  ({'; '.join(r.notes)})" if r.notes else ""
            lines.append(f"  {'ok  ' if r.ok else 'FAIL'} {r.point}: {r.state}{extra}")
        for r in self.failures:
            lines += ["", f"FAIL {r.point} (saga {r.saga_id}):"]
            lines += [f"  - {v}" for v in r.violations]
            lines += ["", r.timeline, f"reproduce: {self.reproduction(r.point)}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# -- labels: how the points are named, the same in discovery and in replay ---------------------


def _step_label(step: str, action: Action) -> str:
    return step if action is Action.FORWARD else f"{step}.compensate"


def _commit_label(t: Transition) -> str:
    h = t.history[0] if t.history else None
    if h is None:
        return "transition"
    step = f":{h.step}" if h.step else ""
    attempt = f"#{h.attempt}" if h.attempt else ""
    return f"{h.kind.value}{step}{attempt}"


def _message_label(m: Message) -> str:
    body = m.args[0] if m.args and isinstance(m.args[0], dict) else {}
    if m.name == REPLY_TASK:
        return f"reply:{_step_label(body['step'], Action(body['action']))}#{body['attempt']}"
    if m.name in (REMOTE_OK_TASK, REMOTE_ERROR_TASK):
        k = m.kwargs
        return f"reply:{_step_label(k['step'], Action(k['action']))}#{k['attempt']}"
    if m.name == WAKE_TASK:
        return "wake"
    if m.name == START_TASK:
        return "start"
    ids = body if "step" in body else m.kwargs.get("saga", {})
    if isinstance(ids, dict) and "step" in ids:
        return f"command:{_step_label(ids['step'], Action(ids['action']))}#{ids['attempt']}"
    return f"task:{m.name}"


def _message_saga(m: Message) -> str | None:
    if m.name == WAKE_TASK and m.args:
        return str(m.args[0])
    return m.saga_id


class _Numbered:
    """Labels made unique by occurrence: the second ``wake`` is ``wake~2``."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.order: list[str] = []

    def __call__(self, label: str) -> str:
        self.seen[label] += 1
        n = self.seen[label]
        unique = label if n == 1 else f"{label}~{n}"
        self.order.append(unique)
        return unique


# -- one run with (at most) one fault -----------------------------------------------------------


@dataclass
class _Run:
    """The interposer for one saga run: records what happened, fires the point's fault once."""

    rt: LocalRuntime
    saga: Saga[Any]
    saga_id: str
    point: Point | None
    base: str | None
    calls: list[tuple[str, Action]] = field(default_factory=list)
    ok_calls: Counter[tuple[str, Action]] = field(default_factory=Counter)
    steps: _Numbered = field(default_factory=_Numbered)
    commits: _Numbered = field(default_factory=_Numbered)
    messages: _Numbered = field(default_factory=_Numbered)
    fired: bool = False
    last_commit: str = ""

    def _is(self, kind: str, where: str) -> bool:
        p = self.point
        if p is None or self.fired or p.kind != kind or p.where != where:
            return False
        self.fired = True
        return True

    def _failing(self, step: str) -> bool:
        """``fail:<step>`` fails every attempt, not only the first."""
        p = self.point
        return p is not None and self.fired and p.kind == "fail" and p.where == step

    # step functions (installed by _Wrapped)
    def before(self, step: StepDef, action: Action, saga_id: str) -> str | None:
        if saga_id != self.saga_id:
            return None
        if action is Action.FORWARD and (
            step.name == self.base or (self._is("fail", step.name) or self._failing(step.name))
        ):
            # Fails before its effect, every attempt: no crash point of its own.
            raise InjectedFailure(f"explore: {step.name} fails permanently")
        label = self.steps(_step_label(step.name, action))
        if self._is("crash", f"before_effect:{label}"):
            raise WorkerCrash(f"explore: worker died before {label}")
        if action is Action.COMPENSATE and self._is("fail_compensation", step.name):
            raise InjectedTransient(f"explore: compensation of {step.name} fails once")
        self.calls.append((step.name, action))
        return label

    def after(self, step: StepDef, action: Action, label: str) -> None:
        self.ok_calls[(step.name, action)] += 1
        if self._is("crash", f"after_effect:{label}"):
            raise WorkerCrash(f"explore: worker died after {label}")
        if action is Action.FORWARD and self._is("timeout", step.name):
            # The step took longer than its timeout: the sweeper's timer fires meanwhile.
            self.rt.advance(step.timeout + self.rt.settings.sweep_interval)

    # store writes (installed on the runtime's store)
    def committing(self, t: Transition) -> None:
        if t.record.id != self.saga_id:
            return
        label = self.commits(_commit_label(t))
        if self._is("crash", f"before_commit:{label}"):
            raise WorkerCrash(f"explore: worker died before committing {label}")
        self.last_commit = label

    def fault(self, point: str) -> None:
        if point == "coordinator.start_after_commit":
            self.last_commit = self.commits("saga_started")
        if point in ("coordinator.after_commit", "coordinator.start_after_commit"):
            if self._is("crash", f"after_commit:{self.last_commit}"):
                raise WorkerCrash(f"explore: worker died after committing {self.last_commit}")

    # the broker
    def publish(self, m: Message) -> list[Message]:
        if _message_saga(m) != self.saga_id:
            return [m]
        label = self.messages(_message_label(m))
        if self._is("lost", label):
            return []
        if self._is("dup", label):
            return [m, dataclasses.replace(m)]
        return [m]


class _Wrapped:
    """Every step function of the saga wrapped to report to the current ``_Run``."""

    def __init__(self, saga: Saga[Any], app: Any) -> None:
        self.saga, self.app = saga, app
        self.run: _Run | None = None
        self._undo: list[Callable[[], None]] = []

    def _wrap(self, step: StepDef, action: Action, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            run = self.run
            saga_id = args[0].saga_id if args else kwargs.get("saga", {}).get("saga_id", "")
            label = run.before(step, action, saga_id) if run else None
            result = fn(*args, **kwargs)
            if run is not None and label is not None:
                run.after(step, action, label)
            return result

        return wrapped

    def install(self) -> None:
        for i, step in enumerate(list(self.saga.steps)):
            new = step
            if step.fn is not None:
                new = dataclasses.replace(new, fn=self._wrap(step, Action.FORWARD, step.fn))
            if step.compensation_fn is not None:
                wrapped = self._wrap(step, Action.COMPENSATE, step.compensation_fn)
                new = dataclasses.replace(new, compensation_fn=wrapped)
            self.saga.steps[i] = new
            self._undo.append(self._restorer(i, step))
            for action, name in (
                (Action.FORWARD, step.task),
                (Action.COMPENSATE, step.compensation_task),
            ):
                if name is not None:
                    self._wrap_remote(step, action, name)

    def _restorer(self, index: int, step: StepDef) -> Callable[[], None]:
        def undo() -> None:
            self.saga.steps[index] = step

        return undo

    def _wrap_remote(self, step: StepDef, action: Action, name: str) -> None:
        tasks = self.app.tasks
        original = tasks.pop(name, None)
        if original is None:
            raise SagaStuck(
                f"remote task {name!r} of {step.saga}.{step.name} is not registered on the app: "
                "import its module, or replace it with a double (StepDoubles)"
            )
        self.app.task(name=name, shared=False, acks_late=True)(
            self._wrap(step, action, original.run)
        )

        def undo() -> None:
            tasks.pop(name, None)
            tasks[name] = original

        self._undo.append(undo)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()


@contextmanager
def _interposed(rt: LocalRuntime, wrapped: _Wrapped) -> Iterator[None]:
    store: Store = rt.store
    write, create = store.write, store.create

    def checked_write(t: Transition, *, now: Any) -> bool:
        if wrapped.run is not None:
            wrapped.run.committing(t)
        return write(t, now=now)

    def fault(point: str) -> None:
        if wrapped.run is not None:
            wrapped.run.fault(point)

    def publish(m: Message) -> list[Message]:
        return wrapped.run.publish(m) if wrapped.run is not None else [m]

    store.write = checked_write  # type: ignore[method-assign]
    faults.intercept(fault)
    rt.broker.on_publish = publish
    try:
        yield
    finally:
        faults.intercept(None)
        rt.broker.on_publish = None
        store.write, store.create = write, create  # type: ignore[method-assign]


def _run_point(
    rt: LocalRuntime,
    wrapped: _Wrapped,
    saga: Saga[Any],
    payload: Any,
    saga_id: str,
    point: Point | None,
    base: str | None,
    effects: Effects | None,
) -> tuple[_Run, PointResult]:
    began = time.perf_counter()
    run = _Run(rt, saga, saga_id, point, base)
    wrapped.run = run
    violations: list[str] = []
    try:
        try:
            rt.start(saga, payload, saga_id=saga_id)
        except WorkerCrash:
            pass  # the caller's process died after the start committed: the sweeper repairs
        rt.wait(saga_id, parked=True)
    except SagaStuck as exc:
        violations.append(str(exc).splitlines()[0])
    finally:
        wrapped.run = None
    counts = dict(effects(saga_id)) if effects is not None else None
    violations += check_saga(rt.store, saga_id, effects=counts, calls=run.calls)
    if point is not None and not run.fired:
        violations.append(f"point {point.id} was never reached (is the saga deterministic?)")
    record = rt.store.get(saga_id)[0]
    notes = [
        f"{_step_label(s, a)} ran {n}x"
        for (s, a), n in sorted(run.ok_calls.items(), key=lambda kv: kv[0][0])
        if n > 1
    ]
    result = PointResult(
        point=point.id if point else "clean" + (f"@fail:{base}" if base else ""),
        saga_id=saga_id,
        state=record.state.value + (" (parked)" if record.parked else ""),
        violations=violations,
        notes=notes,
        timeline=rt.timeline(saga_id),
        seconds=time.perf_counter() - began,
    )
    return run, result


def _points(clean: _Run, mode: str, base: str | None, skip: set[str]) -> list[Point]:
    """Every fault point the clean run passed (``skip``: already covered by the happy run)."""
    found: list[Point] = []
    for label in clean.steps.order:
        found += [
            Point("crash", f"{ph}:{label}", mode, base) for ph in ("before_effect", "after_effect")
        ]
    for label in clean.commits.order:
        phases = ("after_commit",) if label == "saga_started" else ("before_commit", "after_commit")
        found += [Point("crash", f"{ph}:{label}", mode, base) for ph in phases]
    for label in clean.messages.order:
        found += [Point(kind, label, mode, base) for kind in ("lost", "dup")]
    return [p for p in found if Point(p.kind, p.where, p.mode).id not in skip]


def explore(
    saga: Saga[Any] | str,
    payload: Any,
    *,
    app: Any = None,
    effects: Effects | None = None,
    only: str | None = None,
    modes: tuple[str, ...] = ("default", "messages"),
    fail: str | None = None,
    **settings: Any,
) -> Exploration:
    """Run ``saga`` with ``payload`` once per crash point and check the invariants after each.

    ``app``: the Celery app (its remote tasks, or doubles for them, must be registered; default:
    a fresh app, which has every ``shared_task``). ``effects(saga_id)``: how many times each
    effect happened in your (fake) services, as ``{"<step>": n, "<step>.compensate": n}``; with
    it the harness checks exactly-once. ``only``: replay one point by its name. ``fail``: the
    step whose permanent failure drives the compensation points (default: the last step).
    ``settings``: ``Settings`` overrides for the runtime."""
    definition = get_saga(saga) if isinstance(saga, str) else saga
    assert isinstance(definition, Saga), "explore runs orchestrated sagas"
    app = app if app is not None else Celery("sagas-explore", set_as_current=False)
    base_fail = fail or definition.steps[-1].name
    prefix = f"x{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    results: list[PointResult] = []
    wanted = Point.parse(only) if only else None
    wrapped = _Wrapped(definition, app)
    wrapped.install()
    try:
        for mode in modes if wanted is None else (wanted.mode,):
            with local_runtime(app, **{**settings, **MODES[mode]}) as rt, _interposed(rt, wrapped):
                one = _Session(rt, wrapped, definition, payload, effects, f"{prefix}-{mode[:3]}")
                if wanted is not None:
                    results.append(one(wanted, wanted.base)[1])
                    continue
                results += _explore_mode(definition, mode, base_fail, one)
    finally:
        wrapped.uninstall()
    return Exploration(definition.name, results, time.perf_counter() - began)


@dataclass
class _Session:
    """Runs points one after another in one runtime, each on a saga id of its own."""

    rt: LocalRuntime
    wrapped: _Wrapped
    saga: Saga[Any]
    payload: Any
    effects: Effects | None
    prefix: str
    count: int = 0

    def __call__(self, point: Point | None, base: str | None) -> tuple[_Run, PointResult]:
        self.count += 1
        sid = f"{self.prefix}-{self.count:03d}"
        return _run_point(
            self.rt, self.wrapped, self.saga, self.payload, sid, point, base, self.effects
        )


def _explore_mode(
    saga: Saga[Any],
    mode: str,
    base_fail: str,
    one: Callable[[Point | None, str | None], tuple[_Run, PointResult]],
) -> list[PointResult]:
    results: list[PointResult] = []
    clean, result = one(None, None)
    results.append(result)
    happy = _points(clean, mode, None, set())
    for step in saga.steps:
        happy += [Point("timeout", step.name, mode), Point("fail", step.name, mode)]
    unhappy_clean, result = one(None, base_fail)
    results.append(result)
    unhappy = _points(unhappy_clean, mode, base_fail, {p.id for p in happy})
    unhappy += [
        Point("fail_compensation", s.name, mode, base_fail)
        for s in saga.steps
        if s.compensable and s.index < saga.step_def(base_fail).index
    ]
    for point in [*happy, *unhappy]:
        results.append(one(point, point.base)[1])
    return results
