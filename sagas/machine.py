"""The pure core: ``decide(plan, saga, event) -> Decision``.

No I/O, no clock, no randomness: time arrives inside events (the database's clock), jitter is
derived from the saga id. The coordinator loads a ``SagaStatus``, calls ``decide``, persists the
new status and history in one transaction, and only then publishes the commands.

Rules, in one place:

- Forward: steps run one at a time in order. A reply is accepted only for the step's current
  attempt while that attempt is open; anything else (duplicate, stale, late) is recorded as
  ``reply_ignored`` and changes nothing.
- A retryable failure or a timeout with attempts left waits ``RetryPolicy.interval`` and retries.
- A permanent failure, exhausted retries, the saga deadline or a cancel start compensation: every
  step that succeeded, or whose outcome is unknown because an attempt of it timed out (even if a
  later attempt failed), is compensated one at a time, newest first. Steps known to have failed
  (every attempt reported failure), or never started, are not.
- A compensation that fails is retried per its policy; past it the step is parked
  (``compensation_failed``) and the saga stays ``compensating`` for an operator.
- A step's failure route (``sagas.routes``) says what exhausted retries lead to: compensation
  (the default), another round of retries after a delay, or ``parked`` for an operator (the
  saga stays ``pending``; an operator retry runs the step again).
- The pivot: once the step marked ``pivot`` succeeded, the saga only goes forward. Later steps
  are retried per their policy, then parked; a deadline is recorded and passes; a cancel is
  refused; nothing is ever compensated.
- ``completed`` and ``failed`` are absorbing, except that an operator's ``Rerun`` takes a failed
  saga back to its failed step when no effect before it was undone (``why_no_rerun``).
- Paused (``Pause``, an operator): replies to attempts already out are recorded and decided as
  usual, but every dispatch they lead to is held (``dispatch_held``: the step is due at once,
  as a timer); timers do not fire; signals are kept; cancel, retry and rerun are refused.
  ``Resume`` fires everything due at that moment, held dispatches first in step order: a step
  timeout or the saga deadline that passed while paused takes effect then (a deadline is not
  extended by a pause).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .retry import RetryPolicy
from .routes import AwaitOperator, Compensate, Park, RetryAfter, Route
from .state import (
    Action,
    HistoryKind,
    SagaState,
    StepState,
    check_saga_transition,
    check_step_transition,
)

MAX_ERROR_MESSAGE = 2000  # characters of an exception's message kept in the store
TIMEOUT_ERROR = "StepTimeout"
DEADLINE_ERROR = "SagaDeadlineExceeded"
CANCELLED_ERROR = "SagaCancelled"


# -- the plan: what the definition says, as plain data ---------------------------------------


@dataclass(frozen=True, slots=True)
class StepPlan:
    name: str
    timeout: float  # seconds per forward attempt
    retry: RetryPolicy
    compensable: bool
    compensation_timeout: float
    compensation_retry: RetryPolicy
    pivot: bool = False  # the point of no return (at most one per plan)
    on_exhausted: Route = Compensate()
    # Seconds: a forward attempt with no heartbeat for this long is timed out (its deadline
    # moves with each heartbeat, never past ``timeout``). None: only ``timeout`` holds.
    heartbeat: float | None = None
    # A wait for an external signal named like the step (no task runs): ``timeout`` is how
    # long it waits; past it, ``wait_default`` is the step's result ("continue") unless
    # ``wait_fails``, which compensates the steps done.
    wait: bool = False
    wait_fails: bool = True
    wait_default: Any = None
    # Parallel branches: consecutive steps with the same ``group`` are dispatched together and
    # joined when all succeeded; ``group_reverse`` compensates them one at a time, newest
    # declared first, instead of all at once.
    group: str | None = None
    group_reverse: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[StepPlan, ...]

    def index(self, name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise KeyError(name)

    @property
    def pivot(self) -> int | None:
        """The pivot step's index (None: the saga has none)."""
        return next((i for i, s in enumerate(self.steps) if s.pivot), None)

    def members(self, index: int) -> range:
        """The steps of ``index``'s parallel group (just ``index`` outside a group)."""
        group = self.steps[index].group
        if group is None:
            return range(index, index + 1)
        first = last = index
        while first > 0 and self.steps[first - 1].group == group:
            first -= 1
        while last + 1 < len(self.steps) and self.steps[last + 1].group == group:
            last += 1
        return range(first, last + 1)


# -- status: what the store holds ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str
    retryable: bool

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "retryable": self.retryable}

    @classmethod
    def of(cls, exc: BaseException, *, retryable: bool, type_name: str | None = None) -> ErrorInfo:
        """An exception as the store keeps it (type name, message cut to a bounded length)."""
        return cls(type_name or type(exc).__name__, str(exc)[:MAX_ERROR_MESSAGE], retryable)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ErrorInfo | None:
        if data is None:
            return None
        return cls(str(data["type"]), str(data["message"]), bool(data["retryable"]))


@dataclass(frozen=True, slots=True)
class StepStatus:
    name: str
    state: StepState = StepState.PENDING
    attempt: int = 0  # forward attempts dispatched so far
    compensation_attempt: int = 0
    result: Any = None
    error: ErrorInfo | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline_at: datetime | None = None  # set while an attempt is in flight
    next_attempt_at: datetime | None = None  # set while waiting to retry
    in_doubt: bool = False  # an earlier attempt timed out or was superseded: effect unknown
    # With a heartbeat interval, ``deadline_at`` is the attempt's heartbeat deadline and
    # ``timeout_at`` its hard one (the step's timeout from dispatch).
    timeout_at: datetime | None = None
    heartbeat_at: datetime | None = None  # the open attempt's last heartbeat
    progress: Any = None  # the last heartbeat's details, of any attempt (the next one reads it)

    @property
    def in_flight(self) -> bool:
        return self.deadline_at is not None


@dataclass(frozen=True, slots=True)
class SagaStatus:
    id: str
    state: SagaState
    steps: tuple[StepStatus, ...]
    deadline_at: datetime | None = None
    failure: ErrorInfo | None = None  # why compensation began
    paused_at: datetime | None = None  # an operator paused it then (None: not paused)

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def step(self, index: int) -> StepStatus:
        return self.steps[index]


def new_status(saga_id: str, plan: Plan, deadline_at: datetime | None) -> SagaStatus:
    return SagaStatus(
        id=saga_id,
        state=SagaState.STARTED,
        steps=tuple(StepStatus(name=s.name) for s in plan.steps),
        deadline_at=deadline_at,
    )


def past_pivot(plan: Plan, saga: SagaStatus) -> bool:
    """Has the pivot step succeeded (so the saga may only go forward)?"""
    pivot = plan.pivot
    return pivot is not None and saga.steps[pivot].state is StepState.SUCCEEDED


def is_parked(saga: SagaStatus) -> bool:
    """Is the saga waiting for an operator (a step or a compensation parked)?"""
    return any(s.state in (StepState.PARKED, StepState.COMPENSATION_FAILED) for s in saga.steps)


def why_no_cancel(plan: Plan, saga: SagaStatus) -> str | None:
    """Why a cancel would change nothing (None: it would compensate)."""
    if saga.state not in (SagaState.STARTED, SagaState.PENDING):
        return f"saga is {saga.state.value}"
    if saga.paused:
        return PAUSED_REFUSAL
    if past_pivot(plan, saga):
        pivot = plan.steps[plan.pivot or 0].name
        return f"saga passed its pivot step {pivot!r} and only goes forward"
    return None


PAUSED_REFUSAL = "saga is paused: resume it first"


def why_no_pause(saga: SagaStatus) -> str | None:
    """Why a pause would change nothing (None: it pauses)."""
    if saga.state.terminal:
        return f"saga is {saga.state.value}"
    return "saga is paused already" if saga.paused else None


def why_no_resume(saga: SagaStatus) -> str | None:
    return None if saga.paused else f"saga is {saga.state.value} and not paused"


def rerun_from(plan: Plan, saga: SagaStatus) -> int | None:
    """The step a rerun starts from: a parked step, or a failed saga's failed step (the first
    of its parallel group). None: there is none."""
    for i, s in enumerate(saga.steps):
        if s.state is StepState.PARKED:
            return i
    if saga.state is SagaState.FAILED:
        failed = next((i for i, s in enumerate(saga.steps) if s.state is StepState.FAILED), None)
        return None if failed is None else plan.members(failed)[0]
    return None


def why_no_rerun(plan: Plan, saga: SagaStatus) -> str | None:
    """Why a rerun cannot happen (None: it can).

    A rerun keeps the saga's id, so its steps keep their idempotency keys and receipts. It may
    therefore only run again steps whose effect was never undone: a step that failed (known to
    have taken no effect) or was parked, after steps whose effects stand. A step before it that
    was compensated would have to run again under the same key, which a receipt refuses and a
    payment gateway answers with the old, refunded charge: that is a fork's job (a new id)."""
    if saga.paused:
        return PAUSED_REFUSAL
    if saga.state is SagaState.COMPENSATING:
        return "saga is compensating: retry its compensation instead"
    if saga.state is SagaState.COMPLETED:
        return "saga is completed: nothing failed (fork it to run steps again)"
    start = rerun_from(plan, saga)
    if start is None:
        if saga.state is SagaState.FAILED:
            return "no step of it is known to have failed without effect (fork it instead)"
        return f"saga is {saga.state.value} with no parked step"
    if saga.state is SagaState.PENDING:
        return None
    for i, s in enumerate(saga.steps):
        undone = s.state in (StepState.COMPENSATED, StepState.TIMED_OUT) or (
            s.state is StepState.COMPENSATION_FAILED
        )
        if undone or (i >= start and s.state is StepState.SUCCEEDED):
            name = s.name
            return (
                f"step {name!r} was {s.state.value}: running it again under the same "
                f"idempotency key is unsafe; fork the saga from {name!r} instead"
            )
    return None


# -- events: what happened ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    at: datetime


@dataclass(frozen=True, slots=True)
class StepSucceeded:
    step: int
    attempt: int
    action: Action
    at: datetime
    result: Any = None


@dataclass(frozen=True, slots=True)
class StepFailed:
    step: int
    attempt: int
    action: Action
    at: datetime
    error: ErrorInfo = field(default_factory=lambda: ErrorInfo("Error", "", True))


@dataclass(frozen=True, slots=True)
class Wake:
    """Time passed: fire every timer (retry, step timeout, saga deadline) due at ``at``."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Cancel:
    at: datetime
    reason: str = ""
    by: str = ""  # who asked (an operator; empty for code that did not say)


@dataclass(frozen=True, slots=True)
class Retry:
    """An operator re-drives a saga: the open step's next attempt, or a parked compensation,
    is dispatched now (one more attempt; on failure it is parked again)."""

    at: datetime
    reason: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class Pause:
    """An operator stops new dispatches; what is out may still answer."""

    at: datetime
    reason: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class Resume:
    at: datetime
    reason: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class Rerun:
    """An operator re-runs a failed saga from its failed step, or a parked step, in the same
    saga (``why_no_rerun``). ``deadline_at``: the saga's new deadline (a failed saga's old one
    has passed; None keeps it)."""

    at: datetime
    reason: str = ""
    by: str = ""
    deadline_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Forward attempt ``attempt`` of step ``step`` is alive (``details``: its progress).
    ``started``: the worker's mark that the attempt began, which keeps the progress."""

    step: int
    attempt: int
    at: datetime
    details: Any = None
    started: bool = False


@dataclass(frozen=True, slots=True)
class Signal:
    """An external signal for the wait step ``step`` (validated data, idempotency id)."""

    step: int
    at: datetime
    data: Any
    signal_id: str


Event = (
    Start
    | StepSucceeded
    | StepFailed
    | Wake
    | Cancel
    | Retry
    | Signal
    | Heartbeat
    | Pause
    | Resume
    | Rerun
)


# -- commands and history: what to do and what to record ----------------------------------------


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send attempt ``attempt`` of step ``step``'s ``action`` to its queue."""

    step: int
    attempt: int
    action: Action
    deadline_at: datetime


@dataclass(frozen=True, slots=True)
class AwaitSignal:
    """The saga now waits at step ``step`` for its signal (one may have arrived already)."""

    step: int


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Ask for a ``Wake`` at ``at`` (a countdown message; the sweeper is the backstop)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Parked:
    """A step (its compensation, or its forward side when routed so) is exhausted: flag the
    saga for an operator."""

    step: int
    error: ErrorInfo
    action: Action = Action.COMPENSATE


@dataclass(frozen=True, slots=True)
class Finished:
    state: SagaState


Command = Dispatch | AwaitSignal | WakeAt | Parked | Finished


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    kind: HistoryKind
    step: str | None = None
    attempt: int | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    status: SagaStatus
    commands: tuple[Command, ...] = ()
    history: tuple[HistoryRecord, ...] = ()
    # The status changed without anything worth a history row (a heartbeat): still written.
    touched: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.history) or self.touched


# -- the decision function --------------------------------------------------------------------


def decide(plan: Plan, saga: SagaStatus, event: Event) -> Decision:
    """Apply ``event`` to ``saga`` and return the new status, commands and history."""
    b = _Builder(plan, saga)
    if isinstance(event, Rerun):
        if why_no_rerun(plan, saga) is None:
            _rerun(b, event)
        return b.build()
    if saga.state.terminal:
        _after_the_end(b, event)
        return b.build()
    if saga.paused and isinstance(event, Wake | Retry | Signal | Pause):
        return b.build()  # timers wait, signals are kept, a retry waits for the resume
    match event:
        case Start(at=at):
            _start(b, at)
        case StepSucceeded() if event.action is Action.FORWARD:
            _forward_succeeded(b, event)
        case StepFailed() if event.action is Action.FORWARD:
            _forward_failed(b, event)
        case StepSucceeded():
            _compensation_succeeded(b, event)
        case StepFailed():
            _compensation_failed(b, event)
        case Wake(at=at):
            _wake(b, at)
        case Signal():
            _signal(b, event)
        case Heartbeat():
            _heartbeat(b, event)
        case Cancel() | Retry() | Pause() | Resume():
            _operator(b, event)
    return b.build()


def _start(b: _Builder, at: datetime) -> None:
    # A fork starts with the steps it reuses succeeded: it begins at the first other.
    saga = b.saga
    first = next((i for i, s in enumerate(saga.steps) if s.state is StepState.PENDING), 0)
    if saga.state is SagaState.STARTED and saga.steps[first].state is StepState.PENDING:
        b.record(HistoryKind.SAGA_STARTED)
        b.set_saga(SagaState.PENDING)
        _dispatch_forward(b, first, at)


def _heartbeat(b: _Builder, ev: Heartbeat) -> None:
    """An open attempt's heartbeat: its progress is kept and, with a heartbeat interval, its
    deadline moves to ``at`` + that interval (capped by the hard deadline). A heartbeat of
    an attempt that is not open changes nothing: the caller learns it is fenced."""
    if b.saga.state is not SagaState.PENDING or _open_attempt(
        b, ev.step, ev.attempt, Action.FORWARD
    ):
        return
    s, plan = b.saga.steps[ev.step], b.plan.steps[ev.step]
    deadline = s.deadline_at
    if plan.heartbeat is not None and s.timeout_at is not None:
        deadline = min(ev.at + timedelta(seconds=plan.heartbeat), s.timeout_at)
    progress = s.progress if ev.started else ev.details
    b.set_step(ev.step, heartbeat_at=ev.at, progress=progress, deadline_at=deadline)
    b.touched = True


def _operator(b: _Builder, event: Cancel | Retry | Pause | Resume) -> None:
    """An operator's action on an active saga (the saga is not paused, unless it resumes)."""
    match event:
        case Cancel(at=at, reason=reason, by=by):
            if why_no_cancel(b.plan, b.saga) is None:
                b.record(HistoryKind.CANCEL_REQUESTED, detail=_who(by, reason))
                _begin_compensation(b, ErrorInfo(CANCELLED_ERROR, reason, False), at)
        case Retry(at=at, reason=reason, by=by):
            _operator_retry(b, at, reason, by)
        case Pause(at=at, reason=reason, by=by):
            b.saga = replace(b.saga, paused_at=at)
            b.record(HistoryKind.SAGA_PAUSED, detail=_who(by, reason))
        case Resume() if b.saga.paused:
            _resume(b, event)


def _who(by: str, reason: str) -> dict[str, Any]:
    """Who and why, as every operator action records them."""
    return {"by": by, "reason": reason} if by else {"reason": reason}


def _resume(b: _Builder, ev: Resume) -> None:
    paused_at = b.saga.paused_at
    assert paused_at is not None
    b.saga = replace(b.saga, paused_at=None)
    detail = {**_who(ev.by, ev.reason), "paused_at": paused_at.isoformat()}
    b.record(HistoryKind.SAGA_RESUMED, detail=detail)
    _wake(b, ev.at)  # everything due now: held dispatches, and timers that passed meanwhile
    for i, (plan, s) in enumerate(zip(b.plan.steps, b.saga.steps, strict=True)):
        waiting = (plan.wait and s.state is StepState.RUNNING) or (
            s.state is StepState.PARKED and s.in_flight
        )
        if waiting and not any(isinstance(c, AwaitSignal) and c.step == i for c in b.commands):
            b.commands.append(AwaitSignal(i))  # take a signal kept while paused
    later = next_wakeup(b.saga)
    if later is not None and later > ev.at:
        b.commands.append(WakeAt(later))


def _rerun(b: _Builder, ev: Rerun) -> None:
    start = rerun_from(b.plan, b.saga)
    assert start is not None
    was = b.saga.steps[start].state
    b.record(
        HistoryKind.OPERATOR_RERUN,
        start,
        detail={**_who(ev.by, ev.reason), "was": was.value, "saga_was": b.saga.state.value},
    )
    if b.saga.state is SagaState.FAILED:
        for i in range(start, len(b.saga.steps)):
            if b.saga.steps[i].state in (StepState.FAILED, StepState.SKIPPED):
                b.set_step(
                    i, state=StepState.PENDING, error=None, finished_at=None, next_attempt_at=None
                )
        deadline = ev.deadline_at or b.saga.deadline_at
        b.saga = replace(b.saga, failure=None, deadline_at=deadline)
        b.set_saga(SagaState.PENDING)
        _dispatch_forward(b, start, ev.at)
        return
    b.dispatch(start, Action.FORWARD, ev.at)  # a parked step: its next attempt, same key


def _after_the_end(b: _Builder, event: Event) -> None:
    """A finished saga changes no more: late replies and signals are recorded as ignored."""
    if isinstance(event, StepSucceeded | StepFailed):
        b.ignore(event, "saga already " + b.saga.state.value)
    elif isinstance(event, Signal):
        _signal(b, event)


def next_wakeup(saga: SagaStatus) -> datetime | None:
    """The earliest time at which a ``Wake`` could change this saga (None: nothing pending)."""
    if saga.state.terminal or saga.paused:
        return None  # a paused saga has no timer the sweeper should fire
    times = [t for s in saga.steps for t in (s.deadline_at, s.next_attempt_at) if t is not None]
    if saga.deadline_at is not None and saga.state in (SagaState.STARTED, SagaState.PENDING):
        times.append(saga.deadline_at)
    return min(times, default=None)


# -- forward path -----------------------------------------------------------------------------


def why_not_open(step: StepStatus, action: Action, attempt: int) -> str | None:
    """Why (action, attempt) is not the step's open attempt, or None when it is: the attempt
    the saga dispatched last and still waits for. The one answer to that question: replies,
    redelivered commands and re-published outbox entries are all judged by it."""
    running = StepState.RUNNING if action is Action.FORWARD else StepState.COMPENSATING
    current = step.attempt if action is Action.FORWARD else step.compensation_attempt
    if step.state is not running:
        return f"step is {step.state.value}"
    if attempt != current:
        return f"stale attempt {attempt} (current {current})"
    if not step.in_flight:
        return f"attempt {attempt} already settled"
    return None


def is_open_attempt(step: StepStatus, action: Action, attempt: int) -> bool:
    return why_not_open(step, action, attempt) is None


def _open_attempt(b: _Builder, step: int, attempt: int, action: Action) -> str | None:
    """Why a reply for (step, attempt) cannot be accepted, or None when it can."""
    if not 0 <= step < len(b.saga.steps):
        return "unknown step"
    return why_not_open(b.saga.steps[step], action, attempt)


def _forward_succeeded(b: _Builder, ev: StepSucceeded) -> None:
    why = _open_attempt(b, ev.step, ev.attempt, Action.FORWARD)
    if why is None and b.saga.state is not SagaState.PENDING:
        why = "saga is " + b.saga.state.value
    if why is not None:
        b.ignore(ev, why)
        return
    b.set_step(
        ev.step,
        state=StepState.SUCCEEDED,
        result=ev.result,
        error=None,
        finished_at=ev.at,
        deadline_at=None,
    )
    b.record(HistoryKind.STEP_SUCCEEDED, ev.step, ev.attempt)
    _after_step(b, ev.step, ev.at)


def _after_step(b: _Builder, index: int, at: datetime) -> None:
    """Step ``index`` succeeded: pass the pivot, then the next step or the end. A branch of a
    parallel group waits for its siblings: the group goes on when all succeeded, or begins
    compensation once the last sibling settled after one failed."""
    members = b.plan.members(index)
    if len(members) > 1:
        if _group_failed(b, members):
            _settle_group(b, members, at)
            return
        if any(b.saga.steps[j].state is not StepState.SUCCEEDED for j in members):
            return
        b.record(HistoryKind.GROUP_JOINED, detail={"group": b.plan.steps[index].group})
        index = members[-1]
    if b.plan.steps[index].pivot:
        b.record(HistoryKind.PIVOT_PASSED, index)
    if index + 1 < len(b.plan.steps):
        _dispatch_forward(b, index + 1, at)
    else:
        b.set_saga(SagaState.COMPLETED)
        b.record(HistoryKind.SAGA_COMPLETED)
        b.commands.append(Finished(SagaState.COMPLETED))


def _forward_failed(b: _Builder, ev: StepFailed) -> None:
    why = _open_attempt(b, ev.step, ev.attempt, Action.FORWARD)
    if why is None and b.saga.state is not SagaState.PENDING:
        why = "saga is " + b.saga.state.value
    if why is not None:
        b.ignore(ev, why)
        return
    b.record(HistoryKind.STEP_FAILED, ev.step, ev.attempt, ev.error.as_json())
    _after_forward_failure(b, ev.step, ev.error, ev.at)


def _after_forward_failure(b: _Builder, index: int, error: ErrorInfo, at: datetime) -> None:
    """Retry if the policy allows, else follow the step's failure route."""
    step, plan = b.saga.steps[index], b.plan.steps[index]
    members = b.plan.members(index)
    if len(members) > 1 and _group_failed(b, members):
        # A sibling failed for good: this branch is not retried, only settled.
        doubt = error.type == TIMEOUT_ERROR or step.in_doubt
        final = StepState.TIMED_OUT if doubt else StepState.FAILED
        b.set_step(index, state=final, error=error, deadline_at=None, finished_at=at)
        _settle_group(b, members, at)
        return
    policy = plan.retry
    retryable = error.retryable and policy.is_retryable(error.type)
    # Attempts count on across rounds (RetryAfter): the policy applies to each round.
    in_round = (step.attempt - 1) % policy.max_attempts + 1
    if retryable and in_round < policy.max_attempts:
        wait = policy.interval(in_round, f"{b.saga.id}:{step.name}")
        _retry_at(b, index, error, at + timedelta(seconds=wait), {"interval": round(wait, 6)})
        return
    route = plan.on_exhausted
    rounds = (step.attempt - 1) // policy.max_attempts + 1
    if isinstance(route, RetryAfter) and retryable and rounds <= route.times:
        when = at + timedelta(seconds=route.seconds)
        detail = {"interval": route.seconds, "route": route.kind, "round": rounds + 1}
        _retry_at(b, index, error, when, detail)
        return
    if isinstance(route, Park | AwaitOperator) or past_pivot(b.plan, b.saga):
        _park(b, index, error, at)
        return
    # Known not to have taken effect only if no attempt of it ever ended in doubt.
    doubt = error.type == TIMEOUT_ERROR or step.in_doubt
    final = StepState.TIMED_OUT if doubt else StepState.FAILED
    b.set_step(index, state=final, error=error, deadline_at=None, finished_at=at)
    if len(members) > 1:
        running = [
            b.saga.steps[j].name for j in members if b.saga.steps[j].state is StepState.RUNNING
        ]
        b.record(
            HistoryKind.GROUP_FAILED,
            index,
            step.attempt,
            {"group": plan.group, "waiting_for": running},
        )
        _settle_group(b, members, at)
        return
    _begin_compensation(b, error, at)


def _dispatch_forward(b: _Builder, index: int, at: datetime) -> None:
    """Dispatch step ``index``, or every branch of the parallel group it starts."""
    for j in b.plan.members(index):
        b.dispatch(j, Action.FORWARD, at)


def _group_failed(b: _Builder, members: range) -> bool:
    """Has a branch of this group failed for good (while the saga still goes forward)?"""
    return b.saga.state is SagaState.PENDING and any(
        b.saga.steps[j].state in (StepState.FAILED, StepState.TIMED_OUT) for j in members
    )


def _settle_group(b: _Builder, members: range, at: datetime) -> None:
    """A branch failed for good: siblings waiting to retry are settled now, running ones are
    let finish or time out; once none runs, compensation begins (every branch that may have
    taken effect, then the steps before the group)."""
    for j in members:
        s = b.saga.steps[j]
        if s.state is StepState.PENDING and s.attempt > 0:
            in_doubt = s.in_doubt or (s.error is not None and s.error.type == TIMEOUT_ERROR)
            final = StepState.TIMED_OUT if in_doubt else StepState.FAILED
            b.set_step(j, state=final, next_attempt_at=None, finished_at=at)
    if any(b.saga.steps[j].state is StepState.RUNNING for j in members):
        return
    settled = (StepState.FAILED, StepState.TIMED_OUT)
    first = next((b.saga.steps[j].error for j in members if b.saga.steps[j].state in settled), None)
    _begin_compensation(b, first or ErrorInfo("GroupFailed", "a branch failed", False), at)


def _park(b: _Builder, index: int, error: ErrorInfo, at: datetime) -> None:
    """The step waits for an operator (``Park``, ``AwaitOperator`` or past the pivot); with
    ``AwaitOperator``, also for its signal, until a timeout (a durable timer)."""
    step, route = b.saga.steps[index], b.plan.steps[index].on_exhausted
    doubt = step.in_doubt or error.type == TIMEOUT_ERROR
    detail: dict[str, Any] = {}
    until = None
    if isinstance(route, Park):
        detail["reason"] = route.reason
    elif isinstance(route, AwaitOperator):
        until = at + timedelta(seconds=route.seconds)
        detail["reason"] = f"waiting for signal {step.name!r} (an operator's go-ahead)"
        detail["until"] = until.isoformat()
    else:
        detail["reason"] = "retries exhausted past the pivot"
    b.set_step(index, state=StepState.PARKED, error=error, deadline_at=until, in_doubt=doubt)
    b.record(HistoryKind.STEP_PARKED, index, step.attempt, {**detail, **error.as_json()})
    b.commands.append(Parked(index, error, Action.FORWARD))
    if until is not None:
        b.commands.append(AwaitSignal(index))
        b.commands.append(WakeAt(until))


def _retry_at(
    b: _Builder, index: int, error: ErrorInfo, when: datetime, detail: dict[str, Any]
) -> None:
    step = b.saga.steps[index]
    b.set_step(index, state=StepState.PENDING, error=error, deadline_at=None, next_attempt_at=when)
    b.record(
        HistoryKind.RETRY_SCHEDULED, index, step.attempt + 1, {"at": when.isoformat(), **detail}
    )
    b.commands.append(WakeAt(when))


def _begin_compensation(b: _Builder, reason: ErrorInfo, at: datetime) -> None:
    # Settle every forward step first: in flight means outcome unknown (compensate it);
    # waiting to retry after a timeout is also unknown; after a reported failure, known failed.
    for i, s in enumerate(b.saga.steps):
        if s.state is StepState.RUNNING:
            b.set_step(i, state=StepState.TIMED_OUT, deadline_at=None, finished_at=at)
        elif s.state is StepState.PENDING and s.attempt > 0:
            in_doubt = s.in_doubt or (s.error is not None and s.error.type == TIMEOUT_ERROR)
            final = StepState.TIMED_OUT if in_doubt else StepState.FAILED
            b.set_step(i, state=final, next_attempt_at=None, finished_at=at)
        elif s.state is StepState.PENDING:
            b.set_step(i, state=StepState.SKIPPED, next_attempt_at=None)  # held while paused
        elif s.state is StepState.PARKED:  # an operator cancelled it (before any pivot)
            final = StepState.TIMED_OUT if s.in_doubt else StepState.FAILED
            b.set_step(i, state=final, finished_at=at, deadline_at=None)
    b.saga = replace(b.saga, failure=reason)
    b.set_saga(SagaState.COMPENSATING)
    b.record(HistoryKind.COMPENSATION_STARTED, detail=reason.as_json())
    _next_compensation(b, at)


def _next_compensation(b: _Builder, at: datetime) -> None:
    """Dispatch the newest step still to compensate, or finish the saga as failed."""

    def owed(j: int) -> bool:
        state = b.saga.steps[j].state
        return state in (StepState.SUCCEEDED, StepState.TIMED_OUT) and b.plan.steps[j].compensable

    for i in range(len(b.saga.steps) - 1, -1, -1):
        s = b.saga.steps[i]
        if owed(i):
            members = b.plan.members(i)
            if len(members) > 1 and not b.plan.steps[i].group_reverse:
                for j in reversed(members):  # a parallel group's branches, all at once
                    if owed(j):
                        b.dispatch(j, Action.COMPENSATE, at)
            else:
                b.dispatch(i, Action.COMPENSATE, at)
            return
        if s.state in (StepState.COMPENSATING, StepState.COMPENSATION_FAILED):
            return  # one at a time; a parked one blocks older ones until an operator acts
    b.set_saga(SagaState.FAILED)
    b.record(HistoryKind.SAGA_FAILED, detail=b.saga.failure.as_json() if b.saga.failure else None)
    b.commands.append(Finished(SagaState.FAILED))


# -- compensation path --------------------------------------------------------------------------


def _compensation_succeeded(b: _Builder, ev: StepSucceeded) -> None:
    why = _open_attempt(b, ev.step, ev.attempt, Action.COMPENSATE)
    if why is not None:
        b.ignore(ev, why)
        return
    b.set_step(ev.step, state=StepState.COMPENSATED, deadline_at=None, finished_at=ev.at)
    b.record(HistoryKind.STEP_COMPENSATED, ev.step, ev.attempt)
    _next_compensation(b, ev.at)


def _compensation_failed(b: _Builder, ev: StepFailed) -> None:
    why = _open_attempt(b, ev.step, ev.attempt, Action.COMPENSATE)
    if why is not None:
        b.ignore(ev, why)
        return
    b.record(HistoryKind.COMPENSATION_FAILED, ev.step, ev.attempt, ev.error.as_json())
    _after_compensation_failure(b, ev.step, ev.error, ev.at)


def _after_compensation_failure(b: _Builder, index: int, error: ErrorInfo, at: datetime) -> None:
    step, policy = b.saga.steps[index], b.plan.steps[index].compensation_retry
    retryable = error.retryable and policy.is_retryable(error.type)
    if retryable and step.compensation_attempt < policy.max_attempts:
        wait = policy.interval(step.compensation_attempt, f"{b.saga.id}:{step.name}:undo")
        when = at + timedelta(seconds=wait)
        b.set_step(index, error=error, deadline_at=None, next_attempt_at=when)
        b.record(
            HistoryKind.RETRY_SCHEDULED,
            index,
            step.compensation_attempt + 1,
            {"at": when.isoformat(), "interval": round(wait, 6), "action": "compensate"},
        )
        b.commands.append(WakeAt(when))
        return
    b.set_step(index, state=StepState.COMPENSATION_FAILED, error=error, deadline_at=None)
    b.record(HistoryKind.COMPENSATION_PARKED, index, step.compensation_attempt, error.as_json())
    b.commands.append(Parked(index, error))


def _operator_retry(b: _Builder, at: datetime, reason: str, by: str = "") -> None:
    for i, s in enumerate(b.saga.steps):
        if b.saga.state is SagaState.COMPENSATING and s.state in (
            StepState.COMPENSATION_FAILED,
            StepState.COMPENSATING,
        ):
            action = Action.COMPENSATE
        elif b.saga.state is SagaState.PENDING and s.state in (
            StepState.RUNNING,
            StepState.PENDING,
            StepState.PARKED,
        ):
            if s.state is StepState.PENDING and s.attempt == 0:
                continue
            action = Action.FORWARD
        else:
            continue
        b.record(HistoryKind.OPERATOR_RETRY, i, detail={**_who(by, reason), "was": s.state.value})
        if s.state is StepState.RUNNING:
            # The old attempt is stale, but it may still run: its outcome is now unknown.
            b.set_step(i, state=StepState.PENDING, deadline_at=None, in_doubt=True)
        elif s.state is StepState.COMPENSATION_FAILED:
            b.set_step(i, state=StepState.COMPENSATING)
        b.dispatch(i, action, at)
        return


# -- waits for signals ----------------------------------------------------------------------------


def why_no_signal(plan: Plan, saga: SagaStatus, step: int) -> str | None:
    """Why a signal for wait step ``step`` cannot be taken now (None: it can). "not yet" means
    the saga has not reached the wait: the signal is kept for it."""
    if not 0 <= step < len(plan.steps) or not takes_signal(plan.steps[step]):
        return "no such wait"
    s = saga.steps[step]
    if not plan.steps[step].wait:  # AwaitOperator: only while parked and waiting for it
        if saga.state is not SagaState.PENDING:
            return f"saga is {saga.state.value}"
        return None if s.state is StepState.PARKED and s.in_flight else "not yet"
    if saga.state is not SagaState.PENDING or s.state is StepState.SKIPPED:
        return f"saga is {saga.state.value}"
    if s.state is StepState.PENDING:
        return "not yet"
    if s.state is not StepState.RUNNING:
        return f"wait is {s.state.value}"
    return None


def takes_signal(step: StepPlan) -> bool:
    """Does this step take a signal: a wait, or a step that waits for an operator's?"""
    return step.wait or isinstance(step.on_exhausted, AwaitOperator)


def _signal(b: _Builder, ev: Signal) -> None:
    why = why_no_signal(b.plan, b.saga, ev.step)
    if why == "not yet" or why == "no such wait":
        return  # kept by the caller until the saga reaches the wait (or refused by it)
    if why is not None:
        b.record(HistoryKind.SIGNAL_IGNORED, ev.step, None, {"id": ev.signal_id, "why": why})
        return
    step = b.saga.steps[ev.step]
    if not b.plan.steps[ev.step].wait:  # the operator's go-ahead: run the step again
        b.record(HistoryKind.SIGNAL_RECEIVED, ev.step, step.attempt, {"id": ev.signal_id})
        b.dispatch(ev.step, Action.FORWARD, ev.at)
        return
    b.set_step(
        ev.step, state=StepState.SUCCEEDED, result=ev.data, finished_at=ev.at, deadline_at=None
    )
    b.record(HistoryKind.SIGNAL_RECEIVED, ev.step, step.attempt, {"id": ev.signal_id})
    _after_step(b, ev.step, ev.at)


def _wait_timed_out(b: _Builder, index: int, at: datetime) -> None:
    plan, step = b.plan.steps[index], b.saga.steps[index]
    outcome = "fail" if plan.wait_fails else "continue"
    b.record(HistoryKind.WAIT_TIMED_OUT, index, step.attempt, {"outcome": outcome})
    if plan.wait_fails:
        error = ErrorInfo(
            TIMEOUT_ERROR, f"no signal {plan.name!r} before the wait's timeout", False
        )
        # A wait takes no effect: it is known failed, never compensated.
        b.set_step(index, state=StepState.FAILED, error=error, deadline_at=None, finished_at=at)
        _begin_compensation(b, error, at)
        return
    b.set_step(
        index,
        state=StepState.SUCCEEDED,
        result=plan.wait_default,
        finished_at=at,
        deadline_at=None,
    )
    _after_step(b, index, at)


def _operator_timed_out(b: _Builder, index: int, at: datetime) -> None:
    """No go-ahead before the step's ``AwaitOperator`` timeout: compensate (past the pivot it
    stays parked, with no timer, for an operator)."""
    step = b.saga.steps[index]
    past = past_pivot(b.plan, b.saga)
    b.record(
        HistoryKind.WAIT_TIMED_OUT, index, step.attempt, {"outcome": "park" if past else "fail"}
    )
    if past:
        b.set_step(index, deadline_at=None)
        return
    final = StepState.TIMED_OUT if step.in_doubt else StepState.FAILED
    b.set_step(index, state=final, deadline_at=None, finished_at=at)
    _begin_compensation(b, step.error or ErrorInfo(TIMEOUT_ERROR, "no go-ahead", False), at)


# -- timers -----------------------------------------------------------------------------------


def _wake(b: _Builder, at: datetime) -> None:
    saga = b.saga
    forward = saga.state in (SagaState.STARTED, SagaState.PENDING)
    if forward and saga.deadline_at is not None and saga.deadline_at <= at:
        detail: dict[str, Any] = {"deadline": saga.deadline_at.isoformat()}
        if past_pivot(b.plan, saga):
            # Past the point of no return a deadline cannot undo anything: noted once, the
            # saga goes on forward.
            b.record(HistoryKind.DEADLINE_EXCEEDED, detail={**detail, "past_pivot": True})
            b.saga = replace(b.saga, deadline_at=None)
            saga = b.saga
        else:
            b.record(HistoryKind.DEADLINE_EXCEEDED, detail=detail)
            _begin_compensation(b, ErrorInfo(DEADLINE_ERROR, "saga deadline passed", False), at)
            return
    for i in range(len(saga.steps)):
        s = b.saga.steps[i]  # fresh: an earlier branch's timeout may have settled this one
        if s.deadline_at is not None and s.deadline_at <= at:
            timeout = ErrorInfo(TIMEOUT_ERROR, "no reply before the step's deadline", True)
            beat = b.plan.steps[i].heartbeat
            lapsed = s.timeout_at is not None and s.deadline_at < s.timeout_at
            if s.state is StepState.RUNNING and beat is not None and lapsed:
                # The heartbeat deadline passed before the hard one: the worker is gone.
                timeout = ErrorInfo(TIMEOUT_ERROR, f"no heartbeat for {beat:g}s", True)
                b.record(
                    HistoryKind.STEP_TIMED_OUT,
                    i,
                    s.attempt,
                    {"heartbeat": beat, "last_heartbeat": _iso(s.heartbeat_at)},
                )
                b.set_step(i, in_doubt=True)
                _after_forward_failure(b, i, timeout, at)
                continue
            if s.state is StepState.RUNNING and b.plan.steps[i].wait:
                _wait_timed_out(b, i, at)
                return
            if s.state is StepState.PARKED:
                _operator_timed_out(b, i, at)
                return
            if s.state is StepState.RUNNING:
                b.record(HistoryKind.STEP_TIMED_OUT, i, s.attempt)
                b.set_step(i, in_doubt=True)
                _after_forward_failure(b, i, timeout, at)
            elif s.state is StepState.COMPENSATING:
                b.record(
                    HistoryKind.STEP_TIMED_OUT, i, s.compensation_attempt, {"action": "compensate"}
                )
                _after_compensation_failure(b, i, timeout, at)
        elif s.next_attempt_at is not None and s.next_attempt_at <= at:
            action = Action.FORWARD if s.state is StepState.PENDING else Action.COMPENSATE
            b.dispatch(i, action, at)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


# -- a small mutable builder so each rule reads as a few lines ------------------------------------


class _Builder:
    def __init__(self, plan: Plan, saga: SagaStatus) -> None:
        self.plan = plan
        self.saga = saga
        self.commands: list[Command] = []
        self.history: list[HistoryRecord] = []
        self.touched = False

    def build(self) -> Decision:
        return Decision(self.saga, tuple(self.commands), tuple(self.history), self.touched)

    def record(
        self,
        kind: HistoryKind,
        step: int | None = None,
        attempt: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        name = self.saga.steps[step].name if step is not None else None
        self.history.append(HistoryRecord(kind, name, attempt, detail))

    def ignore(self, ev: StepSucceeded | StepFailed, why: str) -> None:
        ok = isinstance(ev, StepSucceeded)
        name = (
            self.saga.steps[ev.step].name if 0 <= ev.step < len(self.saga.steps) else str(ev.step)
        )
        detail = {"action": ev.action.value, "outcome": "ok" if ok else "error", "why": why}
        self.history.append(HistoryRecord(HistoryKind.REPLY_IGNORED, name, ev.attempt, detail))

    def set_saga(self, state: SagaState) -> None:
        if state is not self.saga.state:
            check_saga_transition(self.saga.state, state)
            # A saga that finishes while paused (its last reply came in) holds nothing more.
            paused_at = None if state.terminal else self.saga.paused_at
            self.saga = replace(self.saga, state=state, paused_at=paused_at)

    def set_step(self, index: int, **changes: Any) -> None:
        old = self.saga.steps[index]
        check_step_transition(old.state, changes.get("state", old.state))
        steps: Sequence[StepStatus] = self.saga.steps
        self.saga = replace(
            self.saga,
            steps=(*steps[:index], replace(old, **changes), *steps[index + 1 :]),
        )

    def dispatch(self, index: int, action: Action, at: datetime) -> None:
        old, plan = self.saga.steps[index], self.plan.steps[index]
        if self.saga.paused:
            self._hold(index, action, at)
            return
        if plan.wait and action is Action.FORWARD:
            # A wait runs no task: it holds a durable timer until its signal or its timeout.
            until = at + timedelta(seconds=plan.timeout)
            self.set_step(
                index,
                state=StepState.RUNNING,
                attempt=old.attempt + 1,
                started_at=old.started_at or at,
                deadline_at=until,
                next_attempt_at=None,
            )
            self.record(
                HistoryKind.WAITING_FOR_SIGNAL,
                index,
                old.attempt + 1,
                {"signal": plan.name, "until": until.isoformat()},
            )
            self.commands.append(AwaitSignal(index))
            return
        if action is Action.FORWARD:
            attempt = old.attempt + 1
            deadline = at + timedelta(seconds=plan.timeout)
            # With a heartbeat interval the heartbeat clock starts at the attempt's first sign
            # of life (the worker marks the start), not here: a command still queued behind
            # other work, or waiting for a worker to boot, has not missed a heartbeat. Until
            # then only the hard deadline holds; each heartbeat moves the deadline on.
            self.set_step(
                index,
                state=StepState.RUNNING,
                attempt=attempt,
                started_at=old.started_at or at,
                deadline_at=deadline,
                timeout_at=None if plan.heartbeat is None else deadline,
                heartbeat_at=None,
                next_attempt_at=None,
            )
            self.record(HistoryKind.STEP_DISPATCHED, index, attempt)
        else:
            attempt = old.compensation_attempt + 1
            deadline = at + timedelta(seconds=plan.compensation_timeout)
            self.set_step(
                index,
                state=StepState.COMPENSATING,
                compensation_attempt=attempt,
                deadline_at=deadline,
                timeout_at=None,
                next_attempt_at=None,
            )
            self.record(HistoryKind.COMPENSATION_DISPATCHED, index, attempt)
        self.commands.append(Dispatch(index, attempt, action, deadline))

    def _hold(self, index: int, action: Action, at: datetime) -> None:
        """Paused: the dispatch becomes a timer due now, which only a resume fires."""
        if action is Action.FORWARD:
            state = StepState.PENDING
        else:
            state = StepState.COMPENSATING
        self.set_step(index, state=state, deadline_at=None, next_attempt_at=at)
        self.record(HistoryKind.DISPATCH_HELD, index, None, {"action": action.value})
