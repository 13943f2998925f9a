"""One exception root, typed by what happens next.

- ``TransientError``: the step failed but may succeed later; retried per its policy.
- ``PermanentError``: the step failed for good; no retry, the saga compensates.
- ``DefinitionError``: a saga is declared wrongly; raised when its module loads.
- ``SagaInputError`` (and subclasses): a caller sent bad input; nothing was written.
- ``SagaNotFound``: an id that names no saga.
- ``ActionRefused`` (``SagaChanged``): an operator action the saga's state (or a change since the
  operator looked) does not allow; nothing was changed.
- ``ConfigurationError``: a setting or a configured saga module is wrong; names which.
- ``StoreError`` (``StoreUnavailable``, ``StoreConflict``): the saga store failed or refused.
"""

from __future__ import annotations


class SagaError(Exception):
    """Root of every error sagas raises on purpose."""


# -- raised by step code ---------------------------------------------------------------------


class StepError(SagaError):
    """Base for errors a step raises to say how the engine should react."""


class TransientError(StepError):
    """Retry this step per its retry policy (network blip, lock timeout, 503...)."""


class PermanentError(StepError):
    """Do not retry: the step cannot succeed (card declined, out of stock). Compensate."""


# -- declared wrongly --------------------------------------------------------------------------


class DefinitionError(SagaError):
    """A saga or step definition is invalid; the message names the saga and step."""


# -- bad input -------------------------------------------------------------------------------------


class SagaInputError(SagaError, ValueError):
    """Input rejected before anything was written. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str | None = None, saga: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.saga = saga


class UnknownSaga(SagaInputError):
    """No saga of that name is registered in this process."""


class VersionUnavailable(UnknownSaga):
    """The saga is registered, but not in the version asked for (or a saga in flight was
    started on: this process lacks it, or defines it with other steps). Work for it is left for
    a process that has it (``field`` is ``"version"``)."""


class SignalUnknown(SagaInputError):
    """The saga does not wait for a signal of that name (``field`` is ``"name"``)."""


class PayloadInvalid(SagaInputError):
    """The payload failed validation against the saga's payload model."""


class PayloadNotJSON(SagaInputError):
    """The payload (or a step result) holds a value JSON cannot represent faithfully."""


class PayloadTooLarge(SagaInputError):
    """The payload's JSON encoding exceeds the configured size limit."""


class InvalidSagaId(SagaInputError):
    """A saga id that is empty, too long or has characters outside [A-Za-z0-9._:-]."""


class SagaConflict(SagaInputError):
    """A saga with this id already exists with a different name or payload."""


class StepUnknown(SagaInputError):
    """The saga has no step of that name (``field`` names the option that gave it)."""


class ConfigurationError(SagaError, ValueError):
    """A setting has a wrong value, or a saga module named in the configuration fails to
    import; ``setting`` names it."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class SagaNotFound(SagaError, LookupError):
    """No saga with this id exists in the store."""


class ActionRefused(SagaError):
    """An operator action that cannot happen in the saga's state (the message says why);
    nothing was changed."""


class SagaChanged(ActionRefused):
    """The saga changed since the revision the operator acted on (``expected``; ``actual`` is
    its revision now): nothing was changed, look at it again."""

    def __init__(self, message: str, *, expected: int, actual: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class StoreError(SagaError):
    """The saga store refused an operation (the message says why; no SQL driver error leaks)."""


class StoreUnavailable(StoreError):
    """The saga store cannot be reached (wrong URL, server down): try again later."""


class StoreConflict(StoreError):
    """A concurrent writer took the same unique key first (two starts of one new saga id)."""
