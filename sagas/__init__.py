"""sagas: orchestrated and choreographed distributed transactions on Celery."""

from __future__ import annotations

from . import starter as _starter  # binds Saga.start/Choreography.start to the engine
from .catalog import get_saga, registered_sagas
from .definition import Saga, StepContext
from .errors import (
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
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TransientError,
    UnknownSaga,
)
from .install import configure
from .retry import RetryPolicy
from .runtime import get_runtime
from .settings import Settings
from .state import Action, SagaKind, SagaState, StepState
from .tasks import start_saga

del _starter

__all__ = [
    "Action",
    "DefinitionError",
    "InvalidSagaId",
    "PayloadInvalid",
    "PayloadNotJSON",
    "PayloadTooLarge",
    "PermanentError",
    "RetryPolicy",
    "Saga",
    "SagaConflict",
    "SagaError",
    "SagaInputError",
    "SagaKind",
    "SagaNotFound",
    "SagaState",
    "Settings",
    "StepContext",
    "StepState",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "TransientError",
    "UnknownSaga",
    "configure",
    "get_runtime",
    "get_saga",
    "registered_sagas",
    "start_saga",
]
