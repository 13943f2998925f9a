"""Saga and step states: the only place they are spelled.

Queries, the core and the CLI all use these enums; the stored value is the enum's string value.
"""

from __future__ import annotations

from enum import StrEnum


class SagaKind(StrEnum):
    """Which pattern runs a saga; stored in ``saga.kind``."""

    ORCHESTRATED = "orchestrated"  # a coordinator decides (``Saga``, ``sagas.machine``)
    CHOREOGRAPHED = "choreographed"  # services react to events (``sagas.choreography``)


class SagaState(StrEnum):
    STARTED = "started"  # accepted, first step not yet dispatched
    PENDING = "pending"  # running forward
    COMPENSATING = "compensating"  # undoing completed steps, newest first
    COMPLETED = "completed"  # every step succeeded
    FAILED = "failed"  # a step failed for good and everything done was compensated

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_SAGA_STATES


TERMINAL_SAGA_STATES = frozenset({SagaState.COMPLETED, SagaState.FAILED})
ACTIVE_SAGA_STATES = frozenset(set(SagaState) - TERMINAL_SAGA_STATES)

# Allowed saga transitions; the core asserts every change it makes is in this table.
SAGA_TRANSITIONS: dict[SagaState, frozenset[SagaState]] = {
    SagaState.STARTED: frozenset({SagaState.PENDING, SagaState.COMPENSATING, SagaState.FAILED}),
    SagaState.PENDING: frozenset({SagaState.COMPLETED, SagaState.COMPENSATING, SagaState.FAILED}),
    SagaState.COMPENSATING: frozenset({SagaState.FAILED}),
    SagaState.COMPLETED: frozenset(),
    # Absorbing for every event but an operator's rerun, which takes a failed saga back to its
    # failed step (``machine.why_no_rerun`` says when that is safe).
    SagaState.FAILED: frozenset({SagaState.PENDING}),
}


class StepState(StrEnum):
    PENDING = "pending"  # not started, or waiting for its next attempt (next_attempt_at)
    RUNNING = "running"  # an attempt is dispatched and its deadline is running
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed for good; its effect is known not to exist
    TIMED_OUT = "timed_out"  # last attempt timed out: outcome unknown, so it is compensated
    COMPENSATING = "compensating"  # compensation dispatched or waiting for its next attempt
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"  # exhausted: dead-lettered for an operator
    SKIPPED = "skipped"  # never ran because the saga stopped before it
    PARKED = "parked"  # retries exhausted, routed to an operator (Park, or past the pivot)


STEP_TRANSITIONS: dict[StepState, frozenset[StepState]] = {
    # A step waiting to retry settles as FAILED (last attempt reported failure) or TIMED_OUT
    # (last attempt timed out) when compensation begins.
    StepState.PENDING: frozenset(
        {
            StepState.RUNNING,
            StepState.SKIPPED,
            StepState.FAILED,
            StepState.TIMED_OUT,
            StepState.PARKED,
        }
    ),
    StepState.RUNNING: frozenset(
        {
            StepState.PENDING,
            StepState.SUCCEEDED,
            StepState.FAILED,
            StepState.TIMED_OUT,
            StepState.PARKED,
        }
    ),
    StepState.SUCCEEDED: frozenset({StepState.COMPENSATING}),
    StepState.TIMED_OUT: frozenset({StepState.COMPENSATING}),
    StepState.FAILED: frozenset({StepState.PENDING}),  # an operator's rerun
    StepState.COMPENSATING: frozenset({StepState.COMPENSATED, StepState.COMPENSATION_FAILED}),
    StepState.COMPENSATED: frozenset(),
    StepState.COMPENSATION_FAILED: frozenset({StepState.COMPENSATING}),
    StepState.SKIPPED: frozenset({StepState.PENDING}),  # an operator's rerun
    # An operator runs it again, or (before a pivot) cancels: settled as compensation begins.
    StepState.PARKED: frozenset({StepState.RUNNING, StepState.FAILED, StepState.TIMED_OUT}),
}


def check_saga_transition(old: SagaState, new: SagaState) -> None:
    """Raise if ``old -> new`` is not in ``SAGA_TRANSITIONS`` (a bug in a rule, never input)."""
    if new is not old and new not in SAGA_TRANSITIONS[old]:
        raise AssertionError(f"illegal saga transition {old} -> {new}")


def check_step_transition(old: StepState, new: StepState) -> None:
    """Raise if ``old -> new`` is not in ``STEP_TRANSITIONS``."""
    if new is not old and new not in STEP_TRANSITIONS[old]:
        raise AssertionError(f"illegal step transition {old} -> {new}")


class Action(StrEnum):
    """Which side of a step a command or reply is about."""

    FORWARD = "forward"
    COMPENSATE = "compensate"


class OperatorAction(StrEnum):
    """What an operator can do to a saga (each recorded with who and why)."""

    RETRY = "retry"
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    RERUN = "rerun"
    FORK = "fork"


class HistoryKind(StrEnum):
    """What a row of the append-only history records."""

    SAGA_STARTED = "saga_started"
    STEP_DISPATCHED = "step_dispatched"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_FAILED = "step_failed"
    STEP_TIMED_OUT = "step_timed_out"
    RETRY_SCHEDULED = "retry_scheduled"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCEL_REQUESTED = "cancel_requested"
    OPERATOR_RETRY = "operator_retry"
    SAGA_PAUSED = "saga_paused"  # an operator paused it: nothing new is dispatched
    SAGA_RESUMED = "saga_resumed"  # ... and resumed it (detail: paused_at)
    DISPATCH_HELD = "dispatch_held"  # a dispatch decided while paused, sent on resume
    OPERATOR_RERUN = "operator_rerun"  # a failed or parked saga re-run from its failed step
    FORKED_FROM = "forked_from"  # first row of a fork: the original, step, diff, who, why
    FORKED_TO = "forked_to"  # in the original: the fork's id, step, diff, who, why
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_DISPATCHED = "compensation_dispatched"
    STEP_COMPENSATED = "step_compensated"
    COMPENSATION_FAILED = "compensation_failed"
    COMPENSATION_PARKED = "compensation_parked"
    STEP_PARKED = "step_parked"  # a step's retries are exhausted and it waits for an operator
    PIVOT_PASSED = "pivot_passed"  # the pivot step succeeded: from here on, forward only
    WAITING_FOR_SIGNAL = "waiting_for_signal"  # a wait step began (detail: signal, until)
    SIGNAL_RECEIVED = "signal_received"  # the wait's signal arrived (detail: its id)
    SIGNAL_IGNORED = "signal_ignored"  # a signal that came too late (detail: id, why)
    WAIT_TIMED_OUT = "wait_timed_out"  # no signal in time (detail: outcome fail or continue)
    GROUP_JOINED = "group_joined"  # every branch of a parallel group succeeded
    GROUP_FAILED = "group_failed"  # a branch failed for good (detail: siblings still running)
    REPLY_IGNORED = "reply_ignored"
    COMMANDS_REPUBLISHED = "commands_republished"
    EVENT_PUBLISHED = "event_published"  # choreography: an event of this saga went out
    EVENT_DUPLICATE = "event_duplicate"  # a handler saw an event it already processed
    EVENT_IGNORED = "event_ignored"  # an event arrived after the saga ended (or too late)
    SAGA_STUCK = "saga_stuck"  # an expected event did not arrive in time
    SAGA_ESCALATED = "saga_escalated"  # the sweeper handed a stuck saga to an operator
    SAGA_COMPLETED = "saga_completed"
    SAGA_FAILED = "saga_failed"
