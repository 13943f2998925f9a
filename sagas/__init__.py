"""sagas: orchestrated and choreographed distributed transactions on Celery."""

from __future__ import annotations

from .definition import Saga, StepContext, get_saga, registered_sagas
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
    StoreUnavailable,
    TransientError,
    UnknownSaga,
)
from .retry import RetryPolicy
from .runtime import configure, get_runtime
from .settings import Settings
from .state import Action, SagaState, StepState
from .tasks import start_saga

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
    "SagaNotFound",
    "SagaState",
    "Settings",
    "StepContext",
    "StepState",
    "StoreUnavailable",
    "TransientError",
    "UnknownSaga",
    "configure",
    "get_runtime",
    "get_saga",
    "registered_sagas",
    "start_saga",
]
