"""The versions of sagas in the store against the definitions this process has.

``report`` is what ``saga versions`` prints. ``refuse_changed_definitions`` runs when a worker
starts: a definition changed under the same version number while sagas of that version are in
flight (a step added, removed, renamed or reordered, a compensation added or dropped) would run
those sagas on steps they were not started with, so the worker refuses to start and says which
saga, version and difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .definition import Saga, orchestrated_versions
from .errors import DefinitionError
from .runtime import Runtime


@dataclass(slots=True)
class VersionLine:
    """One saga version: its sagas in the store and whether this process defines it."""

    name: str
    version: int
    in_flight: int = 0
    finished: int = 0
    defined: bool = False
    newest: bool = False  # the version new starts take here
    problems: list[str] = field(default_factory=list)


def report(rt: Runtime) -> list[VersionLine]:
    defined: dict[tuple[str, int], Saga[Any]] = {
        (s.name, s.version): s for s in orchestrated_versions()
    }
    newest = {name: max(v for n, v in defined if n == name) for name, _ in defined}
    lines: dict[tuple[str, int], VersionLine] = {
        key: VersionLine(key[0], key[1], defined=True, newest=newest[key[0]] == key[1])
        for key in defined
    }
    for count in rt.store.versions():
        key = (count.name, count.version)
        line = lines.setdefault(key, VersionLine(count.name, count.version))
        line.in_flight += count.in_flight
        line.finished += count.finished
        saga = defined.get(key)
        if saga is None or count.in_flight == 0:
            continue
        difference = saga.differs_from(count.definition_hash, count.example_steps)
        if difference is not None:
            line.problems.append(
                f"saga {count.name!r} version {count.version}: {count.in_flight} in flight "
                f"(e.g. {count.example!r}) {difference}"
            )
    return sorted(lines.values(), key=lambda line: (line.name, line.version))


def refuse_changed_definitions(rt: Runtime) -> None:
    """``DefinitionError`` naming every saga version whose in-flight sagas were started on
    other steps than this process defines for that version."""
    problems = [p for line in report(rt) for p in line.problems]
    if problems:
        raise DefinitionError(
            "; ".join(problems)
            + ": give the changed definition a new version number (Saga(name, version=N+1)) "
            "and keep the old version defined until its sagas have finished"
        )
