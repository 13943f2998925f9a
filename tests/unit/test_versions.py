"""Versions side by side: the registry, the definition fingerprint and what differs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from sagas import Saga
from sagas.catalog import get_saga
from sagas.choreography import Choreography
from sagas.definition import get_orchestrated, orchestrated_sagas, orchestrated_versions
from sagas.errors import DefinitionError, UnknownSaga, VersionUnavailable
from sagas.registry import registered_versions
from tests.unit.test_choreography_definition import chain


class P(BaseModel):
    ref: str = "r"


def _noop(ctx: Any) -> None:
    return None


def saga(
    name: str,
    version: int,
    steps: list[str],
    *,
    register: bool = True,
    compensated: set[str] | None = None,
    timeout: float = 30.0,
) -> Saga[P]:
    s = Saga(name, payload=P, version=version, register=register)
    for step in steps:
        comp = _noop if step in (compensated or set()) else None
        s.step(queue=f"q{version}", timeout=timeout, compensation=comp, name=step)(_noop)
    return s


def unique() -> str:
    return f"v_{uuid.uuid4().hex[:8]}"


def test_versions_side_by_side_newest_for_new_starts() -> None:
    name = unique()
    v1 = saga(name, 1, ["a", "b"])
    v2 = saga(name, 2, ["a", "c", "d"])
    assert get_orchestrated(name) is v2 and get_saga(name) is v2
    assert get_orchestrated(name, 1) is v1 and get_orchestrated(name, 2) is v2
    assert orchestrated_sagas()[name] is v2
    assert {(s.name, s.version) for s in orchestrated_versions() if s.name == name} == {
        (name, 1),
        (name, 2),
    }
    assert list(registered_versions()[name]) == [1, 2]
    with pytest.raises(VersionUnavailable) as missing:
        get_orchestrated(name, 3)
    assert missing.value.field == "version"
    assert (
        str(missing.value)
        == f"saga {name!r} version 3 is not defined in this process (defined: v1, v2)"
    )
    assert isinstance(missing.value, UnknownSaga)  # a start asking for it is bad input


def test_a_version_defined_twice_and_choreography_versions_are_refused() -> None:
    name = unique()
    saga(name, 1, ["a"])
    with pytest.raises(DefinitionError, match="version 1 is defined twice"):
        saga(name, 1, ["a"])
    choreo = unique()
    args: dict[str, Any] = {"payload": P, "starts_on": "x.started", "completes_on": "x.done"}
    Choreography(choreo, handlers=chain(), version=1, **args)
    with pytest.raises(DefinitionError, match="only orchestrated sagas have versions"):
        Choreography(choreo, handlers=chain(), version=2, **args)
    with pytest.raises(DefinitionError, match="must be of one kind"):
        saga(choreo, 3, ["a"])


def test_the_fingerprint_follows_the_shape_not_the_tuning() -> None:
    base = saga("shape", 1, ["a", "b"], register=False, compensated={"a"})
    same = saga("shape", 1, ["a", "b"], register=False, compensated={"a"}, timeout=90.0)
    assert base.fingerprint == same.fingerprint  # timeouts and queues may change freely
    assert len(base.fingerprint) == 16
    changed = [
        saga("shape", 1, ["a", "c"], register=False, compensated={"a"}),  # renamed
        saga("shape", 1, ["b", "a"], register=False, compensated={"a"}),  # reordered
        saga("shape", 1, ["a", "b", "c"], register=False, compensated={"a"}),  # added
        saga("shape", 1, ["a"], register=False, compensated={"a"}),  # removed
        saga("shape", 1, ["a", "b"], register=False),  # a compensation dropped
    ]
    assert len({base.fingerprint, *(c.fingerprint for c in changed)}) == 6


def test_differs_from_names_what_changed() -> None:
    v1 = saga("shape", 1, ["a", "b"], register=False)
    assert v1.differs_from(v1.fingerprint, ["a", "b"]) is None
    assert v1.differs_from(None, ["a", "b"]) is None  # started before fingerprints: names agree
    assert v1.differs_from(None, ["a", "x"]) == (
        f"started on steps ['a', 'x'], defined here with steps ['a', 'b'] "
        f"(fingerprint {v1.fingerprint})"
    )
    reordered = saga("shape", 1, ["b", "a"], register=False)
    # Same names in another order: only the stored fingerprint can tell.
    assert v1.differs_from(reordered.fingerprint, ["b", "a"]) == (
        f"started on steps ['b', 'a'] (fingerprint {reordered.fingerprint}), defined here with "
        f"steps ['a', 'b'] (fingerprint {v1.fingerprint})"
    )
