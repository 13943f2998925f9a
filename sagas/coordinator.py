"""The coordinator: read, decide, write, then publish.

Each entry point (start, a step reply, a timer, an operator command) runs one transition: read
the saga (or take the caller's snapshot), decide with the pure core, and write the outcome only
if the row is still at the version read (compare-and-set; otherwise read and decide again). The
write is committed before anything is published. Commands go into the saga row's outbox in that
same write and are cleared once published; the sweeper re-publishes any left behind by a crash
between commit and publish (``republish``, under a row lock).

A participant that can run the next step itself passes ``claim``: the dispatches it claims are
neither published nor put in the outbox, and come back in ``Applied.claimed`` for it to run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from . import faults, tracing
from .admission import check_duplicate_start
from .commands import build_command, decode_command, encode_command, still_wanted
from .definition import Saga, StepDef, get_orchestrated
from .errors import (
    ActionRefused,
    DefinitionError,
    SagaChanged,
    SagaConflict,
    SagaInputError,
    SagaNotFound,
    StoreUnavailable,
    VersionUnavailable,
)
from .machine import (
    AwaitSignal,
    Cancel,
    Decision,
    Dispatch,
    ErrorInfo,
    Event,
    Finished,
    Heartbeat,
    HistoryRecord,
    Parked,
    Retry,
    SagaStatus,
    Signal,
    Start,
    StepFailed,
    StepSucceeded,
    Wake,
    WakeAt,
    decide,
    is_parked,
    new_status,
)
from .messages import StepCommand, StepReply
from .observability import escape, get_logger, metrics, saga_context
from .payload import check_json
from .recovery import fork_status, refusal, why_no_fork, why_refused
from .runtime import Runtime, get_runtime
from .state import Action, HistoryKind, OperatorAction, SagaKind
from .store import NewSaga, SagaRecord, Snapshot, Transition, inserted_record
from .store.joined import CallerTransaction
from .transport import send_step, send_wake

log = get_logger("sagas.coordinator")

EventFactory = Callable[[datetime, Saga[Any]], Event | None]
# Compare-and-set retries of one transition before giving up (each retry means another
# transition on the same saga committed in between: duplicates, a timer and a reply racing).
MAX_CONFLICTS = 20
# Which dispatches the caller will run itself instead of publishing them (at most one is taken).
Claim = Callable[[StepDef, Action], bool]


@dataclass(frozen=True, slots=True)
class Applied:
    """What one transition did: the decision, the dispatches the caller claimed (to run them
    itself) and the saga as written (the next transition by this caller starts from it)."""

    decision: Decision
    claimed: tuple[StepCommand, ...]
    snapshot: Snapshot


# -- starting ------------------------------------------------------------------------------------


def start(
    rt: Runtime,
    saga: Saga[Any],
    data: dict[str, Any],
    sid: str,
    cid: str,
    *,
    claim: Claim | None = None,
    joined: CallerTransaction | None = None,
    trace: Mapping[str, str] | None = None,
) -> Applied | None:
    """Create the saga from a validated start and dispatch its first step.

    Idempotent on ``sid``: returns None when the saga existed already (the same start again;
    anything else raises ``SagaConflict``). With ``joined``, the row is written in the caller's
    transaction and the first step is dispatched once it commits (None is returned). ``trace``:
    the caller's trace context from the start message (tracing on, no span current here)."""
    with (
        saga_context(saga=saga.name, saga_id=sid, correlation_id=cid),
        tracing.starting(saga.name, sid, trace) as carrier,
    ):
        if joined is None:
            existing, now = rt.store.peek(sid)  # and the database clock, in one round trip
        else:
            # The caller's transaction may hold SQLite's write lock: read nothing else now;
            # a taken id shows as a conflict inside the caller's transaction instead.
            existing, now = None, rt.store.now()
        taken = rt.store.clock.monotonic()  # when ``now`` was the database's (Snapshot.now)
        if existing is None:
            deadline = None
            if saga.deadline is not None:
                deadline = now + timedelta(seconds=saga.deadline)
            decision = decide(saga.plan, new_status(sid, saga.plan, deadline), Start(now))
            claimed = _claimed(saga, decision, claim)
            new = NewSaga(
                sid,
                saga.name,
                saga.version,
                data,
                cid,
                decision.status,
                decision.history,
                _outbox(decision, claimed),
                definition_hash=saga.fingerprint,
                trace_context=carrier or None,
            )
            if joined is None:
                existing = rt.store.create(new, now=now)
            else:
                existing = joined.insert(new, now=now)
        if existing is not None:
            check_duplicate_start(existing, saga.name, data)
            return None
        snap = Snapshot(inserted_record(new, now), decision.status, now, taken, rt.store.clock)
        if joined is not None:
            log.info("saga written in the caller's transaction; dispatched when it commits")
            joined.after_commit(lambda: _started(rt, saga, decision, snap, now, sid, cid))
            return None
        return _started(rt, saga, decision, snap, now, sid, cid, claimed)


def _started(
    rt: Runtime,
    saga: Saga[Any],
    decision: Decision,
    snap: Snapshot,
    now: datetime,
    sid: str,
    cid: str,
    claimed: tuple[Dispatch, ...] = (),
) -> Applied:
    """The new saga's row is committed: count it and dispatch its first step."""
    with saga_context(saga=saga.name, saga_id=sid, correlation_id=cid):
        metrics.inc("sagas_started_total", saga=saga.name)
        log.info("saga started")
        faults.hit("coordinator.start_after_commit")
        return _after_commit(rt, saga, decision, claimed, snap, now)


# -- transitions -------------------------------------------------------------------------------------


def apply(
    saga_id: str,
    make_event: EventFactory,
    *,
    rt: Runtime | None = None,
    skip_locked: bool = False,
    claim: Claim | None = None,
    snapshot: Snapshot | None = None,
    expected_revision: int | None = None,
) -> Applied | None:
    """Run one transition on ``saga_id``. Returns None if it does not exist (or is busy and
    ``skip_locked``, or ``make_event`` returned None).

    Optimistic: read (or start from ``snapshot``), decide, then write with compare-and-set; if
    another transition committed in between, read again and decide again. With
    ``expected_revision`` (an operator's action on the saga as they saw it), a saga at another
    revision raises ``SagaChanged`` instead, with nothing written."""
    rt = rt or get_runtime()
    snap = snapshot
    for _ in range(MAX_CONFLICTS):
        if snap is None:
            snap = rt.store.load(saga_id)
            if snap is None:
                return None
        record, status, now = snap.record, snap.status, snap.now()
        check_revision(record, expected_revision)
        saga = _definition(record, status)
        with saga_context(
            saga=record.name, saga_id=record.id, correlation_id=record.correlation_id
        ):
            event = make_event(now, saga)
            if event is None:
                return None
            decision = decide(saga.plan, status, event)
            if not decision.changed:
                return Applied(decision, (), snap)
            claimed = _claimed(saga, decision, claim)
            # Parked while a step or a compensation waits for an operator; a retry clears it.
            parked = is_parked(decision.status)
            change = Transition(
                record,
                status,
                decision.status,
                decision.history,
                _outbox(decision, claimed),
                parked,
            )
            if rt.store.write(change, now=now):
                snap = snap.after_write(change, now)
                break
            # Another transition on this saga committed between our read and our write.
            metrics.inc("sagas_transition_conflicts_total")
            snap = None
            if skip_locked:
                return None  # the sweeper leaves a saga that is busy to whoever is moving it
    else:
        raise StoreUnavailable(f"saga {saga_id!r}: {MAX_CONFLICTS} conflicting writes in a row")
    assert snap is not None
    faults.hit("coordinator.after_commit")
    with saga_context(saga=record.name, saga_id=record.id, correlation_id=record.correlation_id):
        _log_history(decision.history)
        if metrics.exporting:
            _count_history(saga.name, decision.history)
        return _after_commit(
            rt, saga, decision, claimed, snap, now, after_publish="coordinator.after_publish"
        )


def _after_commit(
    rt: Runtime,
    saga: Saga[Any],
    decision: Decision,
    claimed: tuple[Dispatch, ...],
    snap: Snapshot,
    now: datetime,
    *,
    after_publish: str | None = None,
) -> Applied:
    """Publish what the committed transition decided (except what the caller claimed), clear
    the outbox once it is out, and hand the claimed dispatches back as commands."""
    record = snap.record
    rest = tuple(c for c in decision.commands if c not in claimed)
    published = _publish_safely(rt, saga, record, decision.status, rest, now)
    if after_publish:
        faults.hit(after_publish)
    if published and _outbox(decision, claimed):  # this transition wrote an outbox: clear it
        rt.store.clear_outbox_soon(record.id, now, within=rt.settings.outbox_clear_delay)
        snap = replace(snap, record=replace(record, outbox=None, outbox_at=None))
    commands = tuple(build_command(saga, record, decision.status, c) for c in claimed)
    for wait in (c for c in decision.commands if isinstance(c, AwaitSignal)):
        take_kept_signal(rt, saga, record.id, wait.step)
    return Applied(decision, commands, snap)


def take_kept_signal(rt: Runtime, saga: Saga[Any], saga_id: str, step: int) -> str | None:
    """The saga now waits at ``step``: deliver the signal kept for it, if one came early.
    Returns what became of it (None: none was kept)."""
    name = saga.steps[step].name
    kept = rt.store.pending_signal(saga_id, name)
    if kept is None:
        return None
    signal_id, data = kept
    applied = apply(saga_id, lambda now, _saga: Signal(step, now, data, signal_id), rt=rt)
    outcome = signal_outcome(applied.decision if applied else None)
    if outcome != "kept":
        rt.store.consume_signal(saga_id, signal_id, outcome)
    return outcome


def signal_outcome(decision: Decision | None) -> str:
    """What a Signal transition did: delivered, ignored (the wait had ended) or kept."""
    kinds = [h.kind for h in decision.history] if decision else []
    if HistoryKind.SIGNAL_RECEIVED in kinds:
        return "delivered"
    if HistoryKind.SIGNAL_IGNORED in kinds:
        return "ignored"
    return "kept"


def _claimed(saga: Saga[Any], decision: Decision, claim: Claim | None) -> tuple[Dispatch, ...]:
    if claim is None:
        return ()
    return tuple(
        c
        for c in decision.commands
        if isinstance(c, Dispatch) and claim(saga.steps[c.step], c.action)
    )[:1]


def reply_event(reply: StepReply) -> EventFactory:
    """The core event a participant's reply stands for (unknown steps are counted, ignored)."""

    def event(now: datetime, saga: Saga[Any]) -> Event | None:
        try:
            index = saga.plan.index(reply.step)
        except KeyError:
            log.warning("reply for unknown step %s ignored", escape(reply.step))
            metrics.inc("sagas_bad_replies_total", reason="unknown_step")
            return StepSucceeded(step=-1, attempt=reply.attempt, action=reply.action, at=now)
        if reply.ok:
            try:
                check_json(reply.result, field="result")
            except SagaInputError as exc:
                error = ErrorInfo("StepResultNotJSON", str(exc), False)
                return StepFailed(index, reply.attempt, reply.action, now, error)
            return StepSucceeded(index, reply.attempt, reply.action, now, reply.result)
        error = ErrorInfo(
            reply.error_type or "Error", reply.error_message or "", bool(reply.retryable)
        )
        return StepFailed(index, reply.attempt, reply.action, now, error)

    return event


def handle_reply(
    reply: StepReply,
    *,
    rt: Runtime | None = None,
    claim: Claim | None = None,
    snapshot: Snapshot | None = None,
) -> Applied | None:
    """Apply a participant's reply (None: no such saga)."""
    return apply(reply.saga_id, reply_event(reply), rt=rt, claim=claim, snapshot=snapshot)


def handle_remote_reply(reply: StepReply, *, rt: Runtime | None = None) -> Applied | None:
    """A reply that arrived by message: an unknown saga is logged and counted."""
    applied = handle_reply(reply, rt=rt)
    if applied is None:
        log.warning("reply for unknown saga %s ignored", escape(reply.saga_id))
        metrics.inc("sagas_bad_replies_total", reason="unknown_saga")
    return applied


def heartbeat(
    saga_id: str,
    step: str,
    attempt: int,
    details: Any,
    *,
    rt: Runtime | None = None,
    started: bool = False,
) -> bool:
    """Record a forward attempt's heartbeat (its deadline moves on, its details are kept;
    ``started``: the worker's mark that the attempt began, which keeps the earlier progress).
    Returns whether the attempt is still the saga's open one: False once it is fenced (and
    for an unknown saga or step)."""
    check_json(details, field="heartbeat details")

    def event(now: datetime, saga: Saga[Any]) -> Event | None:
        try:
            return Heartbeat(saga.plan.index(step), attempt, now, details, started)
        except KeyError:
            return None

    applied = apply(saga_id, event, rt=rt)
    return applied is not None and applied.decision.touched


def wake(saga_id: str, *, rt: Runtime | None = None, skip_locked: bool = False) -> Applied | None:
    return apply(saga_id, lambda now, _saga: Wake(now), rt=rt, skip_locked=skip_locked)


class OperatorCall(Protocol):
    """``retry`` and ``cancel``: an operator's event on one saga, now."""

    def __call__(
        self,
        saga_id: str,
        reason: str,
        *,
        rt: Runtime | None = None,
        by: str = "",
        revision: int | None = None,
    ) -> Decision: ...


def _operator_call(
    what: OperatorAction, event: Callable[[datetime, str, str], Event], doc: str
) -> OperatorCall:
    """An operator action that differs from the others only by its event and its name."""

    def act(
        saga_id: str,
        reason: str,
        *,
        rt: Runtime | None = None,
        by: str = "",
        revision: int | None = None,
    ) -> Decision:
        make = lambda now, _saga: event(now, reason, by)  # noqa: E731
        return operator_transition(saga_id, make, what, rt, revision)

    act.__name__ = act.__qualname__ = what.value
    act.__doc__ = doc
    return act


cancel = _operator_call(
    OperatorAction.CANCEL,
    Cancel,
    "Operator: stop forward progress and compensate now (refused past the pivot).",
)
retry = _operator_call(
    OperatorAction.RETRY,
    Retry,
    "Operator: re-drive the open step, or the parked (dead-lettered) compensation, now.",
)


def operator_transition(
    saga_id: str,
    make: EventFactory,
    what: OperatorAction,
    rt: Runtime | None,
    revision: int | None = None,
) -> Decision:
    """An operator's transition: ``SagaNotFound``, ``SagaChanged`` (not at ``revision``) or
    ``ActionRefused`` (nothing to do in its state) with nothing written, or the decision."""
    applied = apply(saga_id, make, rt=rt, expected_revision=revision)
    if applied is None:
        raise SagaNotFound(f"no saga with id {saga_id!r}")
    decision = applied.decision
    if not decision.changed:
        record = applied.snapshot.record
        saga = get_orchestrated(record.name, record.version)
        why = why_refused(what, saga.plan, decision.status, decision)
        raise ActionRefused(refusal(what, saga_id, why or "nothing changed"))
    metrics.inc("sagas_operator_actions_total", action=what.value)
    return decision


def check_revision(record: SagaRecord, expected: int | None) -> None:
    """``SagaChanged`` if the saga is no longer at the revision an operator acted on."""
    if expected is not None and record.lock_version != expected:
        raise SagaChanged(
            f"saga {record.id!r} changed since revision {expected} (now {record.lock_version}, "
            f"{record.state.value}): nothing done; look at it again",
            expected=expected,
            actual=record.lock_version,
        )


def fork(
    rt: Runtime,
    saga: Saga[Any],
    original_id: str,
    revision: int,
    new_id: str,
    data: dict[str, Any],
    from_step: int,
    history_from: HistoryRecord,
    history_to: HistoryRecord,
) -> Applied:
    """Start ``new_id`` as a fork of ``original_id`` (still at ``revision``) from step
    ``from_step``: in one transaction the new saga is inserted, linked to the original
    (``forked_from``) with ``history_from`` first in its history, and ``history_to`` is added
    to the original's; then its first step is dispatched. ``SagaChanged``, ``ActionRefused``
    (the original cannot be forked now) or ``SagaConflict`` (``new_id`` is taken) write nothing."""
    with rt.store.transaction() as tx:
        loaded = tx.lock(original_id)
        if loaded is None:
            raise SagaNotFound(f"no saga with id {original_id!r}")
        record, status = loaded
        check_revision(record, revision)
        refused = why_no_fork(saga.plan, status, from_step)
        if refused is not None:
            raise ActionRefused(f"cannot fork saga {original_id!r}: {refused}")
        now = tx.now()
        taken = rt.store.clock.monotonic()
        deadline = now + timedelta(seconds=saga.deadline) if saga.deadline is not None else None
        first = fork_status(saga.plan, status, from_step, new_id, deadline)
        decision = decide(saga.plan, first, Start(now))
        decision = replace(decision, history=(history_from, *decision.history))
        new = NewSaga(
            new_id,
            saga.name,
            record.version,
            data,
            record.correlation_id,  # the same business request: one trace, one correlation
            decision.status,
            decision.history,
            _outbox(decision),
            definition_hash=saga.fingerprint,
            forked_from=original_id,
        )
        if tx.insert(new) is not None:
            raise SagaConflict(f"saga id {new_id!r} is taken", field="saga_id", saga=saga.name)
        tx.record_only(original_id, [history_to])
    snap = Snapshot(inserted_record(new, now), decision.status, now, taken, rt.store.clock)
    metrics.inc("sagas_operator_actions_total", action=OperatorAction.FORK.value)
    return _started(rt, saga, decision, snap, now, new_id, record.correlation_id)


def definition_of(record: SagaRecord, status: SagaStatus) -> Saga[Any]:
    """The definition a saga runs on (``VersionUnavailable`` when this process lacks it)."""
    return _definition(record, status)


def republish(saga_id: str, grace: float, *, rt: Runtime | None = None) -> int:
    """Publish commands a crashed transition committed but never sent. Returns how many."""
    rt = rt or get_runtime()
    sent = 0
    with rt.store.transaction() as tx:
        loaded = tx.lock_unsent(saga_id, grace)
        if loaded is None:
            return 0
        record, status = loaded
        if record.kind is not SagaKind.ORCHESTRATED:
            raise DefinitionError(f"saga {saga_id!r} is {record.kind.value}, not orchestrated")
        with saga_context(
            saga=record.name, saga_id=record.id, correlation_id=record.correlation_id
        ):
            saga = _definition(record, status)
            commands = [decode_command(c) for c in record.outbox or []]
            wanted = [c for c in commands if not isinstance(c, Dispatch) or still_wanted(c, status)]
            _publish(rt, saga, record, status, tuple(wanted), tx.now())
            sent = len(wanted)
            history = []
            if sent:
                log.warning("re-published %d command(s) left unsent by a crashed transition", sent)
                history = [HistoryRecord(HistoryKind.COMMANDS_REPUBLISHED, detail={"count": sent})]
            tx.save(record, status, status, history, [], clear_outbox=True)
    return sent


# -- helpers -------------------------------------------------------------------------------------


def _definition(record: SagaRecord, status: SagaStatus) -> Saga[Any]:
    """The definition a saga in flight runs on: the version it started with, with the steps it
    started with. ``VersionUnavailable`` when this process lacks it (the task retries its
    message, so a process that has it takes the work)."""
    saga = get_orchestrated(record.name, record.version)
    mismatch = definition_mismatch(saga, record, [s.name for s in status.steps])
    if mismatch is not None:
        raise VersionUnavailable(mismatch, field="version", saga=record.name)
    return saga


def definition_mismatch(saga: Saga[Any], record: SagaRecord, steps: list[str]) -> str | None:
    """Why ``saga`` is not the definition ``record`` started on (None: it is)."""
    difference = saga.differs_from(record.definition_hash, steps)
    if difference is None:
        return None
    return (
        f"saga {record.name!r} version {record.version} (id {record.id!r}) was {difference}: "
        "a changed definition needs a new version number"
    )


def _outbox(decision: Decision, claimed: tuple[Dispatch, ...] = ()) -> list[dict[str, Any]]:
    return [
        encode_command(c)
        for c in decision.commands
        if isinstance(c, Dispatch | WakeAt) and c not in claimed
    ]


def _publish_safely(
    rt: Runtime,
    saga: Saga[Any],
    record: SagaRecord,
    status: SagaStatus,
    commands: tuple[Any, ...],
    now: datetime,
) -> bool:
    """Publish after commit. The transition is durable already: if the broker is unreachable,
    its commands stay in the outbox for the sweeper instead of failing the caller (who would
    otherwise retry a start that did happen)."""
    try:
        _publish(rt, saga, record, status, commands, now)
    except Exception as exc:  # noqa: BLE001 - kombu/amqp/redis errors vary by transport
        metrics.inc("sagas_publish_failed_total")
        log.error("publish failed, the sweeper will re-publish: %s", escape(exc))
        return False
    return True


def _publish(
    rt: Runtime,
    saga: Saga[Any],
    record: SagaRecord,
    status: SagaStatus,
    commands: tuple[Any, ...],
    now: datetime,
) -> None:
    if record.trace_context and tracing.active():
        with tracing.publishing(record.trace_context):
            _send_all(rt, saga, record, status, commands, now)
    else:
        _send_all(rt, saga, record, status, commands, now)


def _send_all(
    rt: Runtime,
    saga: Saga[Any],
    record: SagaRecord,
    status: SagaStatus,
    commands: tuple[Any, ...],
    now: datetime,
) -> None:
    app, queue = rt.celery, rt.settings.coordinator_queue
    for cmd in commands:
        if isinstance(cmd, Dispatch):
            message = build_command(saga, record, status, cmd)
            step = saga.steps[cmd.step]
            send_step(app, step, message, queue, saga.payload_model, record.trace_context)
        elif isinstance(cmd, WakeAt):
            countdown = (cmd.at - now).total_seconds()
            if countdown <= rt.settings.max_countdown:
                send_wake(app, record.id, countdown, queue)
        elif isinstance(cmd, Parked):
            metrics.inc("sagas_parked_total", saga=saga.name)
            side = "compensation of step" if cmd.action is Action.COMPENSATE else "step"
            log.error(
                "%s %s exhausted (%s: %s); saga parked for an operator",
                side,
                saga.steps[cmd.step].name,
                escape(cmd.error.type),
                escape(cmd.error.message),
            )
        elif isinstance(cmd, Finished):
            _finished(saga, record, cmd, now)


def _finished(saga: Saga[Any], record: SagaRecord, cmd: Finished, now: datetime) -> None:
    outcome = cmd.state.value
    metrics.inc("sagas_finished_total", saga=saga.name, state=outcome)
    if metrics.exporting:
        seconds = max((now - record.created_at).total_seconds(), 0.0)
        metrics.observe("sagas_saga_duration_seconds", seconds, saga=saga.name, outcome=outcome)
    tracing.finished(
        record.trace_context,
        name=saga.name,
        saga_id=record.id,
        started=record.created_at,
        ended=now,
        outcome=outcome,
    )
    log.info("saga %s", outcome)


# History kinds counted for the served metrics: (metric, outcome label or None).
_COUNTED: dict[HistoryKind, tuple[str, str | None]] = {
    HistoryKind.STEP_SUCCEEDED: ("sagas_step_attempts_total", "succeeded"),
    HistoryKind.STEP_FAILED: ("sagas_step_attempts_total", "failed"),
    HistoryKind.STEP_TIMED_OUT: ("sagas_step_attempts_total", "timed_out"),
    HistoryKind.RETRY_SCHEDULED: ("sagas_step_retries_total", None),
    HistoryKind.STEP_COMPENSATED: ("sagas_compensations_total", "compensated"),
    HistoryKind.COMPENSATION_FAILED: ("sagas_compensations_total", "failed"),
    HistoryKind.COMPENSATION_PARKED: ("sagas_compensations_total", "parked"),
}


def _count_history(name: str, history: tuple[HistoryRecord, ...]) -> None:
    """Count what a committed transition recorded (each attempt's outcome is committed once,
    whichever worker or reply settled it; duplicates are ``reply_ignored``)."""
    for h in history:
        counted = _COUNTED.get(h.kind)
        if counted is None or h.step is None:
            continue
        metric, outcome = counted
        if h.kind is HistoryKind.STEP_TIMED_OUT and (h.detail or {}).get("action") == "compensate":
            metric, outcome = "sagas_compensations_total", "timed_out"
        if outcome is None:
            metrics.inc(metric, saga=name, step=h.step)
        else:
            metrics.inc(metric, saga=name, step=h.step, outcome=outcome)


def _log_history(history: tuple[HistoryRecord, ...]) -> None:
    for h in history:
        if h.kind is HistoryKind.REPLY_IGNORED:
            metrics.inc("sagas_replies_ignored_total")
            log.info("reply ignored: step %s attempt %s %s", h.step, h.attempt, h.detail)
        elif h.kind in (HistoryKind.STEP_FAILED, HistoryKind.COMPENSATION_FAILED):
            detail = h.detail or {}
            log.warning(
                "%s: step %s attempt %s: %s: %s",
                h.kind.value,
                h.step,
                h.attempt,
                escape(detail.get("type")),
                escape(detail.get("message")),
            )
        else:
            log.debug("%s step=%s attempt=%s", h.kind.value, h.step, h.attempt)
