"""The public surface is curated: ``sagas.__all__`` is pinned, and every name imports."""

from __future__ import annotations

import importlib

import sagas

EXPECTED = {
    "Action",
    "ConfigurationError",
    "DefinitionError",
    "InvalidSagaId",
    "PayloadInvalid",
    "PayloadNotJSON",
    "PayloadTooLarge",
    "PermanentError",
    "RetryPolicy",
    "SignalSent",
    "AwaitOperator",
    "Continue",
    "SignalUnknown",
    "signal",
    "RetryAfter",
    "Compensate",
    "Park",
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
    "start_saga",
    "wait",
    # operator recovery (sagas.operations; retry and cancel are sagas.operations.retry/cancel,
    # since sagas.retry is the retry-policy module)
    "ActionPlan",
    "ActionRefused",
    "BulkResult",
    "OperatorAction",
    "SagaChanged",
    "StepUnknown",
    "bulk",
    "carry_out",
    "fork",
    "operations",
    "pause",
    "preview",
    "rerun",
    "resume",
}


def test_all_is_pinned() -> None:
    assert set(sagas.__all__) == EXPECTED, (
        "sagas.__all__ changed: update EXPECTED deliberately (it is the public API)"
    )
    assert len(sagas.__all__) == len(EXPECTED), "duplicate names in __all__"
    assert list(sagas.__all__) == sorted(sagas.__all__)


def test_every_public_name_is_importable() -> None:
    module = importlib.import_module("sagas")
    for name in sagas.__all__:
        assert getattr(module, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from sagas import *", namespace)  # noqa: S102 - the star import itself is the test
    assert EXPECTED <= set(namespace)


def test_errors_share_one_root() -> None:
    errors = [n for n in sagas.__all__ if n.endswith(("Error", "Invalid", "JSON", "Large"))]
    errors += ["ActionRefused", "SagaChanged", "StepUnknown"]
    errors += ["SagaConflict", "SagaNotFound", "StoreUnavailable", "UnknownSaga", "InvalidSagaId"]
    for name in errors:
        assert issubclass(getattr(sagas, name), sagas.SagaError), name
