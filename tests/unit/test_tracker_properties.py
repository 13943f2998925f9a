"""Property tests over the pure choreography tracker, ``sagas.choreography.tracker``.

One of a few 3-5 handler choreographies (declared below: with and without compensations,
``fails_with``, ``fail_on_timeout``, various retry policies) is driven the way the runner drives
it: ``new_choreo_status`` + ``event_seen(starts_on)``, then a random script in which the running
handler succeeds or fails (retryable or not, through ``handler_failed``), time passes to or past
its deadline (``timed_out``), and a compensation that ``may_compensate`` succeeds or fails. Each
outcome's published events are folded back with ``event_seen`` as ``runner._apply_events`` does.
A "doomed" handler drawn per run fails for good whenever it is answered, so compensation is
common. A drain phase then answers every running handler and lets every compensation finish; a
finished saga gets every event of its choreography, and a far-future sweep, thrown at it.

A parked compensation waits for an operator: ``may_compensate`` then refuses every older one,
and the saga stays compensating.

Every tracker call is one entry of the trace; each test checks one property over all entries.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from sagas.choreography import Choreography, Handler
from sagas.choreography.definition import COMPENSATED_EVENT, HandlerSpec
from sagas.choreography.tracker import (
    Outcome,
    compensation_done,
    compensation_failed,
    event_seen,
    handler_done,
    handler_failed,
    may_compensate,
    new_choreo_status,
    timed_out,
)
from sagas.machine import ErrorInfo, SagaStatus
from sagas.retry import RetryPolicy
from sagas.state import (
    SAGA_TRANSITIONS,
    STEP_TRANSITIONS,
    HistoryKind,
    SagaState,
    StepState,
)
from tests.unit.properties import BASE, property_settings

PROPERTY_SETTINGS = property_settings(150)


class P(BaseModel):
    n: int = 0


def undo(ctx: Any) -> None:
    return None


def tries(n: int, initial: float = 1.0, jitter: float = 0.0) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=n, initial=initial, backoff=2.0, max_interval=30.0, jitter=jitter
    )


def declare(name: str, handlers: list[dict[str, Any]]) -> Choreography[P]:
    """Handlers chained a -> b -> ... on ``<name>.start``; the last emits ``<name>.done``."""
    letters = "abcde"[: len(handlers)]
    built = []
    for i, (letter, extra) in enumerate(zip(letters, handlers, strict=True)):
        emits = f"{name}.done" if i == len(handlers) - 1 else f"{name}.{letter}"
        args: dict[str, Any] = {
            "name": letter,
            "service": f"svc_{letter}",
            "on": f"{name}.start" if i == 0 else f"{name}.{letters[i - 1]}",
            "emits": emits,
            "fn": lambda ctx: None,
            "timeout": 5.0,
            "retry": tries(2),
            "compensation_retry": tries(2, initial=0.5),
        }
        args.update(extra)
        built.append(Handler(**args))
    return Choreography(
        name, payload=P, starts_on=f"{name}.start", completes_on=f"{name}.done", handlers=built
    )


def failed(name: str, *letters: str) -> tuple[str, ...]:
    return tuple(f"{name}.{x}_failed" for x in letters)


# Three handlers: every one can fail; the last fails on timeout and has nothing to undo.
CHOREO_1 = declare(
    "tracker_prop_1",
    [
        dict(
            fails_with="tracker_prop_1.a_failed",
            compensation=undo,
            compensate_on=failed("tracker_prop_1", "b", "c"),
            retry=tries(3, jitter=0.2),
        ),
        dict(
            fails_with="tracker_prop_1.b_failed",
            compensation=undo,
            compensate_on=failed("tracker_prop_1", "c"),
            retry=tries(1),
            compensation_retry=tries(1),
        ),
        dict(fails_with="tracker_prop_1.c_failed", compensation=None, fail_on_timeout=True),
    ],
)
# The README's shape: the last handler has no failure event.
CHOREO_2 = declare(
    "tracker_prop_2",
    [
        dict(
            fails_with="tracker_prop_2.a_failed",
            compensation=undo,
            compensate_on=failed("tracker_prop_2", "b", "c"),
        ),
        dict(
            fails_with="tracker_prop_2.b_failed",
            compensation=undo,
            compensate_on=failed("tracker_prop_2", "c"),
            compensation_retry=tries(3, jitter=0.1),
        ),
        dict(
            fails_with="tracker_prop_2.c_failed",
            compensation=None,
            fail_on_timeout=True,
            timeout=2.0,
        ),
        dict(retry=tries(1), timeout=30.0),
    ],
)
# Five handlers: one with nothing to undo first, one without a failure event in the middle.
CHOREO_3 = declare(
    "tracker_prop_3",
    [
        dict(compensation=None, retry=tries(1)),
        dict(
            fails_with="tracker_prop_3.b_failed",
            compensation=undo,
            compensate_on=failed("tracker_prop_3", "d", "e"),
            compensation_retry=tries(1),
        ),
        dict(compensation=undo, compensate_on=failed("tracker_prop_3", "d", "e")),
        dict(
            fails_with="tracker_prop_3.d_failed",
            compensation=undo,
            compensate_on=failed("tracker_prop_3", "e"),
            fail_on_timeout=True,
            retry=tries(3),
        ),
        dict(fails_with="tracker_prop_3.e_failed", fail_on_timeout=True, timeout=1.0),
    ],
)
# Four handlers: a compensation-free handler between two compensable ones.
CHOREO_4 = declare(
    "tracker_prop_4",
    [
        dict(
            fails_with="tracker_prop_4.a_failed",
            compensation=undo,
            compensate_on=failed("tracker_prop_4", "b", "d"),
            compensation_retry=tries(3),
        ),
        dict(
            fails_with="tracker_prop_4.b_failed",
            compensation=None,
            fail_on_timeout=True,
        ),
        dict(compensation=undo, compensate_on=failed("tracker_prop_4", "d"), timeout=60.0),
        dict(fails_with="tracker_prop_4.d_failed", retry=tries(4, jitter=0.5)),
    ],
)
CHOREOGRAPHIES = (CHOREO_1, CHOREO_2, CHOREO_3, CHOREO_4)

# -- strategies ---------------------------------------------------------------------------------

# Repeated kinds are drawn more often. "ok" and "fail" are answered by whoever is awaited: the
# running handler, else a compensation that may run.
KINDS = ("ok", "ok", "ok", "ok", "fail", "fail", "timeout", "wake", "undo_ok", "undo_fail")


@dataclass(frozen=True)
class Move:
    kind: str
    pick: int
    seconds: float
    retryable: bool


moves = st.builds(
    Move,
    kind=st.sampled_from(KINDS),
    pick=st.integers(0, 1000),
    seconds=st.sampled_from([0.0, 0.3, 1.0, 2.5, 7.0, 61.0]),
    retryable=st.booleans(),
)


@dataclass(frozen=True)
class Scenario:
    choreo: Choreography[P]
    doomed: int | None  # this handler's attempts all fail for good (so compensation is common)
    script: tuple[Move, ...]


scenarios = st.builds(
    Scenario,
    choreo=st.sampled_from(CHOREOGRAPHIES),
    doomed=st.one_of(st.none(), st.integers(1, 4)),
    script=st.lists(moves, max_size=40).map(tuple),
)

# -- the simulated runner -----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One tracker call: which, on what, in which phase, and what it decided."""

    phase: str  # "start", "script", "drain" or "after" (thrown at a finished saga)
    call: str  # the tracker function's name
    handler: HandlerSpec | None
    at: datetime
    before: SagaStatus
    outcome: Outcome
    event: str | None = None  # event_seen's event
    error: ErrorInfo | None = None  # handler_failed's / compensation_failed's error
    attempt: int | None = None

    @property
    def after(self) -> SagaStatus:
        return self.outcome.status

    def kinds(self) -> list[HistoryKind]:
        return [h.kind for h in self.outcome.history]


@dataclass
class Run:
    scenario: Scenario
    status: SagaStatus
    now: datetime = BASE
    trace: list[Entry] = field(default_factory=list)
    attempts: Counter[int] = field(default_factory=Counter)  # forward attempt being run
    undo_attempts: Counter[int] = field(default_factory=Counter)

    @property
    def choreo(self) -> Choreography[P]:
        return self.scenario.choreo

    def call(self, phase: str, name: str, decide: Callable[[], Outcome], **kw: Any) -> Outcome:
        before = self.status
        outcome = decide()
        self.trace.append(Entry(phase, name, kw.pop("h", None), self.now, before, outcome, **kw))
        self.status = outcome.status
        return outcome

    def fold(self, phase: str, outcome: Outcome) -> None:
        """``runner._apply_events``: each published event but ``sagas.compensated`` is seen."""
        for name in outcome.publish:
            if name == COMPENSATED_EVENT:
                continue
            self.see(phase, name)

    def see(self, phase: str, event: str) -> Outcome:
        return self.call(
            phase,
            "event_seen",
            lambda: event_seen(self.choreo, self.status, event, self.now),
            event=event,
        )

    def running(self) -> list[HandlerSpec]:
        """Handlers the runner would record an outcome for (``_forward_awaited``)."""
        if self.status.state.terminal:
            return []
        return [h for h in self.choreo.handlers if self.state(h) is StepState.RUNNING]

    def compensable(self) -> list[HandlerSpec]:
        """Handlers whose compensation the runner would record (``may_compensate``)."""
        return [
            h
            for h in self.choreo.handlers
            if h.compensation is not None and may_compensate(self.status, h)
        ]

    def state(self, h: HandlerSpec) -> StepState:
        return self.status.steps[h.index].state

    def succeed(self, phase: str, h: HandlerSpec) -> None:
        attempt = max(self.attempts[h.index], 1)
        done = self.call(
            phase,
            "handler_done",
            lambda: handler_done(
                self.choreo, self.status, h, self.now, result={"h": h.name}, attempt=attempt
            ),
            h=h,
            attempt=attempt,
        )
        self.fold(phase, done)

    def answer(self, phase: str, h: HandlerSpec) -> None:
        if h.index == self.scenario.doomed:
            self.fail(phase, h, retryable=False)
        else:
            self.succeed(phase, h)

    def fail(self, phase: str, h: HandlerSpec, retryable: bool) -> None:
        attempt = max(self.attempts[h.index], 1)
        error = ErrorInfo("Boom", "it broke", retryable)
        out = self.call(
            phase,
            "handler_failed",
            lambda: handler_failed(self.choreo, self.status, h, self.now, error, attempt=attempt),
            h=h,
            error=error,
            attempt=attempt,
        )
        if out.retry_in is not None:
            self.attempts[h.index] = attempt + 1
            self.now += timedelta(seconds=out.retry_in)
        self.fold(phase, out)

    def sweep(self, phase: str) -> None:
        out = self.call(phase, "timed_out", lambda: timed_out(self.choreo, self.status, self.now))
        self.fold(phase, out)

    def undo(self, phase: str, h: HandlerSpec, ok: bool, retryable: bool = True) -> None:
        attempt = max(self.undo_attempts[h.index], 1)
        if ok:
            done = self.call(
                phase,
                "compensation_done",
                lambda: compensation_done(self.choreo, self.status, h, self.now),
                h=h,
            )
            self.fold(phase, done)
            return
        error = ErrorInfo("UndoBoom", "undo broke", retryable)
        out = self.call(
            phase,
            "compensation_failed",
            lambda: compensation_failed(
                self.choreo, self.status, h, self.now, error, attempt=attempt
            ),
            h=h,
            error=error,
            attempt=attempt,
        )
        if out.retry_in is not None:
            self.undo_attempts[h.index] = attempt + 1
            self.now += timedelta(seconds=out.retry_in)
        self.fold(phase, out)

    def play(self, move: Move) -> None:
        running, compensable = self.running(), self.compensable()
        self.now += timedelta(seconds=move.seconds)
        if move.kind == "ok" and running:
            self.answer("script", running[move.pick % len(running)])
        elif move.kind == "fail" and running:
            self.fail("script", running[move.pick % len(running)], move.retryable)
        elif move.kind == "timeout" and any(
            self.status.steps[h.index].deadline_at for h in running
        ):
            due = [self.status.steps[h.index].deadline_at for h in running]
            deadline = min(d for d in due if d is not None)
            self.now = max(self.now, deadline + timedelta(seconds=move.seconds % 1))
            self.sweep("script")
        elif move.kind in ("ok", "fail", "undo_ok", "undo_fail") and compensable:
            h = compensable[move.pick % len(compensable)]
            self.undo("script", h, move.kind in ("ok", "undo_ok"), move.retryable)
        else:  # "wake", or nothing to act on: time passed, the sweeper looks
            self.sweep("script")


def simulate(sc: Scenario) -> Run:
    run = Run(sc, new_choreo_status(sc.choreo, "saga-1"))
    run.see("start", sc.choreo.starts_on)
    for move in sc.script:
        run.play(move)
    for _ in range(20):  # drain: every running handler succeeds, every compensation finishes
        if run.status.state.terminal:
            break
        running, compensable = run.running(), run.compensable()
        if running:
            run.answer("drain", running[0])
        elif compensable:
            run.undo("drain", compensable[0], ok=True)
        else:
            break  # parked, or stalled (see test_a_run_ends_or_says_why_not)
    if run.status.state.terminal:
        for event in sorted(sc.choreo.events()):
            run.see("after", event)
        run.now += timedelta(days=365)
        run.sweep("after")
    return run


def describe(entry: Entry) -> str:
    what = entry.event or (entry.handler.name if entry.handler else "")
    return f"[{entry.phase}] {entry.call}({what}) on {entry.before.state}"


def compensation_start(run: Run) -> Entry | None:
    """The entry whose event began compensation (the saga left PENDING for COMPENSATING or
    FAILED)."""
    for entry in run.trace:
        if entry.before.state is SagaState.PENDING and entry.after.state in (
            SagaState.COMPENSATING,
            SagaState.FAILED,
        ):
            return entry
    return None


# -- properties ---------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(scenarios)
def test_every_change_is_allowed_by_the_transition_tables(sc: Scenario) -> None:
    run = simulate(sc)
    for entry in run.trace:
        before, after = entry.before, entry.after
        assert after.state is before.state or after.state in SAGA_TRANSITIONS[before.state], (
            f"{describe(entry)}: saga {before.state} -> {after.state}"
        )
        assert [s.name for s in after.steps] == [h.name for h in run.choreo.handlers]
        for h, b, a in zip(run.choreo.handlers, before.steps, after.steps, strict=True):
            assert a.state is b.state or a.state in STEP_TRANSITIONS[b.state], (
                f"{describe(entry)}: {h.name} {b.state} -> {a.state}"
            )
        if not entry.outcome.changed:
            assert after == before, f"{describe(entry)}: unchanged outcome changed the status"
        if after != before or entry.outcome.publish:
            assert entry.outcome.history, f"{describe(entry)}: a change without history"


@PROPERTY_SETTINGS
@given(scenarios)
def test_terminal_states_are_absorbing(sc: Scenario) -> None:
    run = simulate(sc)
    ended: SagaState | None = None
    for entry in run.trace:
        if ended is not None:
            assert entry.before.state is ended and entry.after == entry.before, describe(entry)
            assert entry.outcome.publish == (), f"{describe(entry)} published after the end"
            if entry.call == "event_seen":
                assert entry.kinds() == [HistoryKind.EVENT_PUBLISHED], describe(entry)
                assert entry.outcome.history[0].detail == {"event": entry.event}
            else:
                assert entry.call == "timed_out", describe(entry)  # nothing else is awaited
                assert not entry.outcome.changed and entry.outcome.history == ()
        if entry.after.state.terminal:
            ended = entry.after.state
    if ended is not None:
        assert not run.running() and not run.compensable()
        after = [e for e in run.trace if e.phase == "after"]
        assert len(after) == len(run.choreo.events()) + 1


@PROPERTY_SETTINGS
@given(scenarios)
def test_compensations_happen_newest_first(sc: Scenario) -> None:
    run = simulate(sc)
    awaited: set[int] = set()  # handlers that were ever COMPENSATING
    order: list[int] = []
    for entry in run.trace:
        if entry.call in ("compensation_done", "compensation_failed"):
            assert entry.handler is not None
            i = entry.handler.index
            assert entry.before.steps[i].state is StepState.COMPENSATING, describe(entry)
            for j in sorted(awaited):
                if j > i:
                    assert entry.before.steps[j].state is StepState.COMPENSATED, (
                        f"{describe(entry)}: {run.choreo.handlers[j].name} is "
                        f"{entry.before.steps[j].state}"
                    )
            if entry.call == "compensation_done":
                assert not order or i < order[-1], f"{describe(entry)} after {order}"
                order.append(i)
        awaited |= {i for i, s in enumerate(entry.after.steps) if s.state is StepState.COMPENSATING}


@PROPERTY_SETTINGS
@given(scenarios)
def test_every_compensable_success_is_compensated_exactly_once(sc: Scenario) -> None:
    run = simulate(sc)
    done = Counter(
        e.handler.index for e in run.trace if e.call == "compensation_done" and e.handler
    )
    assert all(n == 1 for n in done.values()), f"compensated more than once: {done}"
    begin = compensation_start(run)
    if begin is None:
        assert not done and run.status.state is not SagaState.FAILED
        return
    assert begin.call == "event_seen" and begin.event in run.choreo.failure_events()
    expected = {
        h.index
        for h in run.choreo.handlers
        if begin.before.steps[h.index].state is StepState.SUCCEEDED
        and h.compensation is not None
        and begin.event in h.compensate_on
    }
    assert set(done) <= expected, f"compensated {set(done) - expected} that had no effect to undo"
    parked = any(s.state is StepState.COMPENSATION_FAILED for s in run.status.steps)
    if run.status.state is SagaState.FAILED and not parked:
        assert set(done) == expected, f"expected {expected} compensated, got {dict(done)}"
        for h in run.choreo.handlers:
            s = run.status.steps[h.index].state
            assert (s is StepState.COMPENSATED) is (h.index in expected), (h.name, s)
            assert s not in (StepState.PENDING, StepState.RUNNING, StepState.COMPENSATING)
    else:  # a parked compensation holds the saga for an operator
        assert parked and run.status.state is SagaState.COMPENSATING, (
            f"saga {run.status.state}, parked: {parked}"
        )


@PROPERTY_SETTINGS
@given(scenarios)
def test_no_handler_moves_forward_once_compensation_began(sc: Scenario) -> None:
    run = simulate(sc)
    began = False
    for entry in run.trace:
        if began:
            for h, b, a in zip(
                run.choreo.handlers, entry.before.steps, entry.after.steps, strict=True
            ):
                if a.state in (StepState.RUNNING, StepState.SUCCEEDED):
                    assert b.state is a.state, f"{describe(entry)}: {h.name} -> {a.state}"
            assert entry.call != "handler_done", describe(entry)
        began = began or entry.after.state in (SagaState.COMPENSATING, SagaState.FAILED)
        if entry.after.state is SagaState.COMPENSATING:
            assert entry.after.failure is not None, "compensation began without a recorded cause"
            assert not entry.after.failure.retryable
        if began:
            assert not any(s.state is StepState.RUNNING for s in entry.after.steps), (
                f"{describe(entry)}: a handler still running during compensation"
            )


@PROPERTY_SETTINGS
@given(scenarios)
def test_a_saga_completes_only_if_every_handler_succeeded(sc: Scenario) -> None:
    run = simulate(sc)
    for entry in run.trace:
        if entry.after.state is SagaState.COMPLETED:
            assert all(s.state is StepState.SUCCEEDED for s in entry.after.steps), describe(entry)
            assert entry.after.failure is None
        if all(s.state is StepState.SUCCEEDED for s in entry.after.steps):
            # The last success's event completes the saga in the same fold.
            assert entry.after.state is SagaState.COMPLETED or entry.call == "handler_done", (
                describe(entry)
            )
    if all(s.state is StepState.SUCCEEDED for s in run.status.steps):
        assert run.status.state is SagaState.COMPLETED


@PROPERTY_SETTINGS
@given(scenarios)
def test_retries_follow_the_handlers_policies(sc: Scenario) -> None:
    run = simulate(sc)
    for entry in run.trace:
        h, out = entry.handler, entry.outcome
        if entry.call == "handler_failed":
            assert h is not None and entry.error is not None and entry.attempt is not None
            retry = entry.error.retryable and entry.attempt < h.retry.max_attempts
            assert (out.retry_in is not None) is retry, describe(entry)
            if retry:
                assert out.status == entry.before and out.publish == (), describe(entry)
                assert entry.kinds() == [HistoryKind.STEP_FAILED, HistoryKind.RETRY_SCHEDULED]
            else:
                assert out.status.steps[h.index].state is StepState.FAILED
                assert out.publish == ((h.fails_with,) if h.fails_with else ())
        if entry.call == "compensation_failed":
            assert h is not None and entry.error is not None and entry.attempt is not None
            retry = entry.error.retryable and entry.attempt < h.compensation_retry.max_attempts
            assert (out.retry_in is not None) is retry and (out.parked is True) is not retry
            assert out.publish == ()
            if retry:
                assert out.status == entry.before
            else:
                assert out.status.steps[h.index].state is StepState.COMPENSATION_FAILED
                assert entry.kinds() == [
                    HistoryKind.COMPENSATION_FAILED,
                    HistoryKind.COMPENSATION_PARKED,
                ]
        for spec, s in zip(run.choreo.handlers, entry.after.steps, strict=True):
            assert s.attempt <= spec.retry.max_attempts, f"{describe(entry)}: {spec.name}"


@PROPERTY_SETTINGS
@given(scenarios)
def test_timeouts_flag_overdue_handlers_once_and_fail_them_where_declared(sc: Scenario) -> None:
    run = simulate(sc)
    for entry in run.trace:
        if entry.call != "timed_out":
            continue
        overdue = [
            h
            for h in run.choreo.handlers
            if entry.before.steps[h.index].state is StepState.RUNNING
            and (d := entry.before.steps[h.index].deadline_at) is not None
            and d <= entry.at
        ]
        assert entry.outcome.changed is bool(overdue), describe(entry)
        assert [r.step for r in entry.outcome.history] == [h.name for h in overdue]
        assert set(entry.kinds()) <= {HistoryKind.SAGA_STUCK}
        fails = [h for h in overdue if h.fail_on_timeout]
        assert entry.outcome.publish == tuple(h.fails_with for h in fails), describe(entry)
        for h in overdue:
            s = entry.after.steps[h.index]
            assert s.deadline_at is None, f"{describe(entry)}: {h.name} would be flagged again"
            want = StepState.TIMED_OUT if h.fail_on_timeout else StepState.RUNNING
            assert s.state is want, f"{describe(entry)}: {h.name} {s.state}"
        for h in run.choreo.handlers:
            if h not in overdue:
                assert entry.after.steps[h.index] == entry.before.steps[h.index]


@PROPERTY_SETTINGS
@given(scenarios)
def test_a_run_ends_or_says_why_not(sc: Scenario) -> None:
    run = simulate(sc)
    final = run.status
    if final.state.terminal:
        return
    parked = [s for s in final.steps if s.state is StepState.COMPENSATION_FAILED]
    if final.state is SagaState.COMPENSATING:
        assert parked, "compensating with nothing left to compensate and nothing parked"
        return
    # Still pending with nothing running: only a handler without a failure event that failed
    # for good leaves a saga there (nothing announces it; the sweeper sees no deadline).
    assert final.state is SagaState.PENDING and not run.running()
    silent = [
        h
        for h in run.choreo.handlers
        if final.steps[h.index].state is StepState.FAILED and h.fails_with is None
    ]
    assert silent, f"stalled in {[s.state for s in final.steps]}"
    assert not timed_out(run.choreo, final, run.now + timedelta(days=365)).changed
