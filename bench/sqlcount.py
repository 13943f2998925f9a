"""Counts, per worker process, the SQL statements, commits and task messages it sends.

Imported by bench.app only when BENCH_SQL_COUNT=<dir> (the profile run): each prefork child
writes <dir>/<pid>.json when it shuts down.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from typing import Any

from celery.signals import before_task_publish, worker_process_shutdown
from sqlalchemy import event
from sqlalchemy.engine import Engine

COUNTS: Counter[str] = Counter()
TRACE: list[str] = []  # the first statements and transaction edges of this process, in order
_WS = re.compile(r"\s+")
_enabled = True  # bench.micro counts only part of its run


def enable() -> None:
    global _enabled
    _enabled = True


def disable() -> None:
    global _enabled
    _enabled = False


def _label(statement: str) -> str:
    s = _WS.sub(" ", statement).strip()
    m = re.match(r"(SELECT|INSERT INTO|UPDATE|DELETE FROM)\s+(.*?)\s", s + " ")
    if not m:
        return s[:40]
    verb = m.group(1)
    if verb == "SELECT":
        table = re.search(r"\bFROM (\w+)", s)
        what = table.group(1) if table else s[7:30]
        if "FOR UPDATE" in s:
            what += " FOR UPDATE"
        return f"SELECT {what}"
    return f"{verb} {m.group(2)}"


@event.listens_for(Engine, "before_cursor_execute")
def _count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
    if not _enabled:
        return
    label = _label(statement)
    COUNTS["sql:" + label] += 1
    COUNTS["sql_total"] += 1
    if len(TRACE) < 300:
        TRACE.append(label)


@event.listens_for(Engine, "commit")
def _commit(conn: Any) -> None:
    if not _enabled:
        return
    COUNTS["commits"] += 1
    if len(TRACE) < 300:
        TRACE.append("COMMIT")


@event.listens_for(Engine, "begin")
def _begin(conn: Any) -> None:
    if not _enabled:
        return
    COUNTS["transactions"] += 1
    if len(TRACE) < 300:
        TRACE.append("BEGIN")


@event.listens_for(Engine, "rollback")
def _rollback(conn: Any) -> None:
    if not _enabled:
        return
    COUNTS["rollbacks"] += 1
    if len(TRACE) < 300:
        TRACE.append("ROLLBACK")


@before_task_publish.connect(weak=False)
def _published(sender: str | None = None, **_: Any) -> None:
    if not _enabled:
        return
    COUNTS[f"publish:{sender}"] += 1
    COUNTS["publish_total"] += 1
    if len(TRACE) < 300:
        TRACE.append(f"PUBLISH {sender}")


@worker_process_shutdown.connect(weak=False)
def _dump(**_: Any) -> None:
    out = os.environ.get("BENCH_SQL_COUNT")
    if out:
        with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
            json.dump({**COUNTS, "trace": TRACE}, f)
