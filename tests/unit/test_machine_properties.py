"""Property tests over the pure core, ``sagas.machine.decide``.

A random plan (1-5 steps, random retry policies, some steps without a compensation, some with a
failure route other than compensation, and sometimes a pivot step) is driven
from ``new_status`` + ``Start`` through a random script played by a faithful environment: it
keeps every ``Dispatch`` the core emitted and sometimes answers the open one (ok or error),
sometimes answers an old one late, re-sends replies already applied, invents stale replies,
lets time pass (``Wake``) so timeouts, retries and the saga deadline fire, cancels, and plays an
operator's ``Retry``, and sends heartbeats for open and stale attempts (some steps have a
heartbeat interval, so a silent attempt times out before its timeout). After the
script a *drain* phase answers every open dispatch with success and wakes at every timer, so most
runs end in a terminal state; a burst of further events is then thrown at the finished saga.

Each test below replays the same kind of run and checks one property over the whole trace.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sagas.machine import (
    Cancel,
    Decision,
    Dispatch,
    ErrorInfo,
    Event,
    Heartbeat,
    Pause,
    Plan,
    Rerun,
    Resume,
    Retry,
    SagaStatus,
    Signal,
    Start,
    StepFailed,
    StepPlan,
    StepSucceeded,
    Wake,
    decide,
    is_parked,
    new_status,
    next_wakeup,
    past_pivot,
    why_no_rerun,
)
from sagas.recovery import fork_status, why_no_fork
from sagas.retry import RetryPolicy
from sagas.routes import AwaitOperator, Compensate, Park, RetryAfter
from sagas.state import (
    SAGA_TRANSITIONS,
    STEP_TRANSITIONS,
    Action,
    HistoryKind,
    SagaState,
    StepState,
)
from tests.unit.properties import BASE, property_settings

PROPERTY_SETTINGS = property_settings(300)

# -- strategies ---------------------------------------------------------------------------------

forward_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 4),
    initial=st.sampled_from([0.5, 1.0, 3.0]),
    backoff=st.sampled_from([1.0, 2.0, 3.0]),
    max_interval=st.just(20.0),
    jitter=st.sampled_from([0.0, 0.1, 0.5]),
    non_retryable=st.sampled_from([(), ("OutOfStock",)]),
)
compensation_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 3),
    initial=st.sampled_from([0.5, 2.0]),
    backoff=st.sampled_from([1.0, 2.0]),
    max_interval=st.just(10.0),
    jitter=st.sampled_from([0.0, 0.2]),
)
# Compensation is the common route; Park and RetryAfter appear in about half of the steps.
routes = st.sampled_from(
    [Compensate(), Compensate(), Compensate(), Park("ops"), Park("ops"), RetryAfter(5.0, 1),
     RetryAfter(30.0, 2), AwaitOperator(60.0)]
)  # fmt: skip
step_plans = st.builds(
    StepPlan,
    name=st.just("?"),
    timeout=st.sampled_from([1.0, 5.0, 30.0]),
    retry=forward_policies,
    compensable=st.booleans(),
    compensation_timeout=st.sampled_from([1.0, 10.0]),
    compensation_retry=compensation_policies,
    on_exhausted=routes,
    heartbeat=st.sampled_from([None, None, 0.4, 0.9]),  # shorter than every timeout
)


def _plan(
    steps: list[StepPlan], pivot: int | None, group: tuple[int, int, bool] | None = None
) -> Plan:
    """Name the steps; with a pivot, the steps after it take no compensation (as a definition
    must declare them); ``group`` (first, size, reverse) makes consecutive steps parallel
    branches, which route exhaustion to compensation (a definition refuses Park there) and
    come before any pivot."""
    named = [replace(s, name=f"s{i}") for i, s in enumerate(steps)]
    if group is not None:
        first, size, reverse = group
        last = min(first + size, len(named)) - 1
        if first < last:
            for i in range(first, last + 1):
                route = named[i].on_exhausted
                if not isinstance(route, Compensate | RetryAfter):
                    route = Compensate()
                named[i] = replace(
                    named[i],
                    group="g",
                    group_reverse=reverse,
                    on_exhausted=route,
                    compensable=named[i].compensable or i % 2 == 0,
                )
            if pivot is not None and pivot <= last:
                pivot = None
    if pivot is not None and pivot < len(named):
        named = [
            replace(s, pivot=True) if i == pivot else replace(s, compensable=False)
            if i > pivot else s
            for i, s in enumerate(named)
        ]  # fmt: skip
    return Plan(tuple(named))


plans = st.builds(
    _plan,
    st.lists(step_plans, min_size=1, max_size=5),
    st.one_of(st.none(), st.integers(0, 4)),
    st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(2, 3), st.booleans())),
)

# Repeated kinds are drawn more often: answering the open dispatch is the common case.
KINDS = (
    "ok",
    "ok",
    "ok",
    "fail",
    "fail",
    "timeout",
    "late",
    "duplicate",
    "dup_last",
    "stale",
    "wake",
    "wake_next",
    "cancel",
    "start",
    "operator_retry",
    "heartbeat",
)


@dataclass(frozen=True)
class Move:
    kind: str
    pick: int
    seconds: float
    retryable: bool
    error_type: str


moves = st.builds(
    Move,
    kind=st.sampled_from(KINDS),
    pick=st.integers(0, 1000),
    seconds=st.sampled_from([0.0, 0.4, 1.0, 2.5, 7.0, 31.0, 400.0]),
    retryable=st.booleans(),
    error_type=st.sampled_from(["Boom", "OutOfStock"]),
)


@dataclass(frozen=True)
class Scenario:
    plan: Plan
    deadline: float | None
    script: tuple[Move, ...]


scenarios = st.builds(
    Scenario,
    plan=plans,
    deadline=st.one_of(st.none(), st.sampled_from([3.0, 20.0, 90.0, 600.0])),
    script=st.lists(moves, max_size=45).map(tuple),
)

# -- the simulated environment ------------------------------------------------------------------

Reply = StepSucceeded | StepFailed


@dataclass(frozen=True)
class Entry:
    """One call of ``decide``: what was sent, in which phase, and what came back."""

    phase: str  # "script", "drain" or "after" (events thrown at a finished saga)
    kind: str
    event: Event
    before: SagaStatus
    decision: Decision

    @property
    def after(self) -> SagaStatus:
        return self.decision.status

    @property
    def ignored(self) -> bool:
        return any(h.kind is HistoryKind.REPLY_IGNORED for h in self.decision.history)

    def dispatches(self, action: Action | None = None) -> list[Dispatch]:
        return [
            c
            for c in self.decision.commands
            if isinstance(c, Dispatch) and (action is None or c.action is action)
        ]


@dataclass
class Run:
    plan: Plan
    status: SagaStatus
    now: datetime = BASE
    trace: list[Entry] = field(default_factory=list)
    dispatched: list[Dispatch] = field(default_factory=list)
    accepted: list[Reply] = field(default_factory=list)

    def send(self, phase: str, kind: str, event: Event) -> Entry:
        decision = decide(self.plan, self.status, event)
        entry = Entry(phase, kind, event, self.status, decision)
        self.trace.append(entry)
        self.status = decision.status
        self.dispatched.extend(entry.dispatches())
        if isinstance(event, StepSucceeded | StepFailed) and not entry.ignored:
            self.accepted.append(event)
        return entry

    def open_dispatches(self) -> list[Dispatch]:
        return [d for d in self.dispatched if is_open(self.status, d.step, d.attempt, d.action)]

    def answer(self, d: Dispatch, ok: bool, move: Move | None = None) -> Reply:
        if ok:
            return StepSucceeded(d.step, d.attempt, d.action, self.now, {"step": d.step})
        assert move is not None
        error = ErrorInfo(move.error_type, "it broke", move.retryable)
        return StepFailed(d.step, d.attempt, d.action, self.now, error)

    def wake_at_next_timer(self, fallback: float) -> Wake:
        due = next_wakeup(self.status)
        self.now = max(self.now, due) if due is not None else self.now + timedelta(seconds=fallback)
        return Wake(self.now)


def is_open(status: SagaStatus, step: int, attempt: int, action: Action) -> bool:
    """The specification of "this reply answers the attempt the saga is waiting for"."""
    if not 0 <= step < len(status.steps):
        return False
    s = status.steps[step]
    if s.deadline_at is None:
        return False
    if action is Action.FORWARD:
        return (
            status.state is SagaState.PENDING
            and s.state is StepState.RUNNING
            and (s.attempt == attempt)
        )
    return s.state is StepState.COMPENSATING and s.compensation_attempt == attempt


def script_event(run: Run, move: Move) -> Event:
    """Translate one random move into an event the environment could really deliver."""
    kind, pick = move.kind, move.pick
    open_now = run.open_dispatches()
    if kind in ("ok", "fail") and open_now:
        return run.answer(open_now[pick % len(open_now)], kind == "ok", move)
    if kind == "late" and run.dispatched:
        return run.answer(run.dispatched[pick % len(run.dispatched)], move.retryable, move)
    if kind == "duplicate" and run.accepted:
        return replace(run.accepted[pick % len(run.accepted)], at=run.now)
    if kind == "dup_last" and run.accepted:
        return replace(run.accepted[-1], at=run.now)
    if kind == "timeout" and open_now:
        # Let the open attempt run out: wake exactly at (or just after) its deadline.
        deadline = open_now[pick % len(open_now)].deadline_at
        run.now = max(run.now, deadline + timedelta(seconds=move.seconds % 1))
        return Wake(run.now)
    if kind == "stale":
        n = len(run.plan.steps)
        step, attempt = pick % (n + 2) - 1, (pick // 7) % 6
        action = Action.FORWARD if pick % 2 else Action.COMPENSATE
        if move.retryable:
            return StepSucceeded(step, attempt, action, run.now, "stale")
        return StepFailed(step, attempt, action, run.now, ErrorInfo("Stale", "", True))
    if kind == "wake":
        run.now += timedelta(seconds=move.seconds)
        return Wake(run.now)
    if kind == "cancel":
        return Cancel(run.now, "customer asked")
    if kind == "start":
        return Start(run.now)
    if kind == "operator_retry":
        return Retry(run.now, "operator")
    if kind == "heartbeat" and run.dispatched:
        # Some time passes first (a heartbeat may come after its deadline: then it is late).
        d = run.dispatched[pick % len(run.dispatched)]
        run.now += timedelta(seconds=move.seconds % 1)
        return Heartbeat(d.step, d.attempt, run.now, {"n": pick})
    # "wake_next", and any answer with nothing to answer: let time run to the next timer.
    return run.wake_at_next_timer(move.seconds)


def simulate(sc: Scenario) -> Run:
    deadline = BASE + timedelta(seconds=sc.deadline) if sc.deadline is not None else None
    run = Run(sc.plan, new_status("saga-1", sc.plan, deadline))
    run.send("script", "start", Start(BASE))
    for move in sc.script:
        run.send("script", move.kind, script_event(run, move))
    # Drain: answer every open dispatch with success, wake at every timer.
    for _ in range(200):
        if run.status.state.terminal:
            break
        open_now = run.open_dispatches()
        if open_now:
            run.send("drain", "ok", run.answer(open_now[0], ok=True))
        elif next_wakeup(run.status) is not None:
            run.send("drain", "wake_next", run.wake_at_next_timer(0))
        else:
            break  # parked: only an operator can move it
    if run.status.state.terminal:
        throw_at_finished_saga(run)
    return run


def throw_at_finished_saga(run: Run) -> None:
    last = run.dispatched[-1] if run.dispatched else Dispatch(0, 1, Action.FORWARD, run.now)
    failing = Move("fail", 0, 0.0, True, "Boom")
    events: list[tuple[str, Event]] = [
        ("late", run.answer(last, ok=True)),
        ("late", run.answer(last, ok=False, move=failing)),
        ("stale", StepSucceeded(0, 1, Action.FORWARD, run.now)),
        ("stale", StepFailed(len(run.plan.steps), 1, Action.COMPENSATE, run.now)),
        ("wake", Wake(run.now + timedelta(days=365))),
        ("cancel", Cancel(run.now, "too late")),
        ("start", Start(run.now)),
    ]
    events += [("duplicate", replace(r, at=run.now)) for r in run.accepted[-3:]]
    for kind, event in events:
        run.send("after", kind, event)


def runs() -> st.SearchStrategy[Run]:
    return scenarios.map(simulate)


# Failure-heavy scripts: steps exhaust their retries often, so failure routes and parked steps
# (and an operator resuming them) are common rather than rare.
FAILING_KINDS = ("fail", "fail", "fail", "timeout", "ok", "wake_next", "operator_retry", "cancel")
failing_moves = st.builds(
    Move,
    kind=st.sampled_from(FAILING_KINDS),
    pick=st.integers(0, 1000),
    seconds=st.sampled_from([0.0, 1.0, 31.0]),
    retryable=st.sampled_from([True, True, False]),
    error_type=st.just("Boom"),
)
failing_scenarios = st.builds(
    Scenario,
    plan=plans,
    deadline=st.one_of(st.none(), st.just(600.0)),
    script=st.lists(failing_moves, max_size=45).map(tuple),
)


def any_runs() -> st.SearchStrategy[Run]:
    return st.one_of(runs(), failing_scenarios.map(simulate))


def describe(entry: Entry) -> str:
    return f"[{entry.phase}/{entry.kind}] {entry.event!r} on {entry.before.state}"


# -- ground truth the environment can know -------------------------------------------------------


def outcomes(run: Run) -> Iterator[tuple[Entry, dict[int, str]]]:
    """Yield each entry with, per step, what the environment knows of its forward effect:
    "ok" (an attempt reported success), "failed" (every attempt dispatched so far reported
    failure, so no effect can exist) or "unknown" (some attempt dispatched has no accepted
    reply: it may be running, or have timed out after taking effect). Steps never dispatched are
    absent. The dict is updated for the entry's event before it is yielded, and for the entry's
    forward dispatches after."""
    truth: dict[int, str] = {}
    dispatched: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    for entry in run.trace:
        ev = entry.event
        if isinstance(ev, Reply) and ev.action is Action.FORWARD and not entry.ignored:
            if isinstance(ev, StepSucceeded):
                truth[ev.step] = "ok"
            else:
                failed[ev.step] += 1
                every = failed[ev.step] == dispatched[ev.step]
                truth[ev.step] = "failed" if every else "unknown"
        yield entry, truth
        for d in entry.dispatches(Action.FORWARD):
            dispatched[d.step] += 1
            truth[d.step] = "unknown"


def reachable(table: dict[object, frozenset[object]], start: object) -> set[object]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# -- properties ---------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(any_runs())
def test_compensates_only_steps_that_succeeded_or_timed_out(run: Run) -> None:
    for entry, truth in outcomes(run):
        for d in entry.dispatches(Action.COMPENSATE):
            plan = run.plan.steps[d.step]
            assert plan.compensable, f"{describe(entry)}: compensated non-compensable s{d.step}"
            known = truth.get(d.step, "never started")
            assert known in ("ok", "unknown"), (
                f"{describe(entry)}: compensation of s{d.step} whose forward outcome is {known}"
            )
            state_before = entry.before.steps[d.step].state
            assert state_before not in (StepState.FAILED, StepState.SKIPPED), describe(entry)


@PROPERTY_SETTINGS
@given(runs())
def test_compensations_run_newest_first(run: Run) -> None:
    """Newest first, one at a time; the branches of a parallel group (unless it compensates in
    reverse) count as one place in that order: all dispatched together, each retried on its own."""

    def rank(step: int) -> int:
        plan = run.plan.steps[step]
        return run.plan.members(step)[0] if plan.group and not plan.group_reverse else step

    previous: Dispatch | None = None
    for entry in run.trace:
        for d in entry.dispatches(Action.COMPENSATE):
            if previous is not None and rank(d.step) == rank(previous.step) != d.step:
                previous = d  # another branch of the same parallel group
                continue
            if previous is not None:
                assert rank(d.step) <= rank(previous.step), (
                    f"{describe(entry)}: compensation of s{d.step} after s{previous.step}"
                )
                if d.step == previous.step:
                    assert d.attempt == previous.attempt + 1, (
                        f"{describe(entry)}: s{d.step} compensation re-dispatched "
                        f"as attempt {d.attempt} after {previous.attempt}"
                    )
            else:
                assert d.attempt == 1, describe(entry)
            previous = d


@PROPERTY_SETTINGS
@given(runs())
def test_no_forward_dispatch_once_compensation_began(run: Run) -> None:
    began = False
    for entry in run.trace:
        began = began or entry.after.state in (SagaState.COMPENSATING, SagaState.FAILED)
        if began:
            assert not entry.dispatches(Action.FORWARD), (
                f"{describe(entry)}: forward dispatch {entry.dispatches(Action.FORWARD)} "
                "after compensation began"
            )
        if entry.after.state is SagaState.COMPENSATING:
            assert entry.after.failure is not None, "compensation began without a recorded cause"


@PROPERTY_SETTINGS
@given(runs())
def test_terminal_states_are_absorbing(run: Run) -> None:
    for entry in run.trace:
        if not entry.before.state.terminal:
            continue
        assert entry.after == entry.before, f"{describe(entry)} changed a finished saga"
        assert entry.decision.commands == (), f"{describe(entry)} emitted commands"
        kinds = [h.kind for h in entry.decision.history]
        assert set(kinds) <= {HistoryKind.REPLY_IGNORED}, f"{describe(entry)} recorded {kinds}"
        expected = 1 if isinstance(entry.event, Reply) else 0
        assert len(kinds) == expected, f"{describe(entry)} recorded {kinds}"
        assert not entry.decision.changed or isinstance(entry.event, Reply)


@PROPERTY_SETTINGS
@given(runs())
def test_replies_accepted_exactly_when_they_answer_the_open_attempt(run: Run) -> None:
    for entry in run.trace:
        ev = entry.event
        if not isinstance(ev, Reply):
            continue
        expected_open = not entry.before.state.terminal and is_open(
            entry.before, ev.step, ev.attempt, ev.action
        )
        assert entry.ignored is not expected_open, (
            f"{describe(entry)}: open={expected_open} but ignored={entry.ignored}"
        )
        if entry.ignored:
            assert entry.after == entry.before, f"{describe(entry)}: ignored reply changed status"
            assert entry.decision.commands == (), f"{describe(entry)}: ignored reply sent commands"
            assert [h.kind for h in entry.decision.history] == [HistoryKind.REPLY_IGNORED]
        if entry.kind in ("duplicate", "dup_last"):
            assert entry.ignored, f"{describe(entry)}: a duplicate of an applied reply was applied"


@PROPERTY_SETTINGS
@given(any_runs())
def test_every_change_is_allowed_and_recorded(run: Run) -> None:
    saga_closure = {s: reachable(SAGA_TRANSITIONS, s) for s in SagaState}  # type: ignore[arg-type]
    step_closure = {s: reachable(STEP_TRANSITIONS, s) for s in StepState}  # type: ignore[arg-type]
    for entry in run.trace:
        before, after = entry.before, entry.after
        assert after.state in saga_closure[before.state], (
            f"{describe(entry)}: saga {before.state} -> {after.state}"
        )
        for i, (b, a) in enumerate(zip(before.steps, after.steps, strict=True)):
            assert a.state in step_closure[b.state], (
                f"{describe(entry)}: step s{i} {b.state} -> {a.state}"
            )
            assert a.name == b.name
            assert a.attempt >= b.attempt and a.compensation_attempt >= b.compensation_attempt
        if after != before:
            # The coordinator persists only when history is non-empty: a silent change is lost.
            assert entry.decision.changed, f"{describe(entry)}: status changed without history"
        if entry.decision.commands:
            assert entry.decision.changed, f"{describe(entry)}: commands without history"


@PROPERTY_SETTINGS
@given(runs())
def test_attempts_never_exceed_the_policy(run: Run) -> None:
    extra = 0  # an operator's Retry grants one attempt beyond the policy
    for entry in run.trace:
        if isinstance(entry.event, Retry) and entry.dispatches():
            assert len(entry.dispatches()) == 1, describe(entry)
            extra += 1
        for i, (plan, s) in enumerate(zip(run.plan.steps, entry.after.steps, strict=True)):
            route = plan.on_exhausted
            rounds = 1 + (route.times if isinstance(route, RetryAfter) else 0)
            # Each operator retry may also open a round of its own (it resumes a parked step).
            assert s.attempt <= plan.retry.max_attempts * (rounds + extra) + extra, (
                f"{describe(entry)}: s{i} attempt {s.attempt}"
            )
            assert s.compensation_attempt <= plan.compensation_retry.max_attempts + extra, (
                f"{describe(entry)}: s{i} compensation attempt {s.compensation_attempt}"
            )
        for d in entry.dispatches():
            step = entry.after.steps[d.step]
            current = step.attempt if d.action is Action.FORWARD else step.compensation_attempt
            assert d.attempt == current, f"{describe(entry)}: {d} vs status attempt {current}"
            # The command carries the attempt's hard deadline; with a heartbeat interval the
            # status's own deadline is the (earlier) heartbeat one.
            hard = step.timeout_at or step.deadline_at
            assert d.deadline_at == hard, f"{describe(entry)}: {d} deadline"
            assert step.deadline_at is not None and step.deadline_at <= hard
            assert d.deadline_at > entry.event.at, f"{describe(entry)}: deadline in the past"


@PROPERTY_SETTINGS
@given(runs())
def test_finished_sagas_are_consistent(run: Run) -> None:
    final = run.status
    if final.state is SagaState.COMPLETED:
        assert all(s.state is StepState.SUCCEEDED for s in final.steps), final
        assert all(s.attempt >= 1 for s in final.steps), final
    if final.state is SagaState.FAILED:
        truth = {}
        for _, t in outcomes(run):
            truth = dict(t)
        for i, (plan, s) in enumerate(zip(run.plan.steps, final.steps, strict=True)):
            assert s.state not in (
                StepState.PENDING,
                StepState.RUNNING,
                StepState.COMPENSATING,
                StepState.COMPENSATION_FAILED,
            ), f"s{i} left {s.state} in a failed saga"
            assert not (plan.compensable and s.state is StepState.SUCCEEDED), (
                f"s{i} succeeded and was never compensated"
            )
            if plan.compensable and truth.get(i) in ("ok", "unknown"):
                assert s.state is StepState.COMPENSATED, f"s{i} may have taken effect: {s.state}"
        assert final.failure is not None


@PROPERTY_SETTINGS
@given(any_runs())
def test_a_saga_always_has_a_way_forward(run: Run) -> None:
    for entry in run.trace:
        after = entry.after
        parked = is_parked(after)
        if not after.state.terminal and not parked:
            assert next_wakeup(after) is not None, f"{describe(entry)}: stuck with no timer"
        if isinstance(entry.event, Wake) and not after.state.terminal:
            due = next_wakeup(after)
            assert due is None or due > entry.event.at, (
                f"{describe(entry)}: timer at {due} still due after waking"
            )
    parked = is_parked(run.status)
    waiting = run.status.state in (SagaState.COMPENSATING, SagaState.PENDING)
    assert run.status.state.terminal or (parked and waiting), (
        f"the drain phase left the saga {run.status.state}"
    )
    if run.status.state is SagaState.PENDING:  # parked forward: a step waits for an operator
        assert any(s.state is StepState.PARKED for s in run.status.steps), run.status


@PROPERTY_SETTINGS
@given(any_runs())
def test_parallel_branches_are_dispatched_together_and_joined(run: Run) -> None:
    for entry in run.trace:
        forward = entry.dispatches(Action.FORWARD)
        firsts = [d for d in forward if d.attempt == 1]
        for d in firsts:
            members = run.plan.members(d.step)
            if len(members) > 1:  # a group starts: every branch in the same decision
                assert sorted(x.step for x in firsts if x.step in members) == list(members), (
                    describe(entry)
                )
        for d in forward:
            # Nothing after a group runs before every branch succeeded.
            before = [j for j in range(d.step) if run.plan.steps[j].group]
            for j in before:
                if d.step not in run.plan.members(j):
                    assert entry.after.steps[j].state is StepState.SUCCEEDED, describe(entry)


@PROPERTY_SETTINGS
@given(any_runs())
def test_running_branches_finish_before_compensation_begins(run: Run) -> None:
    """A branch failing for good leaves its running siblings running (they finish or time
    out); compensation begins only in the decision that settles the last of them, or when a
    deadline or a cancel stops the saga."""
    for entry in run.trace:
        ev = entry.event
        if not isinstance(ev, StepFailed | StepSucceeded) or ev.action is not Action.FORWARD:
            continue
        if entry.ignored or not 0 <= ev.step < len(run.plan.steps):
            continue
        members = run.plan.members(ev.step)
        if len(members) < 2:
            continue
        siblings = [j for j in members if j != ev.step]
        running_after = [j for j in siblings if entry.after.steps[j].state is StepState.RUNNING]
        if running_after:
            assert not entry.dispatches(Action.COMPENSATE), describe(entry)
            assert entry.after.state is SagaState.PENDING, describe(entry)
        if entry.dispatches(Action.COMPENSATE):
            assert not running_after, describe(entry)
            for j in siblings:  # every sibling running before was settled by its own reply
                if entry.before.steps[j].state is StepState.RUNNING:
                    assert entry.after.steps[j].state is StepState.RUNNING or j == ev.step


@PROPERTY_SETTINGS
@given(any_runs())
def test_nothing_is_undone_once_the_pivot_succeeded(run: Run) -> None:
    passed = False
    for entry in run.trace:
        if passed:
            assert not entry.dispatches(Action.COMPENSATE), f"{describe(entry)}: past the pivot"
            assert entry.after.state is not SagaState.COMPENSATING, describe(entry)
            assert entry.after.state is not SagaState.FAILED, describe(entry)
        passed = passed or past_pivot(run.plan, entry.after)
    if passed and run.status.state.terminal:
        assert run.status.state is SagaState.COMPLETED


@PROPERTY_SETTINGS
@given(any_runs())
def test_a_parked_step_waits_for_an_operator(run: Run) -> None:
    for entry in run.trace:
        for i, (b, a) in enumerate(zip(entry.before.steps, entry.after.steps, strict=True)):
            if a.state is StepState.PARKED and b.state is not StepState.PARKED:
                plan = run.plan.steps[i]
                routed = isinstance(plan.on_exhausted, Park | AwaitOperator)
                assert routed or past_pivot(run.plan, entry.after), (
                    f"{describe(entry)}: s{i} parked without a Park route or a pivot"
                )
                kinds = [h.kind for h in entry.decision.history]
                assert HistoryKind.STEP_PARKED in kinds, describe(entry)
                assert entry.after.state is SagaState.PENDING, describe(entry)
            if b.state is StepState.PARKED and a.state is StepState.RUNNING:
                assert isinstance(entry.event, Retry), f"{describe(entry)}: left parked by itself"


@PROPERTY_SETTINGS
@given(any_runs())
def test_a_heartbeat_only_moves_an_open_attempts_deadline(run: Run) -> None:
    """A heartbeat changes nothing but the open forward attempt's heartbeat time, progress and
    deadline (never past the hard one, never earlier than it was); for any other attempt it
    changes nothing (the sender learns it is fenced)."""
    for entry in run.trace:
        ev = entry.event
        if not isinstance(ev, Heartbeat):
            continue
        assert entry.decision.commands == () and entry.decision.history == (), describe(entry)
        open_ = not entry.before.state.terminal and is_open(
            entry.before, ev.step, ev.attempt, Action.FORWARD
        )
        assert entry.decision.touched is open_, f"{describe(entry)}: open={open_}"
        if not open_:
            assert entry.after == entry.before, describe(entry)
            continue
        b, a = entry.before.steps[ev.step], entry.after.steps[ev.step]
        assert replace(a, heartbeat_at=None, progress=None, deadline_at=None) == replace(
            b, heartbeat_at=None, progress=None, deadline_at=None
        ), describe(entry)
        assert a.progress == ev.details and a.heartbeat_at == ev.at
        assert a.deadline_at is not None and b.deadline_at is not None
        if run.plan.steps[ev.step].heartbeat is None:
            assert a.deadline_at == b.deadline_at, describe(entry)
        else:
            assert a.timeout_at is not None and a.deadline_at <= a.timeout_at, describe(entry)


@PROPERTY_SETTINGS
@given(any_runs())
def test_an_attempt_is_given_up_only_at_one_of_its_deadlines(run: Run) -> None:
    """A forward attempt times out at its hard deadline, or earlier only when a heartbeat
    interval passed since its dispatch or its last heartbeat."""
    for entry in run.trace:
        for h in entry.decision.history:
            if h.kind is not HistoryKind.STEP_TIMED_OUT or (h.detail or {}).get("action"):
                continue
            i = run.plan.index(h.step or "")
            s, plan = entry.before.steps[i], run.plan.steps[i]
            at = entry.event.at if isinstance(entry.event, Wake) else None
            assert at is not None and s.deadline_at is not None and s.deadline_at <= at
            if (h.detail or {}).get("heartbeat") is not None:
                assert plan.heartbeat is not None and s.timeout_at is not None
                since = s.heartbeat_at or (s.timeout_at - timedelta(seconds=plan.timeout))
                assert at >= since + timedelta(seconds=plan.heartbeat), describe(entry)


# -- operator recovery: pause/resume, rerun, fork --------------------------------------------------
#
# The same environment, with an operator who also pauses, resumes and reruns the saga at random;
# the drain phase resumes a paused saga first. Then, where the finished saga can be forked, a
# fork from a random step is driven by another random script.

OPERATOR_KINDS = (*KINDS, "pause", "pause", "pause", "pause", "resume", "rerun", "rerun")
operator_moves = st.builds(
    Move,
    kind=st.sampled_from(OPERATOR_KINDS),
    pick=st.integers(0, 1000),
    seconds=st.sampled_from([0.0, 1.0, 7.0, 31.0, 400.0]),
    retryable=st.booleans(),
    error_type=st.sampled_from(["Boom", "OutOfStock"]),
)
operator_scenarios = st.builds(
    Scenario,
    plan=plans,
    deadline=st.one_of(st.none(), st.sampled_from([3.0, 90.0, 600.0])),
    script=st.lists(operator_moves, max_size=45).map(tuple),
)


def operator_event(run: Run, move: Move) -> Event:
    if move.kind == "pause":
        return Pause(run.now, "look first", "ana")
    if move.kind == "resume":
        return Resume(run.now, "looked", "ana")
    if move.kind == "rerun":
        deadline = run.now + timedelta(seconds=600) if move.retryable else None
        return Rerun(run.now, "fixed it", "ana", deadline)
    return script_event(run, move)


def drain(run: Run) -> None:
    for _ in range(300):
        if run.status.state.terminal:
            return
        open_now = run.open_dispatches()
        if run.status.paused and not open_now:
            run.send("drain", "resume", Resume(run.now, "drain", "ana"))
            continue
        if open_now:
            run.send("drain", "ok", run.answer(open_now[0], ok=True))
        elif next_wakeup(run.status) is not None:
            run.send("drain", "wake_next", run.wake_at_next_timer(0))
        else:
            return  # parked: only an operator can move it


def simulate_operator(sc: Scenario) -> Run:
    deadline = BASE + timedelta(seconds=sc.deadline) if sc.deadline is not None else None
    run = Run(sc.plan, new_status("saga-1", sc.plan, deadline))
    run.send("script", "start", Start(BASE))
    for move in sc.script:
        run.send("script", move.kind, operator_event(run, move))
    drain(run)
    if why_no_rerun(run.plan, run.status) is None:  # an operator fixed it: run it again
        run.send("drain", "rerun", Rerun(run.now, "fixed", "ana", run.now + timedelta(hours=1)))
        drain(run)
    return run


def operator_runs() -> st.SearchStrategy[Run]:
    return operator_scenarios.map(simulate_operator)


@PROPERTY_SETTINGS
@given(operator_runs())
def test_nothing_goes_forward_while_paused(run: Run) -> None:
    """A paused saga dispatches nothing (forward or compensation) and fires no timer; what
    an attempt already out reports is still recorded; a resume carries on from there."""
    for entry in run.trace:
        if not entry.before.paused or isinstance(entry.event, Resume):
            continue
        assert not entry.dispatches(), f"{describe(entry)}: dispatched while paused"
        if isinstance(entry.event, Wake | Retry | Rerun | Cancel | Pause | Signal):
            assert entry.after == entry.before, f"{describe(entry)}: changed while paused"
        if isinstance(entry.event, Reply) and is_open(
            entry.before, entry.event.step, entry.event.attempt, entry.event.action
        ):
            assert not entry.ignored, f"{describe(entry)}: the running attempt's reply was lost"
    for entry in run.trace:
        if entry.after.paused:
            assert next_wakeup(entry.after) is None, f"{describe(entry)}: a timer while paused"


@PROPERTY_SETTINGS
@given(operator_runs())
def test_a_resume_dispatches_what_was_held(run: Run) -> None:
    for entry in run.trace:
        if not (isinstance(entry.event, Resume) and entry.before.paused):
            continue
        held = [
            i
            for i, s in enumerate(entry.before.steps)
            if s.next_attempt_at is not None and s.next_attempt_at <= entry.event.at
        ]
        compensating = entry.after.state in (SagaState.COMPENSATING, SagaState.FAILED)
        if held and not compensating and entry.before.state is entry.after.state:
            sent = {d.step for d in entry.dispatches()}
            assert set(held) <= sent, f"{describe(entry)}: held {held}, sent {sent}"
        assert not entry.after.paused


@PROPERTY_SETTINGS
@given(operator_runs())
def test_no_compensation_runs_twice_and_every_change_is_allowed(run: Run) -> None:
    compensated: Counter[int] = Counter()
    step_closure = {s: reachable(STEP_TRANSITIONS, s) for s in StepState}  # type: ignore[arg-type]
    for entry in run.trace:
        for h in entry.decision.history:
            if h.kind is HistoryKind.STEP_COMPENSATED:
                compensated[int(str(h.step)[1:])] += 1
        for i, (b, a) in enumerate(zip(entry.before.steps, entry.after.steps, strict=True)):
            assert a.state in step_closure[b.state], f"{describe(entry)}: s{i} {b.state}->{a.state}"
            assert a.attempt >= b.attempt, describe(entry)
            if b.state is StepState.COMPENSATED:
                assert a.state is StepState.COMPENSATED, f"{describe(entry)}: s{i} undone twice?"
        if entry.after != entry.before:
            assert entry.decision.changed, f"{describe(entry)}: status changed without history"
        if isinstance(entry.event, Rerun) and entry.decision.changed:
            assert entry.before.state in (SagaState.FAILED, SagaState.PENDING), describe(entry)
            assert not any(s.state is StepState.COMPENSATED for s in entry.before.steps), (
                f"{describe(entry)}: rerun over an undone effect"
            )
    assert all(n == 1 for n in compensated.values()), compensated


@PROPERTY_SETTINGS
@given(operator_runs())
def test_an_operator_paused_saga_is_never_stuck_without_a_way_forward(run: Run) -> None:
    for entry in run.trace:
        after = entry.after
        if after.state.terminal or is_parked(after) or after.paused:
            continue
        assert next_wakeup(after) is not None, f"{describe(entry)}: stuck with no timer"
    assert not run.status.paused


@PROPERTY_SETTINGS
@given(operator_runs(), st.integers(0, 4), st.lists(operator_moves, max_size=30))
def test_a_fork_never_reruns_a_reused_step(run: Run, pick: int, script: list[Move]) -> None:
    original = run.status
    start = pick % len(run.plan.steps)
    if why_no_fork(run.plan, original, start) is not None:
        assert not original.state.terminal or start > 0 or run.plan.members(0)[0] != 0
        return
    first = fork_status(run.plan, original, start, "fork-1", BASE + timedelta(days=1))
    fork = Run(run.plan, first, now=run.now)
    fork.send("script", "start", Start(fork.now))
    for move in script:
        fork.send("script", move.kind, operator_event(fork, move))
    drain(fork)
    for entry in fork.trace:
        for d in entry.dispatches(Action.FORWARD):
            assert d.step >= start, f"{describe(entry)}: reused step s{d.step} dispatched"
    for i in range(start):
        reused = fork.trace[0].before.steps[i]
        assert reused.result == original.steps[i].result and reused.attempt == 0
