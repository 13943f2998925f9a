"""Starting a saga of either kind: validate, then hand it to its pattern's engine.

The one place that asks "which pattern?": ``start`` matches the definition (the typed union in
``sagas.catalog``) and calls ``coordinator.start`` or ``choreography.runner.start``. ``Saga.start``
and ``Choreography.start`` reach it through the hook this module binds when ``sagas`` loads;
``sagas.tasks.start_saga`` calls it by name.

A framework integration may register a *transaction finder* (``join_transactions``): when the
caller is inside an open database transaction on the saga store's database, the start writes
the saga row in that transaction and dispatches once it commits (``sagas.store.joined``); in a
transaction it cannot join, the start waits for the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import coordinator
from .admission import validate_start
from .catalog import SagaDefinition, get_saga
from .choreography import runner
from .choreography.definition import Choreography
from .coordinator import Applied, Claim
from .definition import Saga
from .observability import get_logger
from .registry import StartOptions, bind_starter
from .runtime import Runtime, get_runtime
from .store.joined import CallerTransaction, Deferred

log = get_logger("sagas.starter")

# Finds the caller's open transaction a start should join (None: there is none).
TransactionFinder = Callable[[Runtime], CallerTransaction | Deferred | None]
_finders: list[TransactionFinder] = []


def join_transactions(finder: TransactionFinder) -> None:
    """Register a finder of the caller's transaction (idempotent); the integrations call it."""
    if finder not in _finders:
        _finders.append(finder)


def caller_transaction(rt: Runtime) -> CallerTransaction | Deferred | None:
    for finder in _finders:
        found = finder(rt)
        if found is not None:
            return found
    return None


def validate(
    definition: SagaDefinition,
    payload: Any,
    saga_id: object = None,
    correlation_id: object = None,
    *,
    rt: Runtime | None = None,
) -> tuple[dict[str, Any], str, str]:
    """Check a start without writing anything; raise ``SagaInputError`` naming the field."""
    rt = rt or get_runtime()
    return validate_start(
        definition.name,
        definition.payload_model,
        payload,
        saga_id,
        correlation_id,
        rt.settings,
    )


def start(
    definition: SagaDefinition | str,
    payload: Any,
    *,
    saga_id: str | None = None,
    correlation_id: str | None = None,
    rt: Runtime | None = None,
    join: bool = True,
    trace: Mapping[str, str] | None = None,
) -> str:
    """Start a saga (idempotent on ``saga_id``); returns its id once its row is committed, or
    written in the caller's transaction when a registered finder found one to join. ``trace``:
    the caller's trace context from a start message (``sagas.tracing``)."""
    rt = rt or get_runtime()
    found = get_saga(definition) if isinstance(definition, str) else definition
    data, sid, cid = validate(found, payload, saga_id, correlation_id, rt=rt)
    joined = caller_transaction(rt) if join else None
    if isinstance(joined, Deferred):
        log.info("saga %s starts when the caller's transaction commits: %s", sid, joined.reason)
        joined.after_commit(lambda: _start(rt, found, data, sid, cid, None, trace))
    else:
        _start(rt, found, data, sid, cid, joined, trace)
    return sid


def _start(
    rt: Runtime,
    found: SagaDefinition,
    data: dict[str, Any],
    sid: str,
    cid: str,
    joined: CallerTransaction | None,
    trace: Mapping[str, str] | None = None,
) -> None:
    match found:
        case Saga():
            coordinator.start(rt, found, data, sid, cid, joined=joined, trace=trace)
        case Choreography():
            runner.start(rt, found, data, sid, cid, joined=joined)


def start_claiming(
    saga: Saga[Any],
    payload: Any,
    *,
    saga_id: str | None,
    correlation_id: str | None,
    claim: Claim,
    rt: Runtime,
    trace: Mapping[str, str] | None = None,
) -> tuple[str, Applied | None]:
    """Start an orchestrated saga, claiming its first dispatch for the caller to run (a worker
    of the first step's queue, ``SAGAS_START_ON_STEP_QUEUE``). None: it existed already."""
    data, sid, cid = validate(saga, payload, saga_id, correlation_id, rt=rt)
    return sid, coordinator.start(rt, saga, data, sid, cid, claim=claim, trace=trace)


def _through_hook(definition: Any, payload: Any, options: StartOptions) -> str:
    return start(
        definition, payload, saga_id=options.saga_id, correlation_id=options.correlation_id
    )


bind_starter(_through_hook)
