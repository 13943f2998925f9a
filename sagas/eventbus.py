"""The choreography event bus on the project's broker, and the handler runner.

Mapping onto Celery/kombu:

- one durable **topic exchange** ``sagas.events``; an event is a Celery task message
  ``choreography.event`` published to it with the **routing key = the event name**;
- one durable **queue per service**, ``sagas.events.<service>``, bound to the exchange once per
  event name that service's handlers and compensations react to, so every subscribing service
  gets its own copy of each event; the service's worker consumes it (``-Q <service>,
  sagas.events.<service>``) and runs the handler as that Celery task, ``acks_late``;
- retries go straight to the handler's service queue (default exchange) with a countdown;
- the embedded default binds one combined queue ``sagas.events`` to every event, consumed by its
  single in-process worker.

Each handler runs under the saga's row lock and records its outcome, the idempotency key
(saga id, handler, event id) and the events it emits in one transaction; events are published
after commit. A redelivered or duplicated event finds the key taken and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from kombu.entity import Exchange, Queue, binding
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import faults
from .choreography import (
    COMPENSATED_EVENT,
    EVENT_RE,
    Choreography,
    HandlerSpec,
    Outcome,
    compensation_done,
    event_seen,
    handler_done,
    may_compensate,
    new_choreo_status,
    timed_out,
)
from .coordinator import check_duplicate_start, validate_start
from .definition import StepContext, registered_sagas
from .errors import DefinitionError, PermanentError, SagaInputError, TransientError
from .machine import ErrorInfo, Record, SagaStatus
from .observability import escape, get_logger, metrics, saga_context
from .payload import check_json
from .retry import DEFAULT_COMPENSATION_RETRY
from .runtime import Runtime, get_runtime
from .state import Action, HistoryKind, StepState
from .store import NewSaga, SagaRecord

log = get_logger("sagas.eventbus")

EXCHANGE = Exchange("sagas.events", type="topic", durable=True)
EVENT_TASK = "choreography.event"
COMBINED_QUEUE = "sagas.events"
_NAMESPACE = uuid.UUID("6f1c3a52-5d0e-4c39-9a57-3f1f2b0c9e11")


class EventMessage(BaseModel):
    """A domain event on the bus. ``handler``/``attempt`` are set only on retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(max_length=100, pattern=EVENT_RE.pattern)
    saga_id: str = Field(min_length=1, max_length=128)
    event_id: str = Field(min_length=1, max_length=64)
    choreography: str = Field(max_length=64)
    correlation_id: str = Field(max_length=128)
    data: Any = None
    handler: str | None = None
    action: Action = Action.FORWARD
    attempt: int = Field(1, ge=1)

    def describe(self) -> str:
        extra = f" handler={self.handler} attempt={self.attempt}" if self.handler else ""
        return f"event={self.name} saga={self.choreography} id={self.saga_id}{extra}"


def choreographies() -> list[Choreography[Any]]:
    found: list[object] = list(registered_sagas().values())
    return [s for s in found if isinstance(s, Choreography)]


def event_queues(*, combined: bool = False, only: Iterable[str] | None = None) -> list[Queue]:
    """Queues to declare and consume: one per service (or one combined), bound per event.

    ``only`` limits them to the named choreographies (default: every registered one)."""
    subs: dict[str, set[str]] = {}
    names = set(only) if only is not None else None
    for choreo in choreographies():
        if names is not None and choreo.name not in names:
            continue
        for service, keys in choreo.subscriptions().items():
            subs.setdefault(
                COMBINED_QUEUE if combined else f"sagas.events.{service}", set()
            ).update(keys)
    return [
        Queue(name, bindings=[binding(EXCHANGE, routing_key=k) for k in sorted(keys)], durable=True)
        for name, keys in sorted(subs.items())
    ]


def _queues_to_declare(app: Any) -> list[Queue]:
    """The event queues this app is configured with (per service, or the embedded default's
    combined one): declaring any other would leave a copy of every event in a queue nobody
    reads. An app without configured event queues declares one per service."""
    configured = getattr(getattr(app, "amqp", None), "queues", None) or {}
    mine = [q for name, q in configured.items() if name.startswith(COMBINED_QUEUE)]
    return mine or event_queues()


def attempt_key(h: HandlerSpec, msg: EventMessage) -> str:
    """Idempotency key of one attempt of a handler for one event."""
    base = f"{h.name}:{msg.event_id}"
    return base if msg.attempt == 1 else f"{base}:{msg.attempt}"


def event_id_for(saga_id: str, name: str, cause: str) -> str:
    """Deterministic: a handler re-run after a crash emits the same event id (deduplicated)."""
    return uuid.uuid5(_NAMESPACE, f"{saga_id}|{name}|{cause}").hex


# -- starting ------------------------------------------------------------------------------------


def start_choreography(
    choreo: Choreography[Any],
    payload: Any,
    *,
    saga_id: str | None = None,
    correlation_id: str | None = None,
    rt: Runtime | None = None,
) -> str:
    rt = rt or get_runtime()
    data, sid, cid = validate_start(choreo, payload, saga_id, correlation_id, rt=rt)
    with saga_context(saga=choreo.name, saga_id=sid, correlation_id=cid):
        with rt.store.transaction() as tx:
            existing = tx.peek(sid)  # and the database clock, in one round trip
            now = tx.now()
            outcome = event_seen(choreo, new_choreo_status(choreo, sid), choreo.starts_on, now)
            history = (Record(HistoryKind.SAGA_STARTED), *outcome.history)
            outbox = event_outbox([choreo.starts_on], cause="start", data=data)
            new = NewSaga(
                sid, choreo.name, choreo.version, data, cid, outcome.status, history, outbox,
                kind=choreo.kind,
            )  # fmt: skip
            existing = existing or tx.insert(new)
        if existing is not None:
            check_duplicate_start(existing, choreo.name, data)
            return sid
        metrics.inc("sagas_started_total", saga=choreo.name)
        log.info("choreography started")
        _publish_outbox(rt, choreo, sid, cid, outbox, written_at=now)
    return sid


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
    message = EventMessage(
        name=name,
        saga_id=saga_id,
        event_id=event_id_for(saga_id, name, cause),
        choreography=choreo.name,
        correlation_id=correlation_id,
        data=data,
    )
    rt.celery.send_task(
        EVENT_TASK,
        args=[message.model_dump(mode="json")],
        exchange=EXCHANGE,
        routing_key=name,
        # Declaring the bound queues on publish means no event is lost because a subscriber's
        # worker has not started yet.
        declare=_queues_to_declare(rt.celery),
        headers={"saga_correlation_id": correlation_id, "saga_id": saga_id},
        argsrepr=message.describe(),
        kwargsrepr="{}",
    )


def _retry(
    rt: Runtime, message: EventMessage, h: HandlerSpec, action: Action, countdown: float
) -> None:
    again = message.model_copy(
        update={"handler": h.name, "action": action, "attempt": message.attempt + 1}
    )
    queue = _local_queue_for(rt, h)
    rt.celery.send_task(
        EVENT_TASK,
        args=[again.model_dump(mode="json")],
        queue=queue,
        countdown=countdown,
        headers={"saga_correlation_id": message.correlation_id, "saga_id": message.saga_id},
        argsrepr=again.describe(),
        kwargsrepr="{}",
    )


def _local_queue_for(rt: Runtime, h: HandlerSpec) -> str:
    consumed = _consumed_queues(rt.celery)
    if consumed is not None and COMBINED_QUEUE in consumed and h.queue not in consumed:
        return COMBINED_QUEUE
    return h.queue


# -- receiving -----------------------------------------------------------------------------------


def deliver(raw: Any, *, rt: Runtime | None = None, consumed: Iterable[str] | None = None) -> None:
    """Run this worker's handlers for one event message. Bad messages are counted and dropped."""
    rt = rt or get_runtime()
    try:
        message = EventMessage.model_validate(raw)
        check_json(message.data, field="data")
        choreo = registered_sagas().get(message.choreography)
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
    services = _local_services(
        choreo, consumed if consumed is not None else _consumed_queues(rt.celery)
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
    try:
        with rt.store.transaction() as tx:
            loaded = _lock_or_orphan(rt, tx, h, msg)
            if loaded is None:
                return
            record, status = loaded
            step = status.steps[h.index]
            if status.state.terminal or step.state is not StepState.RUNNING:
                kind = (
                    HistoryKind.EVENT_DUPLICATE
                    if step.state is not StepState.PENDING
                    else HistoryKind.EVENT_IGNORED
                )
                if status.state.terminal:
                    kind = HistoryKind.EVENT_IGNORED
                _note(
                    tx,
                    record,
                    h,
                    msg,
                    kind,
                    f"{h.name} is {step.state.value}, saga {status.state.value}",
                )
                return
            if not tx.claim(record.id, key):
                _note(tx, record, h, msg, HistoryKind.EVENT_DUPLICATE, "already processed")
                return
            result = h.fn(_context(choreo, record, status, h, msg, Action.FORWARD))
            check_json(result, field=f"{h.name} result")
            outcome = handler_done(choreo, status, h, tx.now(), result=result, attempt=msg.attempt)
            emitted = _apply_events(choreo, outcome, tx.now())
            outbox = event_outbox(emitted.publish, cause=f"{h.name}:{msg.event_id}", data=result)
            tx.save(record, status, emitted.status, emitted.history, outbox)
            written_at = tx.now()
    except (PermanentError, SagaInputError) as exc:
        _failed(rt, choreo, h, msg, exc, retryable=False)
        return
    except Exception as exc:  # noqa: BLE001 - transient or unexpected: per the retry policy
        if isinstance(exc, TransientError) or h.retry.is_retryable(type(exc).__name__):
            _failed(rt, choreo, h, msg, exc, retryable=True)
            return
        _failed(rt, choreo, h, msg, exc, retryable=False)
        return
    faults.hit("eventbus.after_commit")
    _publish_outbox(rt, choreo, record.id, record.correlation_id, outbox, written_at=written_at)


def _failed(
    rt: Runtime,
    choreo: Choreography[Any],
    h: HandlerSpec,
    msg: EventMessage,
    exc: BaseException,
    *,
    retryable: bool,
) -> None:
    error = ErrorInfo(type(exc).__name__, str(exc)[:2000], retryable)
    log.warning(
        "handler %s attempt %d failed: %s: %s",
        h.name,
        msg.attempt,
        error.type,
        escape(error.message),
    )
    with rt.store.transaction() as tx:
        loaded = tx.lock(msg.saga_id)
        if loaded is None:
            return
        record, status = loaded
        if status.steps[h.index].state is not StepState.RUNNING:
            return
        if retryable and msg.attempt < h.retry.max_attempts:
            # Claim this attempt (its own claim rolled back with the failure) so a copy of the
            # event arriving during the wait does not run it again and start a second chain.
            if not tx.claim(record.id, attempt_key(h, msg)):
                return
            wait = h.retry.interval(msg.attempt, f"{record.id}:{h.name}")
            tx.record_only(
                record.id,
                [
                    Record(HistoryKind.STEP_FAILED, h.name, msg.attempt, error.as_json()),
                    Record(
                        HistoryKind.RETRY_SCHEDULED,
                        h.name,
                        msg.attempt + 1,
                        {"interval": round(wait, 6)},
                    ),
                ],
            )
            retry_in: float | None = wait
            emitted = None
        else:
            retry_in = None
            outcome = handler_done(choreo, status, h, tx.now(), error=error, attempt=msg.attempt)
            emitted = _apply_events(choreo, outcome, tx.now())
            cause = f"{h.name}:{msg.event_id}"
            outbox = event_outbox(emitted.publish, cause=cause, data=error.as_json())
            tx.save(record, status, emitted.status, emitted.history, outbox)
    if retry_in is not None:
        _retry(rt, msg, h, Action.FORWARD, retry_in)
    elif emitted is not None:
        _publish_outbox(rt, choreo, record.id, record.correlation_id, outbox, written_at=tx.now())


def _run_compensation(
    rt: Runtime, choreo: Choreography[Any], h: HandlerSpec, msg: EventMessage
) -> None:
    assert h.compensation is not None
    try:
        with rt.store.transaction() as tx:
            loaded = _lock_or_orphan(rt, tx, h, msg)
            if loaded is None:
                return
            record, status = loaded
            if not may_compensate(status, h):
                return  # not this one's turn (or done): a later sagas.compensated wakes it
            if not tx.claim(record.id, f"{h.name}:compensate"):
                return
            h.compensation(_context(choreo, record, status, h, msg, Action.COMPENSATE))
            outcome = compensation_done(choreo, status, h, tx.now())
            outbox = event_outbox(outcome.publish, cause=f"{h.name}:compensated", data=None)
            tx.save(record, status, outcome.status, outcome.history, outbox)
            written_at = tx.now()
    except Exception as exc:  # noqa: BLE001 - compensations are retried until they succeed
        _compensation_failed(rt, h, msg, exc)
        return
    _publish_outbox(rt, choreo, record.id, record.correlation_id, outbox, written_at=written_at)


def _compensation_failed(
    rt: Runtime, h: HandlerSpec, msg: EventMessage, exc: BaseException
) -> None:
    policy = DEFAULT_COMPENSATION_RETRY
    error = ErrorInfo(type(exc).__name__, str(exc)[:2000], not isinstance(exc, PermanentError))
    attempt = msg.attempt if msg.action is Action.COMPENSATE else 1
    with rt.store.transaction() as tx:
        loaded = tx.lock(msg.saga_id)
        if loaded is None:
            return
        record, status = loaded
        history = [Record(HistoryKind.COMPENSATION_FAILED, h.name, attempt, error.as_json())]
        if error.retryable and attempt < policy.max_attempts:
            tx.record_only(record.id, history)
            retry_in: float | None = policy.interval(attempt, f"{record.id}:{h.name}:undo")
        else:
            retry_in = None
            steps = list(status.steps)
            steps[h.index] = replace(
                steps[h.index], state=StepState.COMPENSATION_FAILED, error=error
            )
            new = replace(status, steps=tuple(steps))
            history.append(
                Record(HistoryKind.COMPENSATION_PARKED, h.name, attempt, error.as_json())
            )
            tx.save(record, status, new, history, [], parked=True)
            metrics.inc("sagas_parked_total", saga=record.name)
    if retry_in is not None:
        retry_msg = msg.model_copy(update={"attempt": attempt})
        _retry(rt, retry_msg, h, Action.COMPENSATE, retry_in)


def wake(saga_id: str, *, rt: Runtime | None = None) -> bool:
    """Sweeper: flag handlers awaited past their timeout; publish declared failure events."""
    rt = rt or get_runtime()
    with rt.store.transaction() as tx:
        loaded = tx.lock(saga_id, skip_locked=True)
        if loaded is None:
            return False
        record, status = loaded
        choreo = registered_sagas().get(record.name)
        if not isinstance(choreo, Choreography):
            return False
        outcome = timed_out(choreo, status, tx.now())
        if not outcome.changed:
            return False
        emitted = _apply_events(choreo, outcome, tx.now())
        stuck = not emitted.publish
        outbox = event_outbox(emitted.publish, cause="timeout", data=None)
        tx.save(record, status, emitted.status, emitted.history, outbox, parked=stuck or None)
    with saga_context(saga=record.name, saga_id=record.id, correlation_id=record.correlation_id):
        log.warning("choreographed saga stuck: %s", [h.detail for h in outcome.history])
        metrics.inc("sagas_stuck_total", saga=record.name)
        _publish_outbox(rt, choreo, record.id, record.correlation_id, outbox, written_at=tx.now())
    return True


# -- helpers -------------------------------------------------------------------------------------


def _apply_events(choreo: Choreography[Any], outcome: Outcome, at: datetime) -> Outcome:
    """Fold the events an outcome publishes into the saga's derived state (same transaction)."""
    status, history = outcome.status, list(outcome.history)
    publish = list(outcome.publish)
    for name in outcome.publish:
        if name == COMPENSATED_EVENT:
            continue
        seen = event_seen(choreo, status, name, at)
        status = seen.status
        history.extend(seen.history)
    return Outcome(status, tuple(history), tuple(publish))


def event_outbox(names: Iterable[str], *, cause: str, data: Any) -> list[dict[str, Any]]:
    """Events a transition publishes, written to the saga row's outbox in the same save: a crash
    between commit and publish leaves them for the sweeper (their ids derive from the cause, so
    a re-publish is a duplicate the handlers' ledger drops)."""
    return [{"type": "event", "name": n, "cause": cause, "data": data} for n in names]


def publish_outbox_entry(rt: Runtime, record: SagaRecord, entry: dict[str, Any]) -> None:
    """Re-publish one ``event_outbox`` entry (the sweeper)."""
    choreo = registered_sagas().get(record.name)
    if not isinstance(choreo, Choreography):
        raise DefinitionError(f"saga {record.name!r} is not a choreography this process knows")
    publish(rt, choreo, record.id, record.correlation_id, entry["name"], entry["data"],
            cause=entry["cause"])  # fmt: skip


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


def _lock_or_orphan(
    rt: Runtime, tx: Any, h: HandlerSpec, msg: EventMessage
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
    record, status = loaded
    if record.name != msg.choreography:
        log.error(
            "event names choreography %s but saga is %s; ignored", msg.choreography, record.name
        )
        return None
    result: tuple[SagaRecord, SagaStatus] = loaded
    return result


def _note(
    tx: Any, record: SagaRecord, h: HandlerSpec, msg: EventMessage, kind: HistoryKind, why: str
) -> None:
    metrics.inc("sagas_events_ignored_total", kind=kind.value)
    tx.record_only(
        record.id,
        [
            Record(
                kind, h.name, msg.attempt, {"event": msg.name, "event_id": msg.event_id, "why": why}
            )
        ],
    )


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
        idempotency_key=f"{record.id}:{h.name}"
        + (":compensate" if action is Action.COMPENSATE else ""),
        correlation_id=record.correlation_id,
        deadline_at=status.steps[h.index].deadline_at,
        result=status.steps[h.index].result,
    )


def _consumed_queues(app: Any) -> set[str] | None:
    consume_from = getattr(app.amqp.queues, "consume_from", None)
    return set(consume_from) if consume_from else None


def _local_services(choreo: Choreography[Any], consumed: Iterable[str] | None) -> set[str]:
    services = {h.service for h in choreo.handlers}
    if consumed is None:
        return services
    names = set(consumed)
    if COMBINED_QUEUE in names:
        return services
    return {s for s in services if f"sagas.events.{s}" in names}


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"field {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)
