"""Saga names and versions -> definitions, like Celery's task registry, and the engine's
start hook.

Orchestrated sagas and choreographies share one namespace. The registry holds them as plain
objects; ``definition.get_orchestrated`` and ``choreography.get_choreography`` narrow to the
kind they need, ``sagas.catalog`` gives the union of both.

Several versions of one orchestrated saga may be registered side by side
(``Saga("order", version=2)`` beside version 1): a saga runs to its end on the version it
started with, new starts take the newest. A choreography has one version per process.

Definitions sit at the bottom of the import graph, so they cannot import the engine that starts
them. The engine registers itself here instead: ``sagas.starter`` binds the starter and
``sagas.query`` the reader when the package loads; ``Saga.start``/``Choreography.start`` call
through them and return a ``SagaHandle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import DefinitionError, SagaError, UnknownSaga, VersionUnavailable

T = TypeVar("T")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_REGISTRY: dict[str, dict[int, object]] = {}


def register(definition: _Named) -> None:
    version = getattr(definition, "version", 1)
    versions = _REGISTRY.setdefault(definition.name, {})
    existing = versions.get(version)
    if existing is not None and existing is not definition:
        raise DefinitionError(f"saga {definition.name!r} version {version} is defined twice")
    others = [d for v, d in versions.items() if v != version]
    if any(type(d) is not type(definition) for d in others):
        raise DefinitionError(f"saga {definition.name!r}: its versions must be of one kind")
    if others and getattr(definition, "side_by_side", True) is False:
        raise DefinitionError(
            f"saga {definition.name!r}: only orchestrated sagas have versions side by side "
            f"(already defined: version {sorted(versions)})"
        )
    versions[version] = definition


def lookup(name: object, version: int | None = None) -> object:
    """The definition registered as ``name``, of either kind: its newest version, or
    ``version`` (``UnknownSaga`` if there is no such saga, ``VersionUnavailable`` if this
    process does not define that version)."""
    versions = _REGISTRY.get(name) if isinstance(name, str) else None
    if not versions:
        known = ", ".join(sorted(_REGISTRY)) or "none registered in this process"
        raise UnknownSaga(f"unknown saga {name!r} (known: {known})", field="name")
    if version is None:
        return versions[max(versions)]
    found = versions.get(version)
    if found is None:
        raise VersionUnavailable(
            f"saga {name!r} version {version} is not defined in this process "
            f"(defined: {', '.join(f'v{v}' for v in sorted(versions))})",
            field="version",
            saga=str(name),
        )
    return found


def lookup_as(name: object, kind: type[T], what: str, version: int | None = None) -> T:
    """``lookup`` narrowed to one kind of definition; ``UnknownSaga`` names what was wanted."""
    found = lookup(name, version)
    if not isinstance(found, kind):
        raise UnknownSaga(f"{name!r} is not {what}", field="name")
    return found


def registered() -> dict[str, object]:
    """The newest version of every registered saga, by name."""
    return {name: versions[max(versions)] for name, versions in _REGISTRY.items() if versions}


def registered_versions() -> dict[str, dict[int, object]]:
    """Every registered version of every saga: name -> version -> definition."""
    return {name: dict(sorted(versions.items())) for name, versions in _REGISTRY.items()}


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
