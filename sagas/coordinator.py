"""The coordinator: read, decide, write, then publish.

Each entry point (start, a step reply, a timer, an operator command) runs one transition: read
the saga (or take the caller's snapshot), decide with the pure core, and write the outcome only
if the row is still at the version read (compare-and-set; otherwise read and decide again). The
write is committed before anything is published. Commands go into the saga row's outbox in that
same write and are cleared once published; the sweeper re-publishes any left behind by a crash
between commit and publish (``republish``, under a row lock).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from . import faults
from .definition import Saga, StepDef, get_saga
from .errors import (
    DefinitionError,
    SagaConflict,
    SagaError,
    SagaInputError,
    SagaNotFound,
    StoreUnavailable,
)
from .machine import (
    Decision,
    Dispatch,
    ErrorInfo,
    Event,
    Finished,
    Parked,
    Record,
    SagaStatus,
    Start,
    StepFailed,
    StepSucceeded,
    WakeAt,
    decide,
    new_status,
    next_wakeup,
)
from .messages import StepCommand, StepReply
from .observability import escape, get_logger, metrics, saga_context
from .payload import check_json, check_saga_id, validate_payload
from .runtime import Runtime, get_runtime
from .state import Action, HistoryKind, StepState
from .store import NewSaga, SagaRecord, Snapshot, Transition, payload_hash
from .transport import build_command, decode_command, encode_command, send_step, send_wake
from .transport import still_wanted as _still_wanted

log = get_logger("sagas.coordinator")

EventFactory = Callable[[datetime, Saga[Any]], Event | None]
# Compare-and-set retries of one transition before giving up (each retry means another
# transition on the same saga committed in between: duplicates, a timer and a reply racing).
MAX_CONFLICTS = 20
Inline = Callable[[StepDef, Action], bool]


# -- starting ------------------------------------------------------------------------------------


def prepare_start(
    name: object,
    payload: Any,
    saga_id: object = None,
    correlation_id: object = None,
    *,
    rt: Runtime | None = None,
) -> tuple[Saga[Any], dict[str, Any], str, str]:
    """Validate a start request without writing anything; raise SagaInputError naming the field."""
    saga = get_saga(name)
    data, sid, cid = validate_start(saga, payload, saga_id, correlation_id, rt=rt)
    return saga, data, sid, cid


def validate_start(
    definition: Any,
    payload: Any,
    saga_id: object = None,
    correlation_id: object = None,
    *,
    rt: Runtime | None = None,
) -> tuple[dict[str, Any], str, str]:
    """Canonical payload, saga id and correlation id of a start (orchestrated or choreographed)."""
    rt = rt or get_runtime()
    sid = check_saga_id(saga_id) if saga_id is not None else uuid.uuid4().hex
    cid = (
        check_saga_id(correlation_id, field="correlation_id")
        if correlation_id is not None
        else uuid.uuid4().hex
    )
    data = validate_payload(
        definition.payload_model,
        payload,
        saga=definition.name,
        max_bytes=rt.settings.max_payload_bytes,
        max_depth=rt.settings.max_payload_depth,
    )
    return data, sid, cid


def check_duplicate_start(existing: SagaRecord, name: str, data: dict[str, Any]) -> None:
    """A start whose id is taken: the same saga again is fine; anything else is a conflict."""
    if existing.name == name and existing.payload_hash == payload_hash(data):
        log.info("start is a duplicate of an existing saga; nothing to do")
        return
    metrics.inc("sagas_start_rejected_total", saga=name, reason="SagaConflict")
    differs = "name" if existing.name != name else "payload"
    raise SagaConflict(
        f"saga id {existing.id!r} already exists as a {existing.name!r} saga with a "
        f"different {differs}",
        field="saga_id",
        saga=name,
    )


def start(
    name: str,
    payload: Any,
    *,
    saga_id: str | None = None,
    correlation_id: str | None = None,
    rt: Runtime | None = None,
    inline: Inline | None = None,
    inline_out: list[StepCommand] | None = None,
    cursor: Cursor | None = None,
) -> str:
    """Create the saga and dispatch its first step. Idempotent on ``saga_id``.

    ``inline``/``inline_out``/``cursor`` as in ``apply``: a worker that serves the first step's
    queue may claim its dispatch and run it in the same task (``SAGAS_START_ON_STEP_QUEUE``)."""
    rt = rt or get_runtime()
    definition: Any = get_saga(name)
    if getattr(definition, "kind", "") == "choreographed":
        from .eventbus import start_choreography  # start_saga.delay works for both patterns

        return start_choreography(
            definition, payload, saga_id=saga_id, correlation_id=correlation_id, rt=rt
        )
    saga, data, sid, cid = prepare_start(name, payload, saga_id, correlation_id, rt=rt)
    for attempt in (1, 2):
        try:
            return _start(rt, saga, data, sid, cid, inline, inline_out, cursor)
        except IntegrityError:
            if attempt == 2:  # pragma: no cover - a second race on one id
                raise
            # Two starts raced on one new id: the loser retries and finds the winner's row.
    raise AssertionError("unreachable")


def _start(
    rt: Runtime,
    saga: Saga[Any],
    data: dict[str, Any],
    sid: str,
    cid: str,
    inline: Inline | None = None,
    inline_out: list[StepCommand] | None = None,
    cursor: Cursor | None = None,
) -> str:
    with saga_context(saga=saga.name, saga_id=sid, correlation_id=cid):
        existing, now = rt.store.peek(sid)  # and the database clock, in one round trip
        if existing is None:
            deadline = None
            if saga.deadline is not None:
                deadline = now + timedelta(seconds=saga.deadline)
            decision = decide(saga.plan, new_status(sid, saga.plan, deadline), Start(now))
            claimed = _claim_inline(saga, decision, inline)
            outbox = _outbox(decision, claimed)
            new = NewSaga(
                sid, saga.name, saga.version, data, cid, decision.status, decision.history, outbox
            )
            existing = rt.store.create(new, now=now)
        if existing is not None:
            check_duplicate_start(existing, saga.name, data)
            return sid
        metrics.inc("sagas_started_total", saga=saga.name)
        log.info("saga started")
        record = _fresh_record(sid, saga, data, cid, now, decision.status, outbox)
        faults.hit("coordinator.start_after_commit")
        rest = tuple(c for c in decision.commands if c not in claimed)
        if _publish_safely(rt, saga, record, decision.status, rest, now) and outbox:
            rt.store.clear_outbox(sid, outbox_at=now)
            record = replace(record, outbox=None, outbox_at=None)
        if inline_out is not None:
            inline_out.extend(build_command(saga, record, decision.status, c) for c in claimed)
        if cursor is not None:
            cursor.snapshot = Snapshot(record, decision.status, now, time.monotonic())
        return sid


def _fresh_record(
    sid: str,
    saga: Saga[Any],
    data: dict[str, Any],
    cid: str,
    now: datetime,
    status: SagaStatus,
    outbox: list[dict[str, Any]],
) -> SagaRecord:
    """The row ``Store.create`` just inserted, as ``Store.load`` would read it."""
    return SagaRecord(
        id=sid,
        name=saga.name,
        version=saga.version,
        state=status.state,
        payload=data,
        payload_hash=payload_hash(data),
        correlation_id=cid,
        created_at=now,
        updated_at=now,
        finished_at=None,
        deadline_at=status.deadline_at,
        wake_at=next_wakeup(status),
        outbox=outbox or None,
        outbox_at=now if outbox else None,
        parked=False,
        lock_version=1,
        failure=None,
    )


# -- transitions -------------------------------------------------------------------------------------


class Cursor:
    """What a participant knows of a saga between its transitions: the snapshot it last read
    or wrote. ``apply`` starts from it instead of re-reading, and leaves the new one."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.snapshot = snapshot


def apply(
    saga_id: str,
    make_event: EventFactory,
    *,
    rt: Runtime | None = None,
    skip_locked: bool = False,
    inline: Inline | None = None,
    inline_out: list[StepCommand] | None = None,
    cursor: Cursor | None = None,
) -> Decision | None:
    """Run one transition on ``saga_id``. Returns None if it does not exist (or is busy and
    ``skip_locked``).

    Optimistic: read (or take ``cursor``'s snapshot), decide, then write with compare-and-set;
    if another transition committed in between, read again and decide again. ``inline(step,
    action)`` may claim dispatches the caller will run itself (a participant running the next
    step on its own queue): those are neither published nor put in the outbox; their commands
    are appended to ``inline_out``.
    """
    rt = rt or get_runtime()
    snap = cursor.snapshot if cursor is not None else None
    for _ in range(MAX_CONFLICTS):
        if snap is None:
            snap = rt.store.load(saga_id)
            if snap is None:
                return None
        record, status, now = snap.record, snap.status, snap.now()
        saga = _definition(record, status)
        with saga_context(
            saga=record.name, saga_id=record.id, correlation_id=record.correlation_id
        ):
            event = make_event(now, saga)
            if event is None:
                return None
            decision = decide(saga.plan, status, event)
            if not decision.changed:
                return decision
            claimed = _claim_inline(saga, decision, inline)
            outbox = _outbox(decision, claimed)
            # Parked while any compensation is dead-lettered; an operator retry clears it.
            parked = any(st.state is StepState.COMPENSATION_FAILED for st in decision.status.steps)
            history = decision.history
            change = Transition(record, status, decision.status, history, outbox, parked)
            if rt.store.write(change, now=now):
                snap = snap.after_write(decision.status, now, outbox, parked)
                break
            # Another transition on this saga committed between our read and our write.
            metrics.inc("sagas_transition_conflicts_total")
            snap = None
            if skip_locked:
                return None  # the sweeper leaves a saga that is busy to whoever is moving it
    else:
        raise StoreUnavailable(f"saga {saga_id!r}: {MAX_CONFLICTS} conflicting writes in a row")
    faults.hit("coordinator.after_commit")
    with saga_context(saga=record.name, saga_id=record.id, correlation_id=record.correlation_id):
        _log_history(decision.history)
        rest = tuple(c for c in decision.commands if c not in claimed)
        published = _publish_safely(rt, saga, record, decision.status, rest, now)
        faults.hit("coordinator.after_publish")
        if published and outbox:
            rt.store.clear_outbox(saga_id, outbox_at=now)
            snap = replace(snap, record=replace(snap.record, outbox=None, outbox_at=None))
        if inline_out is not None:
            inline_out.extend(build_command(saga, record, decision.status, c) for c in claimed)
    if cursor is not None:
        cursor.snapshot = snap
    return decision


def _claim_inline(saga: Saga[Any], decision: Decision, inline: Inline | None) -> list[Dispatch]:
    if inline is None:
        return []
    return [
        c
        for c in decision.commands
        if isinstance(c, Dispatch) and inline(saga.steps[c.step], c.action)
    ][:1]


def handle_reply(
    reply: StepReply,
    *,
    rt: Runtime | None = None,
    inline: Inline | None = None,
    inline_out: list[StepCommand] | None = None,
    cursor: Cursor | None = None,
) -> Decision | None:
    """Apply a participant's reply (None: no such saga). Unknown steps are logged and counted."""

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

    return apply(reply.saga_id, event, rt=rt, inline=inline, inline_out=inline_out, cursor=cursor)


def handle_remote_reply(reply: StepReply, *, rt: Runtime | None = None) -> Decision | None:
    """A reply that arrived by message: an unknown saga is logged and counted."""
    decision = handle_reply(reply, rt=rt)
    if decision is None:
        log.warning("reply for unknown saga %s ignored", escape(reply.saga_id))
        metrics.inc("sagas_bad_replies_total", reason="unknown_saga")
    return decision


def wake(saga_id: str, *, rt: Runtime | None = None, skip_locked: bool = False) -> Decision | None:
    from .machine import Wake

    return apply(saga_id, lambda now, _saga: Wake(now), rt=rt, skip_locked=skip_locked)


def cancel(saga_id: str, reason: str, *, rt: Runtime | None = None) -> Decision:
    """Operator: stop forward progress and compensate now."""
    from .machine import Cancel

    return _operator(saga_id, lambda now, _saga: Cancel(now, reason), "cancel", rt)


def retry(saga_id: str, reason: str, *, rt: Runtime | None = None) -> Decision:
    """Operator: re-drive the open step, or the parked (dead-lettered) compensation, now."""
    from .machine import Retry

    return _operator(saga_id, lambda now, _saga: Retry(now, reason), "retry", rt)


def _operator(saga_id: str, make: EventFactory, what: str, rt: Runtime | None) -> Decision:
    decision = apply(saga_id, make, rt=rt)
    if decision is None:
        raise SagaNotFound(f"no saga with id {saga_id!r}")
    if not decision.changed:
        raise SagaError(f"nothing to {what}: saga {saga_id!r} is {decision.status.state.value}")
    metrics.inc("sagas_operator_actions_total", action=what)
    return decision


def republish(saga_id: str, grace: float, *, rt: Runtime | None = None) -> int:
    """Publish commands a crashed transition committed but never sent. Returns how many."""
    rt = rt or get_runtime()
    sent = 0
    with rt.store.transaction() as tx:
        loaded = tx.lock(saga_id, skip_locked=True)
        if loaded is None:
            return 0
        record, status = loaded
        if record.outbox_at is None or (tx.now() - record.outbox_at).total_seconds() < grace:
            return 0
        with saga_context(
            saga=record.name, saga_id=record.id, correlation_id=record.correlation_id
        ):
            if record.kind == "choreographed":
                from .eventbus import publish_outbox_entry

                # Events, not commands: each is re-published as it was (same id).
                for entry in record.outbox or []:
                    publish_outbox_entry(rt, record, entry)
                sent = len(record.outbox or [])
            else:
                saga = _definition(record, status)
                commands = [decode_command(c) for c in record.outbox or []]
                wanted = [
                    c for c in commands if not isinstance(c, Dispatch) or _still_wanted(c, status)
                ]
                _publish(rt, saga, record, status, tuple(wanted), tx.now())
                sent = len(wanted)
            history = []
            if sent:
                log.warning("re-published %d command(s) left unsent by a crashed transition", sent)
                history = [Record(HistoryKind.COMMANDS_REPUBLISHED, detail={"count": sent})]
            tx.save(record, status, status, history, [], clear_outbox=True)
    return sent


# -- helpers -------------------------------------------------------------------------------------


def _definition(record: SagaRecord, status: SagaStatus) -> Saga[Any]:
    saga = get_saga(record.name)
    names = tuple(s.name for s in saga.plan.steps)
    if names != tuple(s.name for s in status.steps):
        raise DefinitionError(
            f"saga {record.name!r} id {record.id!r} was started with steps "
            f"{[s.name for s in status.steps]} but this process defines {list(names)} "
            f"(stored version {record.version}, defined version {saga.version})"
        )
    return saga


def _outbox(decision: Decision, claimed: list[Dispatch] | None = None) -> list[dict[str, Any]]:
    return [
        encode_command(c)
        for c in decision.commands
        if isinstance(c, Dispatch | WakeAt) and c not in (claimed or ())
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
    app, queue = rt.celery, rt.settings.coordinator_queue
    for cmd in commands:
        if isinstance(cmd, Dispatch):
            message = build_command(saga, record, status, cmd)
            send_step(app, saga.steps[cmd.step], message, queue)
        elif isinstance(cmd, WakeAt):
            countdown = (cmd.at - now).total_seconds()
            if countdown <= rt.settings.max_countdown:
                send_wake(app, record.id, countdown, queue)
        elif isinstance(cmd, Parked):
            metrics.inc("sagas_parked_total", saga=saga.name)
            log.error(
                "compensation of step %s exhausted (%s: %s); saga parked for an operator",
                saga.steps[cmd.step].name,
                escape(cmd.error.type),
                escape(cmd.error.message),
            )
        elif isinstance(cmd, Finished):
            metrics.inc("sagas_finished_total", saga=saga.name, state=cmd.state.value)
            log.info("saga %s", cmd.state.value)


def _log_history(history: tuple[Record, ...]) -> None:
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


def remote_action(action: str) -> Action:
    return Action(action)
