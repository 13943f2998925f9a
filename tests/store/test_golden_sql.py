"""The store's PostgreSQL hot-path statements, compiled, are exactly the SQL pinned in
``golden/``: a reviewer reads every write as SQL, and any change to one shows up as a diff.

Compilation only (the psycopg dialect production uses, no database): milliseconds. After an
intended change, rewrite the files with
``SAGAS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/store/test_golden_sql.py``
and review their diff. The formatter below only changes whitespace between tokens (checked).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.sql import Executable

from sagas.machine import SagaStatus
from sagas.state import SagaState
from sagas.store import statements
from sagas.store.records import SagaRecord, Transition, changed_columns

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SAGAS_UPDATE_GOLDEN") == "1"
REGENERATE = "SAGAS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/store/test_golden_sql.py"
SOURCE = "sagas/store/statements.py"

# The prebuilt statements (each pinned in ``golden/<name, lower case>.sql``) and what they do.
CONSTANTS = {
    "LOAD": "the saga row, now() and its steps as JSON, without a lock (Store.load, optimistic)",
    "PEEK": "now() and the saga row if it exists, always one row (Store.peek, Tx.peek)",
    "LOCK": "the saga row locked FOR UPDATE, now() and its steps as JSON (Tx.lock)",
    "LOCK_SKIP_LOCKED": "LOCK, skipping a row another transaction holds (Tx.lock(skip_locked))",
    "SELECT_SAGA": "the saga row by id (run on SQLite only, by Tx.peek and Tx.lock)",
    "OPEN_ATTEMPT": "one step's state, attempts and deadline (Store.open_attempt)",
    "CLEAR_OUTBOX": "mark the outbox written at written_at published (Store.clear_outbox)",
    "CLEAR_OUTBOXES": "the same for many sagas at once (DeferredClears, Store.clear_outbox_soon)",
    "INSERT_SAGA": "a new saga in one statement: its row (s), steps (t) and first history rows",
}

_AT = datetime(2024, 1, 1, tzinfo=UTC)
_RECORD = SagaRecord(
    id="golden",
    name="golden",
    version=1,
    state=SagaState.PENDING,
    payload={},
    payload_hash="",
    correlation_id="golden",
    created_at=_AT,
    updated_at=_AT,
    finished_at=None,
    deadline_at=None,
    wake_at=None,
    outbox=None,
    outbox_at=None,
    parked=False,
    lock_version=1,
    failure=None,
)
_RUNNING = SagaStatus(id="golden", state=SagaState.PENDING, steps=())


def _transition(
    *, outbox: bool = False, finish: bool = False, parked: bool | None = None
) -> Transition:
    """A transition of that shape: its ``changed_columns`` are the columns ``save`` gets."""
    new = replace(_RUNNING, state=SagaState.COMPLETED) if finish else _RUNNING
    commands = [{"task": "golden"}] if outbox else []
    return Transition(_RECORD, _RUNNING, new, (), outbox=commands, parked=parked)


# ``save`` is built per column tuple: pin the tuples ``changed_columns`` gives in practice.
SAVES = {
    "save_step": ("a step transition (base columns)", _transition()),
    "save_outbox": ("a transition with an outbox (+ outbox, outbox_at)", _transition(outbox=True)),
    "save_finished": ("a transition that ends the saga (+ finished_at)", _transition(finish=True)),
    "save_parked": ("a transition that parks the saga (+ parked)", _transition(parked=True)),
    "save_outbox_finished_parked": (
        "a transition that does all three (+ outbox, outbox_at, finished_at, parked)",
        _transition(outbox=True, finish=True, parked=True),
    ),
}
_SAVE = "the compare-and-set write on s_expected: saga row (s), changed steps (u), history rows (e)"


def header(name: str) -> str:
    if name in SAVES:
        what, _t = SAVES[name]
        return f"-- save for {what}: {_SAVE}. Built in {SOURCE}::save(changed_columns(t))."
    constant = name.upper()
    return f"-- {constant}: {CONSTANTS[constant]}. Built in {SOURCE}::{constant}."


def statement(name: str) -> Executable:
    if name in SAVES:
        _what, t = SAVES[name]
        return statements.save(changed_columns(t))
    value = getattr(statements, name.upper())
    assert isinstance(value, Executable)
    return value


def compiled(name: str) -> str:
    return str(statement(name).compile(dialect=psycopg.dialect()))


def golden_text(name: str) -> str:
    return f"{header(name)}\n{format_sql(compiled(name))}\n"


NAMES = [c.lower() for c in CONSTANTS] + list(SAVES)


# -- a tiny deterministic SQL formatter --------------------------------------------------------
# One clause per line; a list of more than one item (select list, SET, FROM, column lists,
# VALUES, WHERE ... AND ...) one item per line, so a changed column is a one-line diff.
# Subqueries and CTE bodies are indented blocks. Only whitespace between tokens changes.

_TOKEN = re.compile(r"""%\([^)]*\)s|"(?:[^"]|"")*"|'(?:[^']|'')*'|::|[(),]|[^\s(),'"%:]+|\S""")
_CLAUSES = [
    ("LEFT", "OUTER", "JOIN"),
    ("INSERT", "INTO"),
    ("FOR", "UPDATE"),
    ("ORDER", "BY"),
    ("GROUP", "BY"),
    ("WITH",),  # only where a statement begins (not in TIMESTAMP WITH TIME ZONE)
    ("SELECT",),
    ("UPDATE",),
    ("SET",),
    ("VALUES",),
    ("FROM",),
    ("JOIN",),
    ("WHERE",),
    ("HAVING",),
    ("RETURNING",),
    ("LIMIT",),
]
_QUERY = {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}
_PAD = "  "


@dataclass
class _Tok:
    text: str
    space: bool  # whitespace before it in the source


@dataclass
class _Group:
    items: list[_Tok | _Group]
    space: bool


def tokens(sql: str) -> list[str]:
    return _TOKEN.findall(sql)


def _parse(sql: str) -> list[_Tok | _Group]:
    stack: list[_Group] = [_Group([], False)]
    for match in _TOKEN.finditer(sql):
        text = match.group()
        space = match.start() > 0 and sql[match.start() - 1].isspace()
        if text == "(":
            stack.append(_Group([], space))
        elif text == ")":
            group = stack.pop()
            stack[-1].items.append(group)
        else:
            stack[-1].items.append(_Tok(text, space))
    assert len(stack) == 1, "unbalanced parentheses"
    return stack[0].items


def _split(items: list[_Tok | _Group], sep: str) -> list[list[_Tok | _Group]]:
    parts: list[list[_Tok | _Group]] = [[]]
    for item in items:
        if isinstance(item, _Tok) and item.text == sep:
            parts.append([])
        else:
            parts[-1].append(item)
    return parts


def _is_query(items: list[_Tok | _Group]) -> bool:
    return bool(items) and isinstance(items[0], _Tok) and items[0].text in _QUERY


def _add(lines: list[str], text: str, space: bool) -> None:
    if space and lines[-1].strip():
        lines[-1] += " "
    lines[-1] += text


def _render(items: list[_Tok | _Group], depth: int, lines: list[str]) -> None:
    """Append ``items`` to ``lines``, the last of which is the current line."""
    for item in items:
        if isinstance(item, _Tok):
            _add(lines, item.text, item.space)
            continue
        _add(lines, "(", item.space)
        parts = _split(item.items, ",")
        if _is_query(item.items):
            lines += _statement(item.items, depth + 1)
        elif len(parts) > 1:
            for i, part in enumerate(parts):
                lines.append(_PAD * (depth + 1))
                _render(part, depth + 1, lines)
                if i < len(parts) - 1:
                    lines[-1] += ","
        else:
            _render(item.items, depth, lines)
            lines[-1] += ")"
            continue
        lines.append(_PAD * depth + ")")


def _clauses(items: list[_Tok | _Group]) -> list[tuple[str, list[_Tok | _Group]]]:
    clauses: list[tuple[str, list[_Tok | _Group]]] = [("", [])]
    i = 0
    while i < len(items):
        for phrase in _CLAUSES:
            words = [it.text if isinstance(it, _Tok) else None for it in items[i : i + len(phrase)]]
            if tuple(words) == phrase and (phrase != ("WITH",) or i == 0):
                clauses.append((" ".join(phrase), []))
                i += len(phrase)
                break
        else:
            clauses[-1][1].append(items[i])
            i += 1
    return [c for c in clauses if c != ("", [])]


def _statement(items: list[_Tok | _Group], depth: int) -> list[str]:
    pad = _PAD * depth
    lines: list[str] = []
    for keyword, body in _clauses(items):
        sep = "AND" if keyword in ("WHERE", "HAVING") else ","
        parts = _split(body, sep)
        lines.append(pad + keyword)
        if len(parts) == 1:
            _render(body, depth, lines)
            continue
        for i, part in enumerate(parts):
            lead = _PAD * (depth + 1) + ("AND" if sep == "AND" and i else "")
            lines.append(lead)
            _render(part, depth + 1, lines)
            if sep == "," and i < len(parts) - 1:
                lines[-1] += ","
    return lines


def format_sql(sql: str) -> str:
    return "\n".join(line.rstrip() for line in _statement(_parse(sql), 0))


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_statement_matches_its_golden_file(name: str) -> None:
    path = GOLDEN / f"{name}.sql"
    actual = golden_text(name)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        if not path.exists() or path.read_text() != actual:
            path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"{path} is missing; write it with:\n  {REGENERATE}", pytrace=False)
    expected = path.read_text()
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"tests/store/golden/{name}.sql (pinned)",
            tofile=f"{name} as {SOURCE} compiles it now",
        )
        pytest.fail(
            f"{name}: the compiled SQL differs from its golden file:\n{''.join(diff)}\n"
            f"If the change is intended, rewrite the golden files and review their diff:\n"
            f"  {REGENERATE}",
            pytrace=False,
        )


@pytest.mark.parametrize("name", NAMES)
def test_formatting_changes_only_whitespace(name: str) -> None:
    sql = compiled(name)
    assert tokens(format_sql(sql)) == tokens(sql)


def test_every_statement_constant_is_pinned() -> None:
    """A new prebuilt statement cannot join the hot path without a golden file."""
    public = {
        name
        for name, value in vars(statements).items()
        if not name.startswith("_") and isinstance(value, Executable)
    }
    unpinned = sorted(public - set(CONSTANTS))
    assert not unpinned, f"no golden file for {unpinned}: add to CONSTANTS, run {REGENERATE}"
    gone = sorted(set(CONSTANTS) - public)
    assert not gone, f"CONSTANTS names statements that are gone: {gone}"


def test_no_stale_golden_files() -> None:
    stale = {p.stem for p in GOLDEN.glob("*.sql")} - set(NAMES)
    assert not stale, f"golden files no statement compiles to (delete them): {sorted(stale)}"


def test_save_column_sets_are_distinct() -> None:
    """Each pinned ``save`` shape is a different statement (the transitions really differ)."""
    columns = [changed_columns(t) for _what, t in SAVES.values()]
    assert len(set(columns)) == len(columns)
