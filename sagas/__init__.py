"""sagas: orchestrated and choreographed distributed transactions on Celery."""

from __future__ import annotations

from . import query as _query  # binds SagaHandle.status/wait to the store
from . import starter as _starter  # binds Saga.start/Choreography.start to the engine
from .catalog import get_saga, registered_sagas
from .definition import Saga, StepContext
from .errors import (
    ConfigurationError,
    DefinitionError,
    InvalidSagaId,
    PayloadInvalid,
    PayloadNotJSON,
    PayloadTooLarge,
    PermanentError,
    SagaConflict,
    SagaError,
    SagaInputError,
    SagaNotFound,
    SignalUnknown,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TransientError,
    UnknownSaga,
)
from .heartbeats import heartbeat
from .install import configure, install
from .query import SagaInfo, SagaWaitTimeout, StepInfo, get, wait
from .registry import SagaHandle
from .retry import RetryPolicy
from .routes import AwaitOperator, Compensate, Continue, Park, RetryAfter
from .runtime import get_runtime
from .settings import Settings
from .signals import SignalSent, signal
from .state import Action, SagaKind, SagaState, StepState
from .tasks import start_saga

del _query, _starter

__all__ = [
    "Action",
    "AwaitOperator",
    "Compensate",
    "ConfigurationError",
    "Continue",
    "DefinitionError",
    "InvalidSagaId",
    "Park",
    "PayloadInvalid",
    "PayloadNotJSON",
    "PayloadTooLarge",
    "PermanentError",
    "RetryAfter",
    "RetryPolicy",
    "Saga",
    "SagaConflict",
    "SagaError",
    "SagaHandle",
    "SagaInfo",
    "SagaInputError",
    "SagaKind",
    "SagaNotFound",
    "SagaState",
    "SagaWaitTimeout",
    "Settings",
    "SignalSent",
    "SignalUnknown",
    "StepContext",
    "StepInfo",
    "StepState",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "TransientError",
    "UnknownSaga",
    "configure",
    "get",
    "get_runtime",
    "get_saga",
    "heartbeat",
    "install",
    "registered_sagas",
    "signal",
    "start_saga",
    "wait",
]
