"""Untrusted text never reaches the engine's log lines raw, and bad replies change no saga.

Hostile strings (CR/LF to forge log lines, ANSI escapes to rewrite a terminal, a Unicode line
separator) travel in payload values, in messages of errors raised by steps, and in the fields of
messages sent by name. Every record the ``sagas.*`` loggers emit is checked.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sagas import SagaState, get_saga
from sagas.observability import metrics
from sagas.runtime import Runtime
from sagas.testing import wait_for
from tests.security.conftest import eventually, sid
from workers.app import app

EVIL = "ok\r\n2026-01-01 INFO forged line\x1b[31mRED\x1b[0m\u2028\x07end"
RAW = ("\r", "\n", "\x1b", "\u2028", "\x07")


def _reply(saga_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "step": "echo",
        "action": "forward",
        "attempt": 1,
        "ok": True,
        "result": {"text": "forged"},
        **fields,
    }


def _send_reply(reply: Any) -> None:
    app.send_task("sagas.step_reply", args=[reply], queue="sagas")


def _bad_replies(reason: str) -> int:
    return metrics.get("sagas_bad_replies_total", reason=reason)


def test_hostile_strings_are_escaped_in_every_engine_log_record(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sagas")
    probe = get_saga("security_probe")
    ids = [
        probe.start({"text": EVIL, "mode": "permanent"}, saga_id=sid()),
        probe.start({"text": EVIL, "mode": "crash"}, saga_id=sid()),
    ]
    rejected = metrics.get("sagas_start_rejected_total")
    unknown = _bad_replies("unknown_saga") + _bad_replies("unknown_step")
    schema = _bad_replies("schema")
    # Fields of messages sent by name, where no caller validated anything.
    app.send_task("sagas.start_saga", args=[EVIL, {"text": "x"}])
    app.send_task("sagas.start_saga", args=["security_probe", {"text": "x"}, EVIL])
    app.send_task("sagas.start_saga", args=["security_probe", {"text": "x"}, sid(), EVIL])
    app.send_task("sagas.start_saga", args=["security_probe", {"text": 5, EVIL: EVIL}, sid()])
    _send_reply(_reply("no-such-saga" + EVIL))
    _send_reply(_reply(ids[0], step=EVIL))
    _send_reply(_reply(ids[0], error_type=EVIL, **{EVIL: EVIL}))
    for saga_id in ids:
        assert wait_for(rt.store, saga_id, timeout=10).state is SagaState.FAILED
    eventually(lambda: metrics.get("sagas_start_rejected_total") >= rejected + 4, what="starts")
    eventually(
        lambda: _bad_replies("unknown_saga") + _bad_replies("unknown_step") >= unknown + 2,
        what="unknown replies",
    )
    eventually(lambda: _bad_replies("schema") >= schema + 1, what="schema reply")

    mine = [r for r in caplog.records if r.name.startswith("sagas")]
    messages = [r.getMessage() for r in mine]
    assert len(messages) >= 10
    for message in messages:
        assert not any(c in message for c in RAW), repr(message)
    # The hostile text did reach the logs - escaped, so the test is not vacuous.
    assert sum("\\r\\n" in m and "\\x1b[31m" in m for m in messages) >= 6
    assert any("refused: ok\\r\\n" in m for m in messages)  # a PermanentError's message
    assert any("crashed: ok\\r\\n" in m for m in messages)  # any other exception's message


def test_tracebacks_logged_for_crashing_steps_carry_no_raw_control_characters(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sagas")
    saga_id = get_saga("security_probe").start({"text": EVIL, "mode": "crash"}, saga_id=sid())
    wait_for(rt.store, saga_id, timeout=10)
    formatter = logging.Formatter()
    # What a handler prints: the formatted record, traceback included.
    tracebacks = [
        formatter.format(r) for r in caplog.records if r.name.startswith("sagas") and r.exc_info
    ]
    assert tracebacks, "the crash is logged with its traceback"
    for text in tracebacks:
        assert not any(c in text for c in ("\r", "\x1b", "\u2028", "\x07")), text


def test_bad_replies_are_counted_and_change_no_saga(rt: Runtime) -> None:
    saga_id = get_saga("security_probe").start({"text": "kept"}, saga_id=sid())
    assert wait_for(rt.store, saga_id, timeout=10).state is SagaState.COMPLETED
    record, status, history = rt.store.get(saga_id)
    schema = [
        {"saga_id": saga_id},  # missing fields
        _reply(saga_id, admin=True),  # an extra field
        _reply(saga_id, attempt="one"),
        _reply(saga_id, attempt=0),
        _reply(saga_id, ok=[1]),
        _reply(saga_id, action="sideways"),
        {**_reply(saga_id), "saga_id": "x" * 500},
        _reply(saga_id, error_message="e" * 10_000),
        "not a reply",
        None,
        42,
        [],
    ]
    counts = {r: _bad_replies(r) for r in ("schema", "unknown_saga", "unknown_step")}
    for reply in schema:
        _send_reply(reply)
    _send_reply(_reply("no-such-saga"))
    _send_reply(_reply(saga_id, step="no_such_step"))
    _send_reply(_reply(saga_id, attempt=7, result={"forged": True}))  # stale attempt
    _send_reply(_reply(saga_id, ok=False, error_type="Forged", retryable=False))  # settled step
    eventually(lambda: _bad_replies("schema") >= counts["schema"] + len(schema), what="schema")
    eventually(lambda: _bad_replies("unknown_saga") > counts["unknown_saga"], what="saga")
    eventually(lambda: _bad_replies("unknown_step") > counts["unknown_step"], what="step")
    eventually(lambda: len(rt.store.get(saga_id)[2]) >= len(history) + 3, what="ignored replies")
    after_record, after_status, after_history = rt.store.get(saga_id)
    assert after_status == status  # every step's state, attempts and result
    assert after_record.state is record.state and after_record.payload == record.payload
    assert after_history[: len(history)] == history
    added = after_history[len(history) :]
    assert [h.kind for h in added] == ["reply_ignored"] * len(added)
    assert status.steps[0].result == {"text": "kept"}
