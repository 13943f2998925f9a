"""Saga names -> definitions, like Celery's task registry, and the engine's start hook.

Orchestrated sagas and choreographies share one namespace. The registry holds them as plain
objects; ``definition.get_orchestrated`` and ``choreography.get_choreography`` narrow to the
kind they need, ``sagas.catalog`` gives the union of both.

Definitions sit at the bottom of the import graph, so they cannot import the engine that starts
them. The engine registers itself here instead: ``sagas.starter`` binds the starter and
``sagas.query`` the reader when the package loads; ``Saga.start``/``Choreography.start`` call
through them and return a ``SagaHandle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import DefinitionError, SagaError, UnknownSaga

T = TypeVar("T")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_REGISTRY: dict[str, object] = {}


def register(definition: _Named) -> None:
    existing = _REGISTRY.get(definition.name)
    if existing is not None and existing is not definition:
        raise DefinitionError(f"saga {definition.name!r} is defined twice")
    _REGISTRY[definition.name] = definition


def lookup(name: object) -> object:
    """The definition registered as ``name``, of either kind (``UnknownSaga`` if none)."""
    found = _REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        known = ", ".join(sorted(_REGISTRY)) or "none registered in this process"
        raise UnknownSaga(f"unknown saga {name!r} (known: {known})", field="name")
    return found


def lookup_as(name: object, kind: type[T], what: str) -> T:
    """``lookup`` narrowed to one kind of definition; ``UnknownSaga`` names what was wanted."""
    found = lookup(name)
    if not isinstance(found, kind):
        raise UnknownSaga(f"{name!r} is not {what}", field="name")
    return found


def registered() -> dict[str, object]:
    return dict(_REGISTRY)


@dataclass(frozen=True, slots=True)
class StartOptions:
    saga_id: str | None = None
    correlation_id: str | None = None


class SagaHandle(str):
    """A started saga's id (it is the id string) that can read the saga back.

    ``status()`` reads it now; ``wait(timeout)`` polls until it finished or is parked for an
    operator (``sagas.query``)."""

    __slots__ = ()

    def status(self) -> Any:
        return _reader[0](self)

    def wait(self, timeout: float = 30.0) -> Any:
        return _reader[1](self, timeout)


Starter = Callable[[Any, Any, StartOptions], str]  # (definition, payload, options) -> saga id
_starter: list[Starter] = []
_reader: list[Any] = []


def bind_reader(
    status: Callable[[SagaHandle], Any], wait: Callable[[SagaHandle, float], Any]
) -> None:
    _reader[:] = [status, wait]


def bind_starter(starter: Starter) -> None:
    _starter[:] = [starter]


def start_through_hook(definition: object, payload: Any, options: StartOptions) -> SagaHandle:
    if not _starter:  # pragma: no cover - importing any part of sagas loads the starter
        raise SagaError("the sagas engine is not loaded (import sagas)")
    return SagaHandle(_starter[0](definition, payload, options))
