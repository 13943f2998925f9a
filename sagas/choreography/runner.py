"""Running a choreographed saga's handlers in the service workers, and recording what happened.

Each event message reaches every service whose queue is bound to its name (``sagas.transport``
holds the kombu topology). For each of this worker's handlers that reacts to it, one delivery is
three short steps, none of which holds the saga's row lock while user code runs:

1. **look**: lock the saga row, check that the handler is still awaited (its step running, the
   saga not finished) and that this attempt has not been recorded already; release.
2. **run** the user's handler with its ``StepContext`` (outside any store transaction).
3. **record**: lock the row again, re-check, take the attempt's idempotency key (saga, handler,
   event id) in the ledger, and write the outcome the tracker decides (``tracker``: success,
   retry later, fail, park) with the events it emits in the row's outbox, in one transaction;
   publish after commit.

So delivery is at least once (a crash before step 3 re-runs the handler on redelivery: pass
``ctx.idempotency_key`` to what it calls) and recording exactly once (a duplicated event finds
the key taken in step 1 or 3 and changes nothing). A crash between commit and publish leaves
the events in the outbox for the sweeper (``republish``); their ids derive from their cause, so
a re-published event is a duplicate the ledger drops.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from .. import faults
from ..admission import check_duplicate_start
from ..context import idempotency_key
from ..definition import StepContext
from ..errors import DefinitionError, PermanentError, SagaInputError, TransientError, UnknownSaga
from ..machine import ErrorInfo, HistoryRecord, SagaStatus
from ..messages import EventMessage
from ..observability import escape, get_logger, metrics, saga_context
from ..payload import check_json
from ..registry import lookup, registered
from ..runtime import Runtime, get_runtime
from ..state import Action, HistoryKind, SagaKind, StepState
from ..store import NewSaga, SagaRecord, Tx
from ..store.joined import CallerTransaction
from ..transport import consumed_queues, local_services, publish_event, send_event_retry
from .definition import COMPENSATED_EVENT, Choreography, HandlerSpec
from .tracker import (
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

log = get_logger("sagas.choreography")

_NAMESPACE = uuid.UUID("6f1c3a52-5d0e-4c39-9a57-3f1f2b0c9e11")


def attempt_key(h: HandlerSpec, msg: EventMessage) -> str:
    """Ledger key of one attempt of a handler for one event."""
    base = f"{h.name}:{msg.event_id}"
    return base if msg.attempt == 1 else f"{base}:{msg.attempt}"


def compensation_key(h: HandlerSpec) -> str:
    return f"{h.name}:compensate"


def event_id_for(saga_id: str, name: str, cause: str) -> str:
    """Deterministic: a handler re-run after a crash emits the same event id (deduplicated)."""
    return uuid.uuid5(_NAMESPACE, f"{saga_id}|{name}|{cause}").hex


# -- starting ------------------------------------------------------------------------------------


def start(
    rt: Runtime,
    choreo: Choreography[Any],
    data: dict[str, Any],
    sid: str,
    cid: str,
    *,
    joined: CallerTransaction | None = None,
) -> None:
    """Record a validated start and publish the start event. Idempotent on ``sid``. With
    ``joined``, the row is written in the caller's transaction and the event is published once
    it commits."""
    with saga_context(saga=choreo.name, saga_id=sid, correlation_id=cid):
        outbox = event_outbox([choreo.starts_on], cause="start", data=data)

        def new_saga(now: datetime) -> NewSaga:
            outcome = event_seen(choreo, new_choreo_status(choreo, sid), choreo.starts_on, now)
            history = (HistoryRecord(HistoryKind.SAGA_STARTED), *outcome.history)
            return NewSaga(
                sid, choreo.name, choreo.version, data, cid, outcome.status, history, outbox,
                kind=SagaKind.CHOREOGRAPHED,
            )  # fmt: skip

        if joined is None:
            with rt.store.transaction() as tx:
                existing = tx.peek(sid)  # and the database clock, in one round trip
                now = tx.now()
                existing = existing or tx.insert(new_saga(now))
        else:
            now = rt.store.now()  # no read under the caller's transaction (see coordinator)
            existing = joined.insert(new_saga(now), now=now)
        if existing is not None:
            check_duplicate_start(existing, choreo.name, data)
            return

        def started() -> None:
            with saga_context(saga=choreo.name, saga_id=sid, correlation_id=cid):
                metrics.inc("sagas_started_total", saga=choreo.name)
                log.info("choreography started")
                _publish_outbox(rt, choreo, sid, cid, outbox, written_at=now)

        if joined is None:
            started()
        else:
            log.info("choreography written in the caller's transaction; started when it commits")
            joined.after_commit(started)


# -- publishing ----------------------------------------------------------------------------------


def publish(
    rt: Runtime,
    choreo: Choreography[Any],
    saga_id: str,
    correlation_id: str,
    name: str,
    data: Any,
    *,
    cause: str,
) -> None:
    publish_event(
        rt.celery,
        EventMessage(
            name=name,
            saga_id=saga_id,
            event_id=event_id_for(saga_id, name, cause),
            choreography=choreo.name,
            correlation_id=correlation_id,
            data=data,
        ),
    )


def event_outbox(names: Iterable[str], *, cause: str, data: Any) -> list[dict[str, Any]]:
    """Events a transition publishes, written to the saga row's outbox in the same save."""
    return [{"type": "event", "name": n, "cause": cause, "data": data} for n in names]


def _publish_outbox(
    rt: Runtime,
    choreo: Choreography[Any],
    saga_id: str,
    correlation_id: str,
    outbox: list[dict[str, Any]],
    *,
    written_at: datetime,
) -> None:
    if not outbox:
        return
    try:
        for entry in outbox:
            publish(rt, choreo, saga_id, correlation_id, entry["name"], entry["data"],
                    cause=entry["cause"])  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - kombu/amqp/redis errors vary by transport
        metrics.inc("sagas_publish_failed_total")
        log.error("event publish failed, the sweeper will re-publish: %s", escape(exc))
        return
    rt.store.clear_outbox(saga_id, outbox_at=written_at)


def republish(saga_id: str, grace: float, *, rt: Runtime | None = None) -> int:
    """Sweeper: publish events a crashed transition committed but never sent (same ids)."""
    rt = rt or get_runtime()
    with rt.store.transaction() as tx:
        loaded = tx.lock_unsent(saga_id, grace)
        if loaded is None:
            return 0
        record, status = loaded
        choreo = _choreography(record.name)
        entries = record.outbox or []
        with saga_context(
            saga=record.name, saga_id=record.id, correlation_id=record.correlation_id
        ):
            for entry in entries:
                publish(rt, choreo, record.id, record.correlation_id, entry["name"],
                        entry["data"], cause=entry["cause"])  # fmt: skip
            history = []
            if entries:
                log.warning("re-published %d event(s) left unsent", len(entries))
                detail = {"count": len(entries)}
                history = [HistoryRecord(HistoryKind.COMMANDS_REPUBLISHED, detail=detail)]
            tx.save(record, status, status, history, [], clear_outbox=True)
    return len(entries)


# -- receiving -----------------------------------------------------------------------------------


def deliver(raw: Any, *, rt: Runtime | None = None, consumed: Iterable[str] | None = None) -> None:
    """Run this worker's handlers for one event message. Bad messages are counted and dropped."""
    rt = rt or get_runtime()
    try:
        message = EventMessage.model_validate(raw)
        check_json(message.data, field="data")
        choreo = registered().get(message.choreography)
        if not isinstance(choreo, Choreography):
            raise SagaInputError(
                f"unknown choreography {message.choreography!r}", field="choreography"
            )
        if message.name not in choreo.events() and message.name != COMPENSATED_EVENT:
            raise SagaInputError(f"unknown event {message.name!r}", field="name")
    except (ValidationError, SagaInputError) as exc:
        metrics.inc("sagas_bad_events_total")
        log.error("malformed event dropped: %s", escape(_brief(exc)))
        return
    services = local_services(
        choreo, consumed if consumed is not None else consumed_queues(rt.celery)
    )
    with saga_context(
        saga=choreo.name, saga_id=message.saga_id, correlation_id=message.correlation_id
    ):
        for h in choreo.handlers:
            if h.service not in services or (message.handler and message.handler != h.name):
                continue
            if message.action is Action.FORWARD and h.on == message.name:
                _run_forward(rt, choreo, h, message)
            if h.compensation is not None and (
                message.action is Action.COMPENSATE
                or message.name in h.compensate_on
                or message.name == COMPENSATED_EVENT
            ):
                _run_compensation(rt, choreo, h, message)


def _run_forward(rt: Runtime, choreo: Choreography[Any], h: HandlerSpec, msg: EventMessage) -> None:
    key = attempt_key(h, msg)
    with rt.store.transaction() as tx:  # 1. look
        loaded = _lock_or_orphan(rt, tx, h, msg)
        if loaded is None or not _forward_awaited(tx, *loaded, h, msg, key):
            return
        record, status = loaded
    ctx = _context(choreo, record, status, h, msg, Action.FORWARD)
    result, error = _call(h, lambda: h.fn(ctx), h.retry.is_retryable, check_result=True)  # 2.
    with rt.store.transaction() as tx:  # 3. record
        loaded = tx.lock(msg.saga_id)
        if loaded is None or not _forward_awaited(tx, *loaded, h, msg, key):
            return
        record, status = loaded
        tx.claim(record.id, key)
        now = tx.now()
        if error is None:
            outcome = handler_done(choreo, status, h, now, result=result, attempt=msg.attempt)
            cause_data: Any = result
        else:
            log.warning(
                "handler %s attempt %d failed: %s: %s",
                h.name,
                msg.attempt,
                error.type,
                escape(error.message),
            )
            outcome = handler_failed(choreo, status, h, now, error, attempt=msg.attempt)
            cause_data = error.as_json()
        outbox = _save(tx, choreo, record, status, outcome, f"{h.name}:{msg.event_id}", cause_data)
    if outcome.retry_in is not None:
        _retry(rt, msg, h, Action.FORWARD, msg.attempt, outcome.retry_in)
        return
    if error is None:
        faults.hit("choreography.after_commit")
    _publish_outbox(rt, choreo, record.id, record.correlation_id, outbox, written_at=now)


def _forward_awaited(
    tx: Tx, record: SagaRecord, status: SagaStatus, h: HandlerSpec, msg: EventMessage, key: str
) -> bool:
    """Is this handler still waiting for this attempt's outcome? If not, note why."""
    step = status.steps[h.index]
    if status.state.terminal or step.state is not StepState.RUNNING:
        kind = HistoryKind.EVENT_IGNORED
        if not status.state.terminal and step.state is not StepState.PENDING:
            kind = HistoryKind.EVENT_DUPLICATE
        _note(
            tx, record, h, msg, kind, f"{h.name} is {step.state.value}, saga {status.state.value}"
        )
        return False
    if tx.claimed(record.id, key):
        _note(tx, record, h, msg, HistoryKind.EVENT_DUPLICATE, "already processed")
        return False
    return True


def _run_compensation(
    rt: Runtime, choreo: Choreography[Any], h: HandlerSpec, msg: EventMessage
) -> None:
    compensation = h.compensation
    assert compensation is not None
    key = compensation_key(h)
    with rt.store.transaction() as tx:  # 1. look
        loaded = _lock_or_orphan(rt, tx, h, msg)
        if loaded is None:
            return
        record, status = loaded
        if not may_compensate(status, h) or tx.claimed(record.id, key):
            return  # not this one's turn (or done): a later sagas.compensated wakes it
    attempt = msg.attempt if msg.action is Action.COMPENSATE else 1
    ctx = _context(choreo, record, status, h, msg, Action.COMPENSATE)
    _, error = _call(h, lambda: compensation(ctx), lambda _name: True, check_result=False)  # 2.
    with rt.store.transaction() as tx:  # 3. record
        loaded = tx.lock(msg.saga_id)
        if loaded is None:
            return
        record, status = loaded
        if not may_compensate(status, h) or tx.claimed(record.id, key):
            return
        now = tx.now()
        if error is None:
            tx.claim(record.id, key)
            outcome = compensation_done(choreo, status, h, now)
        else:
            outcome = compensation_failed(choreo, status, h, now, error, attempt=attempt)
            if outcome.parked:
                metrics.inc("sagas_parked_total", saga=record.name)
        outbox = _save(tx, choreo, record, status, outcome, f"{h.name}:compensated", None)
    if outcome.retry_in is not None:
        _retry(rt, msg, h, Action.COMPENSATE, attempt, outcome.retry_in)
        return
    _publish_outbox(rt, choreo, record.id, record.correlation_id, outbox, written_at=now)


def _call(
    h: HandlerSpec,
    run: Callable[[], Any],
    retryable_name: Callable[[str], bool],
    *,
    check_result: bool,
) -> tuple[Any, ErrorInfo | None]:
    """Run user code; classify its failure like an orchestrated step's (``participant``)."""
    try:
        result = run()
        if check_result:
            check_json(result, field=f"{h.name} result")
    except (PermanentError, SagaInputError) as exc:
        return None, ErrorInfo.of(exc, retryable=False)
    except Exception as exc:  # noqa: BLE001 - transient or unexpected: per the retry policy
        retryable = isinstance(exc, TransientError) or bool(retryable_name(type(exc).__name__))
        return None, ErrorInfo.of(exc, retryable=retryable)
    return result, None


def _save(
    tx: Tx,
    choreo: Choreography[Any],
    record: SagaRecord,
    status: SagaStatus,
    outcome: Outcome,
    cause: str,
    data: Any,
) -> list[dict[str, Any]]:
    """Write an outcome (and the state its events imply) with its events in the outbox."""
    emitted = _apply_events(choreo, outcome, tx.now())
    if emitted.status == status and not emitted.publish:
        tx.record_only(record.id, emitted.history)  # a retry: history only, no progress
        return []
    outbox = event_outbox(emitted.publish, cause=cause, data=data)
    tx.save(record, status, emitted.status, emitted.history, outbox, parked=outcome.parked)
    return outbox


def _retry(
    rt: Runtime, msg: EventMessage, h: HandlerSpec, action: Action, attempt: int, wait: float
) -> None:
    again = msg.model_copy(update={"handler": h.name, "action": action, "attempt": attempt + 1})
    send_event_retry(rt.celery, again, h.service, wait)


def wake(saga_id: str, *, rt: Runtime | None = None) -> bool:
    """Sweeper: flag handlers awaited past their timeout; publish declared failure events."""
    rt = rt or get_runtime()
    with rt.store.transaction() as tx:
        loaded = tx.lock(saga_id, skip_locked=True)
        if loaded is None:
            return False
        record, status = loaded
        choreo = lookup(record.name)
        if not isinstance(choreo, Choreography):
            return False
        outcome = timed_out(choreo, status, tx.now())
        if not outcome.changed:
            return False
        emitted = _apply_events(choreo, outcome, tx.now())
        stuck = not emitted.publish
        outbox = event_outbox(emitted.publish, cause="timeout", data=None)
        tx.save(record, status, emitted.status, emitted.history, outbox, parked=stuck or None)
        written_at = tx.now()
    with saga_context(saga=record.name, saga_id=record.id, correlation_id=record.correlation_id):
        log.warning("choreographed saga stuck: %s", [h.detail for h in outcome.history])
        metrics.inc("sagas_stuck_total", saga=record.name)
        _publish_outbox(rt, choreo, record.id, record.correlation_id, outbox, written_at=written_at)
    return True


# -- helpers -------------------------------------------------------------------------------------


def _apply_events(choreo: Choreography[Any], outcome: Outcome, at: datetime) -> Outcome:
    """Fold the events an outcome publishes into the saga's derived state (same transaction)."""
    status, history = outcome.status, list(outcome.history)
    for name in outcome.publish:
        if name == COMPENSATED_EVENT:
            continue
        seen = event_seen(choreo, status, name, at)
        status = seen.status
        history.extend(seen.history)
    return Outcome(
        status,
        tuple(history),
        outcome.publish,
        retry_in=outcome.retry_in,
        parked=outcome.parked,
    )


def _choreography(name: str) -> Choreography[Any]:
    try:
        found = lookup(name)
    except UnknownSaga as exc:
        raise DefinitionError(f"saga {name!r} is not a choreography this process knows") from exc
    if not isinstance(found, Choreography):
        raise DefinitionError(f"saga {name!r} is not a choreography this process knows")
    return found


def _lock_or_orphan(
    rt: Runtime, tx: Tx, h: HandlerSpec, msg: EventMessage
) -> tuple[SagaRecord, SagaStatus] | None:
    loaded = tx.lock(msg.saga_id)
    if loaded is None:
        if tx.orphan(
            event_id=msg.event_id,
            service=h.service,
            saga_id=msg.saga_id,
            name=msg.name,
            detail={"choreography": msg.choreography, "correlation_id": msg.correlation_id},
        ):
            metrics.inc("sagas_orphan_events_total")
            log.warning("event %s for unknown saga recorded as orphaned", msg.name)
        return None
    record, _ = loaded
    if record.name != msg.choreography:
        log.error(
            "event names choreography %s but saga is %s; ignored", msg.choreography, record.name
        )
        return None
    return loaded


def _note(
    tx: Tx, record: SagaRecord, h: HandlerSpec, msg: EventMessage, kind: HistoryKind, why: str
) -> None:
    metrics.inc("sagas_events_ignored_total", kind=kind.value)
    detail = {"event": msg.name, "event_id": msg.event_id, "why": why}
    tx.record_only(record.id, [HistoryRecord(kind, h.name, msg.attempt, detail)])


def _context(
    choreo: Choreography[Any],
    record: SagaRecord,
    status: SagaStatus,
    h: HandlerSpec,
    msg: EventMessage,
    action: Action,
) -> StepContext[Any]:
    return StepContext(
        saga_id=record.id,
        saga_name=choreo.name,
        step=h.name,
        action=action,
        attempt=msg.attempt,
        payload=choreo.payload_model.model_validate(record.payload),
        results={s.name: s.result for s in status.steps if s.result is not None},
        idempotency_key=idempotency_key(record.id, h.name, action),
        correlation_id=record.correlation_id,
        deadline_at=status.steps[h.index].deadline_at,
        result=status.steps[h.index].result,
    )


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"field {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)
