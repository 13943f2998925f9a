"""Plain-text views of sagas for the CLI and the demo: a list table and a step timeline."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from .definition import get_orchestrated
from .errors import SagaError
from .machine import Plan, SagaStatus
from .observability import escape
from .operations import BulkResult
from .payload import encode
from .state import HistoryKind, SagaState, StepState
from .store import HistoryEntry, SagaRecord


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    shrink: Sequence[int] = (),
    optional: Sequence[int] = (),
    width: int | None = None,
) -> str:
    """Columns padded to their widest cell. Wider than the terminal (``width``; 80 when not a
    terminal, so piped output is stable), the ``optional`` columns are dropped in order, then
    the ``shrink`` columns are cut (with ``~``) down to 8 characters; ids are never cut. Scripts
    read ``--json`` instead."""
    limit = width or shutil.get_terminal_size((80, 24)).columns
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    keep = list(range(len(headers)))

    def over() -> int:
        return sum(widths[i] for i in keep) + 2 * (len(keep) - 1) - limit

    for i in optional:
        if over() > 0:
            keep.remove(i)
    for i in shrink:
        cut = min(over(), widths[i] - max(8, len(headers[i])))
        if cut > 0:
            widths[i] -= cut

    def cell(text: str, i: int) -> str:
        w = widths[i]
        return (text if len(text) <= w else text[: w - 1] + "~").ljust(w)

    out = ["  ".join(cell(headers[i], i) for i in keep).rstrip()]
    out.append("  ".join("-" * widths[i] for i in keep))
    out += ["  ".join(cell(r[i], i) for i in keep).rstrip() for r in rows]
    return "\n".join(out)


class Listed(Protocol):
    """What a list row shows: a ``SagaRecord`` or the API's ``SagaSummary``."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> SagaState: ...
    @property
    def parked(self) -> bool: ...
    @property
    def correlation_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def finished_at(self) -> datetime | None: ...


def saga_list(records: Sequence[Listed]) -> str:
    if not records:
        return "no sagas"
    rows = [
        [
            r.id,
            r.name,
            r.state.value + (" (parked)" if r.parked else ""),
            ts(r.created_at),
            _duration(r.created_at, r.finished_at or r.updated_at),
            r.correlation_id,
        ]
        for r in records
    ]
    headers = ["ID", "NAME", "STATE", "CREATED", "DURATION", "CORRELATION"]
    # Narrow terminals lose the correlation id, then the duration, then the creation time;
    # id, name (cut with ~ if need be) and state always stay.
    return table(headers, rows, optional=(5, 4, 3), shrink=(1,))


def timeline(
    record: SagaRecord,
    status: SagaStatus,
    history: Sequence[HistoryEntry],
    forks: Sequence[str] = (),
) -> str:
    head = [
        f"saga {record.id}  {record.name} v{record.version}  state={record.state.value}"
        + ("  PARKED (needs an operator)" if record.parked else "")
        + (f"  PAUSED since {ts(record.paused_at)}" if record.paused_at else ""),
        f"correlation={record.correlation_id}  started={ts(record.created_at)}"
        + (f"  finished={ts(record.finished_at)}" if record.finished_at else "")
        + f"  took={_duration(record.created_at, record.finished_at or record.updated_at)}"
        # The stamp an operator action can pin (--revision): a saga that moved is refused.
        + f"  revision={record.lock_version}",
    ]
    if record.failure:
        head.append(f"failure: {record.failure.type}: {escape(record.failure.message)}")
    if record.forked_from:
        head.append(f"forked from {record.forked_from}")
    if forks:
        head.append("forks: " + ", ".join(forks))
    head += _waits_and_pivot(status, history)
    head += _heartbeats(status)
    plan = _plan_of(record)
    steps = [
        [
            str(i + 1),
            s.name,
            s.state.value,
            str(s.attempt),
            str(s.compensation_attempt) if s.compensation_attempt else "-",
            _duration(s.started_at, s.finished_at) if s.started_at and s.finished_at else "-",
            escape(f"{s.error.type}: {s.error.message}")[:60] if s.error else "",
        ]
        for i, s in enumerate(status.steps)
    ]
    headers = ["#", "STEP", "STATE", "ATTEMPTS", "UNDO", "TOOK", "LAST ERROR"]
    if plan is not None and any(p.group for p in plan.steps):
        headers.insert(2, "PARALLEL")  # which group each branch is in (when known here)
        for i, row in enumerate(steps):
            row.insert(2, _group_of(plan, i))
    body = table(headers, steps)
    start = history[0].at if history else record.created_at
    events = [
        [
            f"+{(h.at - start).total_seconds():.3f}s",
            h.kind,
            h.step or "",
            str(h.attempt) if h.attempt is not None else "",
            _detail(h),
        ]
        for h in history
    ]
    return "\n".join(
        [*head, "", body, "", table(["T", "EVENT", "STEP", "ATTEMPT", "DETAIL"], events)]
    )


def _waits_and_pivot(status: SagaStatus, history: Sequence[HistoryEntry]) -> list[str]:
    """What the history says of waits and the pivot: the wait in progress (for what, since
    when, until when), signals kept for a wait not reached yet, and the pivot passed."""
    lines = []
    running = {s.name for s in status.steps if s.state is StepState.RUNNING}
    for h in history:
        if h.kind == HistoryKind.WAITING_FOR_SIGNAL and h.step in running:
            until = (h.detail or {}).get("until", "?")
            lines.append(f"waiting for signal {h.step!r} since {ts(h.at)}, until {until}")
        if h.kind == HistoryKind.PIVOT_PASSED:
            lines.append(f"past the pivot {h.step!r} at {ts(h.at)}: forward only")
    return lines


def _plan_of(record: SagaRecord) -> Plan | None:
    """The saga's plan when this process has its definition (groups are drawn from it)."""
    try:
        return get_orchestrated(record.name, record.version).plan
    except SagaError:
        return None


def _group_of(plan: Plan, index: int) -> str:
    """The parallel group a step is a branch of ("" outside one)."""
    if not 0 <= index < len(plan.steps) or plan.steps[index].group is None:
        return ""
    return plan.steps[index].group or ""


def _heartbeats(status: SagaStatus) -> list[str]:
    """The open attempts that heartbeat: when they last did, how far they got, until when."""
    lines = []
    for s in status.steps:
        if s.state is StepState.RUNNING and (s.heartbeat_at or s.timeout_at):
            last = ts(s.heartbeat_at) if s.heartbeat_at else "none yet"
            progress = escape(encode(s.progress))[:60] if s.progress is not None else "-"
            lines.append(
                f"step {s.name!r} attempt {s.attempt}: last heartbeat {last}, progress "
                f"{progress}, heartbeat due by {ts(s.deadline_at)}, timeout {ts(s.timeout_at)}"
            )
    return lines


def _detail(h: HistoryEntry) -> str:
    d = h.detail or {}
    if h.kind in (HistoryKind.STEP_FAILED, HistoryKind.COMPENSATION_FAILED):
        kind = "retryable" if d.get("retryable") else "permanent"
        return escape(f"{d.get('type')}: {d.get('message')} ({kind})")[:80]
    if h.kind == HistoryKind.RETRY_SCHEDULED:
        return f"wait {d.get('interval', 0):.3f}s"
    if h.kind == HistoryKind.REPLY_IGNORED:
        return escape(f"{d.get('action')} {d.get('outcome')}: {d.get('why')}")[:80]
    if h.kind in (HistoryKind.COMPENSATION_STARTED, HistoryKind.SAGA_FAILED) and "type" in d:
        return escape(f"{d.get('type')}: {d.get('message')}")[:80]
    return escape(", ".join(f"{k}={v}" for k, v in d.items()))[:80]


def age(seconds: float) -> str:
    """A duration for a narrow column: 42s, 17m, 5h12m, 3d4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def prometheus(stats: dict[str, Any]) -> str:
    """``Store.stats`` in the Prometheus text exposition format (labels escaped)."""

    def label(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = [
        "# HELP sagas_in_store Sagas in the store by saga name and state.",
        "# TYPE sagas_in_store gauge",
    ]
    for (name, state), n in sorted(stats["by_state"].items()):
        lines.append(f'sagas_in_store{{saga="{label(name)}",state="{label(state)}"}} {n}')
    for metric, key, text in (
        ("sagas_parked", "parked", "Sagas parked for an operator (dead-lettered compensations, "
         "choreographies flagged stuck)."),
        ("sagas_timers_due", "timers_due", "Sagas with a timer due now (the sweeper's backlog)."),
        ("sagas_outbox_unsent", "outbox_unsent", "Sagas whose committed commands were not "
         "published within the outbox grace."),
        ("sagas_oldest_active_seconds", "oldest_active_seconds", "Age of the oldest saga not "
         "yet completed or failed."),
    ):  # fmt: skip
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge", f"{metric} {stats[key]}"]
    return "\n".join(lines)


def bulk_plan(result: BulkResult) -> str:
    """A bulk action's dry run: the count, then one line per saga (its plan, or why not)."""
    total = len(result.items)
    head = (
        f"{result.action.value}: {result.planned} of {total} selected saga(s) would be acted on"
        + (f", {result.refused} refused" if result.refused else "")
    )
    rows = []
    for item in result.items:
        if item.error is not None:
            rows.append([item.saga_id, "refused: " + escape(item.error)[:100]])
        elif item.plan is not None:
            rows.append([item.saga_id, "; ".join(item.plan.lines[1:]) or item.plan.lines[0]])
    return "\n".join([head, table(["ID", "PLAN"], rows)] if rows else [head])
