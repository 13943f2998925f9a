"""No SQL is built from strings in the library or the example services.

Every statement is SQLAlchemy Core. Raw SQL is allowed only as a string literal on this short,
justified list; any ``text(...)``/``exec_driver_sql(...)``/``execute(...)`` whose SQL is built
(f-string, ``%``, ``+``, ``.format``, a variable) fails, as does a literal not on the list. The
scan reads the syntax tree, so comments and docstrings cannot hide or fake a hit.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("sagas", "workers")
RAW_SQL_CALLS = {"text", "exec_driver_sql", "execute", "executemany", "executescript"}

# (file, literal): why it must be raw SQL.
ALLOWED = {
    ("sagas/store/engine.py", "PRAGMA journal_mode=WAL"): "SQLite connection setup (DBAPI cursor)",
    ("sagas/store/engine.py", "PRAGMA foreign_keys=ON"): "SQLite connection setup (DBAPI cursor)",
    (
        "sagas/store/engine.py",
        "PRAGMA busy_timeout=30000",
    ): "SQLite connection setup (DBAPI cursor)",
    (
        "sagas/store/engine.py",
        "BEGIN IMMEDIATE",
    ): "SQLite's write lock up front; Core has no spelling",
    ("sagas/store/engine.py", "BEGIN"): "SQLite read transactions (pysqlite's own BEGIN is off)",
    ("sagas/store/store.py", "SELECT 1"): "Store.ping: a connectivity probe",
    ("sagas/store/schema.py", "false"): "server_default of a Boolean column",
    ("sagas/store/schema.py", "0"): "server_default of an Integer column",
    ("sagas/store/schema.py", "'orchestrated'"): "server_default of the saga kind column",
    ("sagas/store/migrations/versions/0001_saga_tables.py", "false"): "server_default (migration)",
    ("sagas/store/migrations/versions/0001_saga_tables.py", "0"): "server_default (migration)",
    ("sagas/store/migrations/versions/0002_choreography.py", "'orchestrated'"): "server_default",
}


def _name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _is_raw_sql(call: ast.Call) -> bool:
    """``text(x)``/``exec_driver_sql(x)`` always; ``execute(x)`` only when x is not a statement
    object, i.e. a string literal or an expression building a string."""
    name = _name(call)
    if name not in RAW_SQL_CALLS or not call.args:
        return False
    if name in ("text", "exec_driver_sql"):
        return True
    first = call.args[0]
    return isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp) or (
        isinstance(first, ast.Call) and _name(first) == "format"
    )


def scan() -> tuple[set[tuple[str, str]], list[str]]:
    literals: set[tuple[str, str]] = set()
    built: list[str] = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if not (isinstance(node, ast.Call) and _is_raw_sql(node)):
                    continue
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    literals.add((rel, arg.value))
                else:
                    built.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}")
    return literals, built


def test_no_sql_is_built_from_strings() -> None:
    literals, built = scan()
    assert built == [], "SQL built from strings:\n" + "\n".join(built)
    unexpected = sorted(literals - ALLOWED.keys())
    assert unexpected == [], f"raw SQL literals not on the allowed list: {unexpected}"


def test_the_allowed_list_has_no_stale_entries() -> None:
    literals, _ = scan()
    assert sorted(ALLOWED.keys() - literals) == []


def test_the_scan_catches_built_sql() -> None:
    sample = ast.parse(
        'conn.execute(text(f"SELECT * FROM saga WHERE id = {x}"))\n'
        "conn.execute(\"DELETE FROM saga WHERE id = '%s'\" % x)\n"
        'conn.exec_driver_sql("SELECT " + column)\n'
        'cur.execute("UPDATE saga SET state = {}".format(s))\n'
        "conn.execute(select(saga_table))\n"
    )
    calls = [n for n in ast.walk(sample) if isinstance(n, ast.Call)]
    flagged = {n.lineno for n in calls if _is_raw_sql(n)}
    assert flagged == {1, 2, 3, 4}
