"""A saga definition as a Mermaid flowchart (``saga graph NAME``): steps in order, waits, the
pivot, failure routes and the compensations a failure runs, newest first."""

from __future__ import annotations

from typing import Any

from .definition import Saga, StepDef
from .routes import Park, RetryAfter


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _label(step: StepDef) -> str:
    if step.is_wait:
        return f"wait for signal {step.name}<br/>up to {_duration(step.timeout)}"
    where = f"task {step.task}" if step.task else f"queue {step.queue}"
    lines = [step.name + (" (pivot)" if step.pivot else ""), where]
    route = step.on_exhausted
    if isinstance(route, RetryAfter):
        lines.append(f"exhausted: retry after {_duration(route.seconds)}, {route.times}x")
    elif isinstance(route, Park):
        lines.append("exhausted: park for an operator")
    return "<br/>".join(lines)


def mermaid(saga: Saga[Any]) -> str:
    """The flowchart, one Mermaid statement per line."""
    out = ["flowchart TD", f'    start(["{saga.name} v{saga.version}"])']
    previous = "start"
    for step in saga.steps:
        node = f"s{step.index}"
        label = _label(step).replace('"', "'")
        if step.is_wait:
            out.append(f'    {node}[/"{label}"/]')
        elif step.pivot:
            out.append(f'    {node}{{{{"{label}"}}}}')
        else:
            out.append(f'    {node}["{label}"]')
        out.append(f"    {previous} --> {node}")
        previous = node
    out.append('    done(["completed"])')
    out.append(f"    {previous} --> done")
    compensated = [s for s in saga.steps if s.compensable]
    if compensated:
        out.append('    failed(["failed: compensated"])')
        undo_previous = None
        for step in reversed(compensated):
            node = f"u{step.index}"
            out.append(f'    {node}["undo {step.name}"]')
            out.append(f"    s{step.index} -. on failure .-> {node}")
            if undo_previous is not None:
                out.append(f"    {undo_previous} -.-> {node}")
            undo_previous = node
        out.append(f"    {undo_previous} -.-> failed")
    return "\n".join(out)
