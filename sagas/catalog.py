"""Every registered saga definition, of either kind, as one typed union.

``Saga`` (orchestrated) and ``Choreography`` share one namespace of names; code that must handle
both (starting by name, the CLI, the embedded runner) matches on the union instead of asking a
definition what it is.
"""

from __future__ import annotations

from typing import Any

from .choreography.definition import Choreography
from .definition import Saga
from .registry import lookup, registered

SagaDefinition = Saga[Any] | Choreography[Any]


def get_saga(name: object, version: int | None = None) -> SagaDefinition:
    """The saga or choreography registered as ``name``: its newest version, or ``version``
    (``UnknownSaga`` if none, ``VersionUnavailable`` without that version)."""
    found = lookup(name, version)
    assert isinstance(found, Saga | Choreography), f"registry holds {found!r}"
    return found


def registered_sagas() -> dict[str, SagaDefinition]:
    """Every registered definition, by name."""
    return {n: d for n, d in registered().items() if isinstance(d, Saga | Choreography)}


def choreographies() -> list[Choreography[Any]]:
    return [d for d in registered().values() if isinstance(d, Choreography)]
