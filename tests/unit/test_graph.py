"""``saga graph``: a definition as a Mermaid flowchart."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from click.testing import CliRunner
from pydantic import BaseModel

from sagas import Park, RetryAfter, Saga
from sagas.cli import main
from sagas.graph import mermaid


class P(BaseModel):
    ref: str = "r"


class A(BaseModel):
    by: str


def _fn(ctx: Any) -> None:
    return None


def test_steps_waits_pivot_routes_and_compensations() -> None:
    s = Saga("graph_trip", payload=P, version=2)
    s.step(queue="flights", compensation=_fn, name="book")(_fn)
    s.wait_for("approval", model=A, timeout=timedelta(days=2))
    s.step(queue="payments", compensation=_fn, pivot=True, name="charge")(_fn)
    s.remote_step("mail", task="mail.send", queue="mail", on_exhausted=Park("ops"))
    s.step(queue="loyalty", name="points", on_exhausted=RetryAfter(3600, times=3))(_fn)
    assert mermaid(s).splitlines() == [
        "flowchart TD",
        '    start(["graph_trip v2"])',
        '    s0["book<br/>queue flights"]',
        "    start --> s0",
        '    s1[/"wait for signal approval<br/>up to 2 d"/]',
        "    s0 --> s1",
        '    s2{{"charge (pivot)<br/>queue payments"}}',
        "    s1 --> s2",
        '    s3["mail<br/>task mail.send<br/>exhausted: park for an operator"]',
        "    s2 --> s3",
        '    s4["points<br/>queue loyalty<br/>exhausted: retry after 1 h, 3x"]',
        "    s3 --> s4",
        '    done(["completed"])',
        "    s4 --> done",
        '    failed(["failed: compensated"])',
        '    u2["undo charge"]',
        "    s2 -. on failure .-> u2",
        '    u0["undo book"]',
        "    s0 -. on failure .-> u0",
        "    u2 -.-> u0",
        "    u0 -.-> failed",
    ]
    printed = CliRunner().invoke(main, ["graph", "graph_trip"])
    assert printed.exit_code == 0 and printed.output == mermaid(s) + "\n"
    missing = CliRunner().invoke(main, ["graph", "graph_trip", "--version", "1"])
    assert missing.exit_code == 1
    assert "saga 'graph_trip' version 1 is not defined in this process" in missing.output
