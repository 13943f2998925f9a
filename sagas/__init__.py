"""sagas: orchestrated and choreographed distributed transactions on Celery."""

from __future__ import annotations

from . import operations
from . import query as _query  # binds SagaHandle.status/wait to the store
from . import starter as _starter  # binds Saga.start/Choreography.start to the engine
from .catalog import get_saga, registered_sagas
from .definition import Saga, StepContext
from .errors import (
    ActionRefused,
    ConfigurationError,
    DefinitionError,
    InvalidSagaId,
    PayloadInvalid,
    PayloadNotJSON,
    PayloadTooLarge,
    PermanentError,
    SagaChanged,
    SagaConflict,
    SagaError,
    SagaInputError,
    SagaNotFound,
    SignalUnknown,
    StepUnknown,
    StoreConflict,
    StoreError,
    StoreUnavailable,
    TransientError,
    UnknownSaga,
)
from .heartbeats import heartbeat
from .install import configure, install
from .operations import BulkResult, bulk, carry_out, fork, pause, preview, rerun, resume
from .query import SagaInfo, SagaWaitTimeout, StepInfo, get, wait
from .recovery import ActionPlan
from .registry import SagaHandle
from .retry import RetryPolicy
from .routes import AwaitOperator, Compensate, Continue, Park, RetryAfter
from .runtime import get_runtime
from .settings import Settings
from .signals import SignalSent, signal
from .state import Action, OperatorAction, SagaKind, SagaState, StepState
from .tasks import start_saga

del _query, _starter

__all__ = [
    "Action",
    "ActionPlan",
    "ActionRefused",
    "AwaitOperator",
    "BulkResult",
    "Compensate",
    "ConfigurationError",
    "Continue",
    "DefinitionError",
    "InvalidSagaId",
    "OperatorAction",
    "Park",
    "PayloadInvalid",
    "PayloadNotJSON",
    "PayloadTooLarge",
    "PermanentError",
    "RetryAfter",
    "RetryPolicy",
    "Saga",
    "SagaChanged",
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
    "StepUnknown",
    "StoreConflict",
    "StoreError",
    "StoreUnavailable",
    "TransientError",
    "UnknownSaga",
    "bulk",
    "carry_out",
    "configure",
    "fork",
    "get",
    "get_runtime",
    "get_saga",
    "heartbeat",
    "install",
    "operations",
    "pause",
    "preview",
    "registered_sagas",
    "rerun",
    "resume",
    "signal",
    "start_saga",
    "wait",
]
