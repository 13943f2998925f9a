"""Declaring sagas: ``Saga``, its steps, and the checks run when a definition loads.

A local step is a function in the saga module, run by the owning service's worker. A remote step
is an existing Celery task named by string in another codebase; the coordinator never imports it.

    order = Saga("order_fulfillment", payload=Order, deadline=timedelta(hours=1))

    def release_inventory(ctx: StepContext[Order]) -> None: ...

    @order.step(queue="inventory", timeout=30, compensation=release_inventory)
    def reserve_inventory(ctx: StepContext[Order]) -> dict: ...

    order.remote_step("notify", task="notification.send", queue="notification",
                      compensation=None)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from . import registry
from .errors import DefinitionError, SignalUnknown
from .machine import Plan, StepPlan
from .payload import NAME_RE, check_json
from .registry import (
    SagaHandle,
    StartOptions,
    lookup_as,
    registered,
    registered_versions,
    start_through_hook,
)
from .retry import DEFAULT_COMPENSATION_RETRY, DEFAULT_RETRY, RetryPolicy
from .routes import AwaitOperator, Compensate, Continue, Park, RetryAfter, Route
from .state import Action, SagaKind

P = TypeVar("P", bound=BaseModel)
MAX_SECONDS = 10 * 365 * 86400.0  # keeps deadline arithmetic inside datetime's range
QUEUE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# What a wait step (no task: it waits for a signal) has for a queue; nothing is sent to it.
WAIT_QUEUE = "sagas.waits"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

StepFn = Callable[["StepContext[Any]"], Any]


@dataclass(frozen=True, slots=True)
class StepContext(Generic[P]):
    """What a step (or its compensation) is told when it runs."""

    saga_id: str
    saga_name: str
    step: str
    action: Action
    attempt: int
    payload: P
    results: Mapping[str, Any]  # results of the steps before this one, by step name
    idempotency_key: str  # stable across retries of this step's action
    correlation_id: str
    deadline_at: datetime | None
    result: Any = None  # for a compensation: what the step returned (None if it timed out)
    # The details of the last heartbeat of an earlier attempt of this step (None: none came),
    # so an attempt after a crash can resume where the dead one got to.
    progress: Any = None
    # Asks the store whether this attempt is still the one the saga waits for (the worker
    # sets it; outside a worker there is nothing to ask).
    current: Callable[[], bool] | None = field(default=None, repr=False, compare=False)
    # Records a heartbeat (the worker sets it); returns whether the attempt is still open.
    beat: Callable[[Any], bool] | None = field(default=None, repr=False, compare=False)

    def is_current(self) -> bool:
        """Is this attempt still the saga's open one? False once it timed out, was retried or
        compensation began (the attempt is fenced): a long step checks it before an effect
        that must not land late. True when the store cannot be read (nothing says otherwise)."""
        return True if self.current is None else self.current()

    def heartbeat(self, details: Any = None) -> bool:
        """Say this attempt is alive and how far it got (``details``: JSON, kept for the next
        attempt as ``ctx.progress``). With ``heartbeat=`` on the step, each heartbeat moves
        the attempt's deadline to now + that interval (never past the step's ``timeout``);
        an attempt that stops heartbeating is timed out long before its timeout. Returns
        False once the attempt is fenced (it timed out or the saga moved on): stop and do
        not take effect. Calls closer together than a third of the interval are merged
        (the latest details go with the next one that is sent)."""
        return True if self.beat is None else self.beat(details)


class GoAhead(BaseModel):
    """An operator's go-ahead signal for a step parked with ``AwaitOperator``: any JSON object
    (recorded in the signal's row; the step runs again with its own payload)."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True, slots=True)
class StepDef:
    saga: str
    name: str
    index: int
    queue: str
    timeout: float
    retry: RetryPolicy
    fn: StepFn | None = None  # local step
    task: str | None = None  # remote step: a Celery task name
    compensation_fn: StepFn | None = None
    compensation_task: str | None = None
    compensation_queue: str = ""
    compensation_timeout: float = 0.0
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY
    arguments: Callable[[StepContext[Any]], dict[str, Any]] | None = field(default=None)
    pivot: bool = False
    on_exhausted: Route | None = None  # None: Compensate() before a pivot, Park() after it
    group: str | None = None  # a parallel group (``Saga.parallel``)
    group_reverse: bool = False
    wait_model: type[BaseModel] | None = None  # a wait for a signal (no task runs)
    wait_timeout_continues: Continue | None = None  # None: a timed-out wait fails
    heartbeat: float | None = None  # seconds: the longest gap between heartbeats of an attempt

    @property
    def is_wait(self) -> bool:
        return self.wait_model is not None

    @property
    def takes_signal(self) -> bool:
        return self.is_wait or isinstance(self.on_exhausted, AwaitOperator)

    @property
    def signal_model(self) -> type[BaseModel]:
        """What the signal's data must be: the wait's model, or any JSON object."""
        return self.wait_model or GoAhead

    @property
    def compensable(self) -> bool:
        return self.compensation_fn is not None or self.compensation_task is not None

    @property
    def is_remote(self) -> bool:
        return self.task is not None

    def task_name(self, action: Action) -> str:
        """The Celery task name that carries this step's action."""
        if action is Action.FORWARD:
            return self.task or f"saga.{self.saga}.{self.name}"
        return self.compensation_task or f"saga.{self.saga}.{self.name}.compensate"

    def fn_for(self, action: Action) -> StepFn | None:
        """The local function that carries this step's action (None: remote, or none)."""
        return self.fn if action is Action.FORWARD else self.compensation_fn

    def queue_for(self, action: Action) -> str:
        return self.queue if action is Action.FORWARD else self.compensation_queue

    def plan(self) -> StepPlan:
        return StepPlan(
            name=self.name,
            timeout=self.timeout,
            retry=self.retry,
            compensable=self.compensable,
            compensation_timeout=self.compensation_timeout,
            compensation_retry=self.compensation_retry,
            pivot=self.pivot,
            on_exhausted=self.on_exhausted or Compensate(),
            heartbeat=self.heartbeat,
            wait=self.is_wait,
            group=self.group,
            group_reverse=self.group_reverse,
            wait_fails=self.wait_timeout_continues is None,
            wait_default=(
                self.wait_timeout_continues.default if self.wait_timeout_continues else None
            ),
        )


class Startable(Generic[P]):
    """``start()`` for both kinds of definition: it reaches the engine through the registry's
    hook (``sagas.starter``), since definitions cannot import it."""

    def start(
        self,
        payload: P | dict[str, Any],
        *,
        saga_id: str | None = None,
        correlation_id: str | None = None,
    ) -> SagaHandle:
        """Start this saga now, in this process (needs the store); returns its id (a
        ``SagaHandle``: ``.status()``, ``.wait(timeout)``) once the saga row is committed (for a
        choreography: and its start event is published). Inside a transaction a framework
        integration joins (Django's ``atomic()``, a Flask-SQLAlchemy session that has
        written), the row is written in that transaction instead and the first step is sent
        once it commits."""
        return start_through_hook(self, payload, StartOptions(saga_id, correlation_id))


class Saga(Startable[P]):
    """A named, versioned, ordered list of steps over a pydantic payload model."""

    kind: ClassVar[SagaKind] = SagaKind.ORCHESTRATED

    def __init__(
        self,
        name: str,
        *,
        payload: type[P],
        version: int = 1,
        deadline: timedelta | float | None = None,
        register: bool = True,
    ) -> None:
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise DefinitionError(f"saga name {name!r} must match {NAME_RE.pattern}")
        if not (isinstance(payload, type) and issubclass(payload, BaseModel)):
            raise DefinitionError(f"saga {name!r}: payload must be a pydantic model class")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise DefinitionError(f"saga {name!r}: version must be a positive int")
        self.name = name
        self.payload_model: type[P] = payload
        self.version = version
        self.deadline = (
            seconds_of(deadline, f"saga {name!r}: deadline") if deadline is not None else None
        )
        self.steps: list[StepDef] = []
        self._plan: Plan | None = None
        self._group: tuple[str, bool] | None = None  # inside ``with saga.parallel(...)``
        self._fingerprint: str | None = None
        if register:
            registry.register(self)

    def __repr__(self) -> str:
        return f"<Saga {self.name} v{self.version} steps={[s.name for s in self.steps]}>"

    # -- declaring steps -----------------------------------------------------------------------

    def step(
        self,
        *,
        queue: str,
        timeout: timedelta | float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        compensation: StepFn | None = REQUIRED,
        compensation_timeout: timedelta | float | None = None,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        name: str | None = None,
        pivot: bool = False,
        on_exhausted: Route | None = None,
        heartbeat: timedelta | float | None = None,
    ) -> Callable[[StepFn], StepFn]:
        """Declare a local step. ``compensation=None`` marks a step that needs none.

        ``pivot=True`` marks the point of no return: once it succeeded, the saga only goes
        forward (the steps after it take no compensation). ``on_exhausted`` is the step's
        failure route (``sagas.routes``: ``Compensate()``, ``RetryAfter(...)``, ``Park(...)``).
        ``heartbeat`` (shorter than ``timeout``) times an attempt out when no
        ``ctx.heartbeat()`` came for that long: a dead worker is found long before the
        step's whole timeout."""

        def decorate(fn: StepFn) -> StepFn:
            step_name = name or fn.__name__
            if compensation is not None and compensation is not REQUIRED:
                if not callable(compensation):
                    raise DefinitionError(
                        f"saga {self.name!r} step {step_name!r}: compensation must be a function"
                    )
            self._add(
                step_name,
                queue=queue,
                timeout=timeout,
                retry=retry,
                fn=fn,
                compensation_fn=compensation,
                compensation_timeout=compensation_timeout,
                compensation_retry=compensation_retry,
                required=compensation is REQUIRED,
                pivot=pivot,
                on_exhausted=on_exhausted,
                heartbeat=heartbeat,
            )
            return fn

        return decorate

    @contextmanager
    def parallel(self, name: str, *, compensate: str = "parallel") -> Iterator[Saga[P]]:
        """Declare parallel branches: the steps declared inside the block are dispatched
        together (each on its own queue) and joined when all succeeded; their results are all
        in ``ctx.results`` of the steps after. When a branch fails for good, the running
        branches are let finish or time out, then every branch that may have taken effect is
        compensated (all at once; ``compensate="reverse"``: one at a time, the last declared
        first), then the steps before the group, newest first.

            with trip.parallel("bookings"):
                trip.step(queue="flights", compensation=cancel_flight)(book_flight)
                trip.step(queue="hotels", compensation=cancel_hotel)(book_hotel)
        """
        where = f"saga {self.name!r} group {name!r}"
        if self._group is not None:
            raise DefinitionError(f"{where}: groups do not nest")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise DefinitionError(f"{where}: group name must match {NAME_RE.pattern}")
        if any(s.group == name for s in self.steps):
            raise DefinitionError(f"{where}: duplicate group name")
        if compensate not in ("parallel", "reverse"):
            raise DefinitionError(f'{where}: compensate must be "parallel" or "reverse"')
        before = len(self.steps)
        self._group = (name, compensate == "reverse")
        try:
            yield self
        finally:
            self._group = None
        branches = [s.name for s in self.steps[before:]]
        if len(branches) < 2:
            raise DefinitionError(f"{where}: a group needs two or more steps, got {branches}")

    def wait_for(
        self,
        name: str,
        *,
        model: type[BaseModel],
        timeout: timedelta | float | None = None,
        on_timeout: str | Continue = "fail",
    ) -> StepDef:
        """Declare a step that waits for the external signal ``name`` (a human approval, a
        webhook): ``sagas.signal(saga_id, name, data)`` ends it, with ``data`` (validated by
        ``model``) as its result. No worker is held while it waits. Past ``timeout`` the
        saga compensates (``on_timeout="fail"``) or goes on with ``Continue(default)``'s
        default as the result. A signal sent before the saga reaches the wait is kept for it."""
        where = f"saga {self.name!r} wait {name!r}"
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise DefinitionError(f"{where}: model must be a pydantic model class")
        if timeout is None:
            raise DefinitionError(f"{where}: timeout is required (how long to wait)")
        if on_timeout != "fail" and not isinstance(on_timeout, Continue):
            raise DefinitionError(f'{where}: on_timeout must be "fail" or Continue(default)')
        if isinstance(on_timeout, Continue):
            try:
                check_json(on_timeout.default, field="on_timeout.default")
            except Exception as exc:  # noqa: BLE001 - the payload module's typed errors
                raise DefinitionError(f"{where}: {exc}") from exc
        return self._add(
            name,
            queue=WAIT_QUEUE,
            timeout=timeout,
            retry=RetryPolicy(max_attempts=1),
            required=False,
            compensation_timeout=None,
            wait_model=model,
            wait_timeout_continues=on_timeout if isinstance(on_timeout, Continue) else None,
        )

    def remote_step(
        self,
        name: str,
        *,
        task: str,
        queue: str,
        compensation: str | None = REQUIRED,
        compensation_queue: str | None = None,
        timeout: timedelta | float = 30.0,
        retry: RetryPolicy = DEFAULT_RETRY,
        compensation_timeout: timedelta | float | None = None,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        arguments: Callable[[StepContext[Any]], dict[str, Any]] | None = None,
        pivot: bool = False,
        on_exhausted: Route | None = None,
        heartbeat: timedelta | float | None = None,
    ) -> StepDef:
        """Declare a step carried out by an existing Celery task in another codebase.

        The task is sent by name with keyword arguments ``arguments(ctx)`` (default:
        ``payload=<dict>, saga=<context dict>``); its return value is the step's result and any
        exception it ends with is a failure (retried per ``retry``).
        """
        for label, value in (("task", task), ("compensation", compensation)):
            optional = label == "compensation" and (value is None or value is REQUIRED)
            if not optional and not _is_task_name(value):
                raise DefinitionError(
                    f"saga {self.name!r} step {name!r}: {label} must be a Celery task name"
                )
        return self._add(
            name,
            queue=queue,
            timeout=timeout,
            retry=retry,
            task=task,
            compensation_task=compensation,
            compensation_queue=compensation_queue,
            compensation_timeout=compensation_timeout,
            compensation_retry=compensation_retry,
            arguments=arguments,
            required=compensation is REQUIRED,
            pivot=pivot,
            on_exhausted=on_exhausted,
            heartbeat=heartbeat,
        )

    def _add(
        self,
        name: str,
        *,
        queue: str,
        timeout: timedelta | float,
        retry: RetryPolicy,
        required: bool,
        compensation_timeout: timedelta | float | None,
        compensation_queue: str | None = None,
        **kwargs: Any,
    ) -> StepDef:
        where = f"saga {self.name!r} step {name!r}"
        if self._plan is not None:
            raise DefinitionError(f"{where}: declared after the saga was first used")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise DefinitionError(f"{where}: step name must match {NAME_RE.pattern}")
        if any(s.name == name for s in self.steps):
            raise DefinitionError(f"{where}: duplicate step name")
        required = self._check_pivot(where, kwargs, required)
        if self._group is not None:
            kwargs["group"], kwargs["group_reverse"] = self._group
            route = kwargs.get("on_exhausted")
            if kwargs.get("pivot") or kwargs.get("wait_model") is not None:
                raise DefinitionError(f"{where}: a pivot or a wait cannot be a parallel branch")
            if isinstance(route, Park | AwaitOperator) or any(s.pivot for s in self.steps):
                raise DefinitionError(
                    f"{where}: a parallel branch must be able to compensate (no Park or "
                    "AwaitOperator route, not after the pivot)"
                )
        if required:
            raise DefinitionError(
                f"{where}: needs a compensation, or compensation=None to mark that it needs none"
            )
        for label, q in (("queue", queue), ("compensation_queue", compensation_queue)):
            if (q is not None or label == "queue") and (
                not isinstance(q, str) or not QUEUE_RE.fullmatch(q)
            ):
                raise DefinitionError(f"{where}: {label} {q!r} is not a valid queue name")
        if not isinstance(retry, RetryPolicy) or not isinstance(
            kwargs.get("compensation_retry", DEFAULT_COMPENSATION_RETRY), RetryPolicy
        ):
            raise DefinitionError(f"{where}: retry policies must be RetryPolicy instances")
        step_timeout = seconds_of(timeout, f"{where}: timeout")
        beat = kwargs.pop("heartbeat", None)
        if beat is not None:
            beat = seconds_of(beat, f"{where}: heartbeat")
            if beat >= step_timeout:
                raise DefinitionError(
                    f"{where}: heartbeat ({beat:g}s) must be shorter than timeout "
                    f"({step_timeout:g}s): it is the longest gap between heartbeats"
                )
        comp_timeout = (
            seconds_of(compensation_timeout, f"{where}: compensation_timeout")
            if compensation_timeout is not None
            else step_timeout
        )
        step = StepDef(
            saga=self.name,
            name=name,
            index=len(self.steps),
            queue=queue,
            timeout=step_timeout,
            retry=retry,
            compensation_queue=compensation_queue or queue,
            compensation_timeout=comp_timeout,
            heartbeat=beat,
            **kwargs,
        )
        self.steps.append(step)
        for listener in _step_listeners:
            listener(self, step)
        return step

    def _check_pivot(self, where: str, kwargs: dict[str, Any], required: bool) -> bool:
        """Check a new step's pivot and failure route; after the pivot no compensation is
        needed (or allowed). Returns whether a compensation is still required."""
        pivot, route = kwargs.get("pivot", False), kwargs.get("on_exhausted")
        after_pivot = any(s.pivot for s in self.steps)
        if not isinstance(pivot, bool):
            raise DefinitionError(f"{where}: pivot must be True or False")
        if pivot and after_pivot:
            pivot_name = next(s.name for s in self.steps if s.pivot)
            raise DefinitionError(f"{where}: a saga has one pivot ({pivot_name!r} is one)")
        if route is not None and not isinstance(
            route, Compensate | RetryAfter | Park | AwaitOperator
        ):
            raise DefinitionError(
                f"{where}: on_exhausted must be Compensate(), RetryAfter(...), Park(...) or "
                "AwaitOperator(...)"
            )
        if not after_pivot:
            return required
        if required:
            kwargs["compensation_fn"] = kwargs["compensation_task"] = None
            return False  # after the pivot nothing is compensated: none needed
        if kwargs.get("compensation_fn") or kwargs.get("compensation_task"):
            raise DefinitionError(
                f"{where}: comes after the pivot, so it is never compensated: "
                "declare it with compensation=None"
            )
        if isinstance(route, Compensate):
            raise DefinitionError(
                f"{where}: comes after the pivot, so it cannot route to Compensate()"
            )
        return False

    # -- using it -----------------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        """The pure core's view of this saga; freezes the definition on first use."""
        if self._plan is None:
            if not self.steps:
                raise DefinitionError(f"saga {self.name!r} has no steps")
            self._plan = Plan(tuple(s.plan() for s in self.steps))
        return self._plan

    @property
    def shape(self) -> list[dict[str, Any]]:
        """What a saga in flight depends on: its steps, in order, and which are compensated.
        Timeouts, retry policies, queues and the code inside a step may change under one
        version; a change here needs a new version number."""
        return [
            {"step": s.name, "compensable": s.compensable}
            | ({"wait": True} if s.is_wait else {})
            | ({"group": s.group} if s.group else {})
            | ({"pivot": True} if s.pivot else {})
            | ({"on_exhausted": s.on_exhausted.kind} if s.on_exhausted else {})
            for s in self.steps
        ]

    @property
    def fingerprint(self) -> str:
        """A short hash of ``shape``, stored with every saga this definition starts (computed
        once the definition is frozen: every transition compares it)."""
        if self._fingerprint is not None:
            return self._fingerprint
        text = json.dumps(self.shape, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        if self._plan is not None:  # frozen: no step can be added any more
            self._fingerprint = digest
        return digest

    def differs_from(self, stored_hash: str | None, steps: list[str]) -> str | None:
        """How this definition differs from the one a saga was started on, given the
        fingerprint stored with it and its steps (None: it does not). A saga started before
        fingerprints were stored is compared by step names."""
        names = [s.name for s in self.steps]
        if stored_hash == self.fingerprint or (stored_hash is None and names == steps):
            return None
        stored = f" (fingerprint {stored_hash})" if stored_hash else ""
        return (
            f"started on steps {steps}{stored}, defined here with steps {names} "
            f"(fingerprint {self.fingerprint})"
        )

    def wait_step(self, name: object) -> StepDef:
        """The step that takes signal ``name``: a wait, or a step whose failure route waits for
        an operator's go-ahead (``SignalUnknown`` naming the signals there are)."""
        for s in self.steps:
            if s.name == name and s.takes_signal:
                return s
        waits = [s.name for s in self.steps if s.takes_signal] or "none"
        raise SignalUnknown(
            f"saga {self.name!r} v{self.version} waits for no signal {name!r} (it waits for: "
            f"{waits})",
            field="name",
            saga=self.name,
        )

    def step_def(self, name_or_index: str | int) -> StepDef:
        if isinstance(name_or_index, int):
            return self.steps[name_or_index]
        for s in self.steps:
            if s.name == name_or_index:
                return s
        raise KeyError(f"saga {self.name!r} has no step {name_or_index!r}")


# -- the registry (``sagas.registry``), narrowed to orchestrated sagas -----------------------------


def get_orchestrated(name: object, version: int | None = None) -> Saga[Any]:
    """The registered orchestrated saga called ``name``: its newest version, or ``version``
    (``UnknownSaga`` if there is none, ``VersionUnavailable`` without that version)."""
    saga: Saga[Any] = lookup_as(name, Saga, "an orchestrated saga", version)
    return saga


def orchestrated_sagas() -> dict[str, Saga[Any]]:
    """The newest version of every registered orchestrated saga, by name."""
    return {n: d for n, d in registered().items() if isinstance(d, Saga)}


def orchestrated_versions() -> list[Saga[Any]]:
    """Every registered version of every orchestrated saga."""
    return [
        d
        for versions in registered_versions().values()
        for d in versions.values()
        if isinstance(d, Saga)
    ]


# -- extension point: binding step tasks once an app is configured -------------------------------
#
# Declaring a step touches no Celery; ``sagas.install``/the worker bootstrap binds the tasks of
# the steps declared so far and adds a listener here for those declared later.

StepListener = Callable[["Saga[Any]", StepDef], None]
_step_listeners: list[StepListener] = []


def on_step_declared(listener: StepListener) -> None:
    """Call ``listener(saga, step)`` for every step declared from now on."""
    if listener not in _step_listeners:
        _step_listeners.append(listener)


def seconds_of(value: timedelta | float | int, what: str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise DefinitionError(f"{what} must be seconds or a timedelta, got {value!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise DefinitionError(f"{what} must be positive and finite, got {value!r}")
    if seconds > MAX_SECONDS:
        raise DefinitionError(f"{what} must be at most {MAX_SECONDS:.0f} s (~10 years)")
    return seconds


def _is_task_name(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", value) is not None
