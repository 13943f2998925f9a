"""The example deployment's Celery settings (``celeryconfig.py``), read by a fresh interpreter
as a worker would: the reliability choices hold, worker task events are on for Flower, and the
per-publish task-sent event is off unless the environment asks for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READ = (
    "import json, celeryconfig as c; print(json.dumps({k: getattr(c, k) for k in ("
    "'task_acks_late', 'task_reject_on_worker_lost', 'worker_prefetch_multiplier', "
    "'worker_send_task_events', 'task_send_sent_event', 'accept_content')}))"
)


def _settings(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k != "CELERY_TASK_SEND_SENT_EVENT"}
    out = subprocess.run(
        [sys.executable, "-c", READ], cwd=ROOT, env={**clean, **env},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_defaults() -> None:
    assert _settings() == {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "accept_content": ["json"],
    }


@pytest.mark.parametrize(("value", "on"), [("true", True), ("1", True), ("0", False)])
def test_the_sent_event_from_the_environment(value: str, on: bool) -> None:
    assert _settings(CELERY_TASK_SEND_SENT_EVENT=value)["task_send_sent_event"] is on
