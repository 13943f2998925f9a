"""Counts, per worker process, what one hop costs besides CPU: SQL statements, transactions,
task messages published, Celery task events sent, log records emitted (by logger family) and
JSON encodes and decodes (the stdlib's, which SQLAlchemy, psycopg and kombu all use).

Imported by bench.app only when BENCH_SQL_COUNT=<dir> (the profile run): each prefork child
writes <dir>/<pid>.json when it shuts down, labelled with the queues its worker consumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections import Counter
from typing import Any

from celery.signals import before_task_publish, worker_process_shutdown, worker_shutdown
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


def _count(statement: Any) -> str:
    """Counted at psycopg's ``Cursor.execute``, which the store's driver path and SQLAlchemy's
    execution both call: a ``before_cursor_execute`` listener would switch the store onto
    SQLAlchemy's path (``sagas.store.driver``), and the counts would describe another engine."""
    label = _label(statement if isinstance(statement, str) else str(statement))
    COUNTS["sql_total"] += 1
    if len(TRACE) < 300:
        TRACE.append(label)
    return "sql:" + label


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


def _counted(owner: Any, name: str, label: Any) -> None:
    """Wrap ``owner.name`` so each call adds one to ``COUNTS[label(args)]`` (while enabled)."""
    original = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        if _enabled:
            COUNTS[label(*args, **kwargs)] += 1
        return original(*args, **kwargs)

    setattr(owner, name, counting)


def _log_label(logger: logging.Logger, record: logging.LogRecord) -> str:
    # Logger.handle runs only for records that passed the level check: what a worker emits.
    return f"log:{record.name.split('.')[0]}:{record.levelname}"


def _install() -> None:
    import psycopg
    from celery.events.dispatcher import EventDispatcher

    _counted(psycopg.Cursor, "execute", lambda _cur, statement, *a, **k: _count(statement))
    _counted(logging.Logger, "handle", _log_label)
    # json.dumps and json.loads (also with their defaults) go through these two methods.
    _counted(json.JSONEncoder, "encode", lambda *a, **k: "json_encode")
    _counted(json.JSONDecoder, "decode", lambda *a, **k: "json_decode")
    _counted(EventDispatcher, "send", lambda _self, type_, *a, **k: f"event:{type_}")


_install()


def _queues() -> str:
    """The ``-Q`` of this worker's command line (prefork children inherit it)."""
    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg == "-Q" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--queues="):
            return arg.split("=", 1)[1]
    return ""


# The main process too: it receives, acks and sends the task events (prefork children run the
# task bodies and publish what those publish).
@worker_shutdown.connect(weak=False)
@worker_process_shutdown.connect(weak=False)
def _dump(**_: Any) -> None:
    out = os.environ.get("BENCH_SQL_COUNT")
    if out:
        with open(os.path.join(out, f"{os.getpid()}.json"), "w") as f:
            json.dump({**COUNTS, "trace": TRACE, "queues": _queues()}, f)
