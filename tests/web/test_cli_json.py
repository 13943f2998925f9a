"""The ``saga`` command's read commands as a script uses them: the installed console script in
a subprocess, ``--json`` parsed, filters and pages as options, exit codes, against the
PostgreSQL store holding real sagas (and ``saga dashboard`` serving the API)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.web.conftest import Shop

SAGA = str(Path(sys.executable).with_name("saga"))


def saga(shop: Shop, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
    env["SAGAS_DATABASE_URL"] = shop.url
    return subprocess.run(
        [SAGA, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def shapes(shop: Shop, items: list[dict[str, Any]]) -> set[str]:
    return {shop.shape(i["id"]) for i in items}


def test_list_json_with_filters(pg_shop: Shop) -> None:
    everything = as_json(saga(pg_shop, "list", "--json"))
    assert [i["id"] for i in everything["items"]] == list(reversed(pg_shop.created))
    assert everything["next_cursor"] is None
    # Each option once (the API tests cover the filters' meaning; this is the options' wiring).
    cases = [
        (["--state", "pending", "--state", "compensating", "--parked"], {"park", "stuck_undo"}),
        (["--state", "pending,compensating", "--not-parked", "--since", "1h"], {"flaky", "waiting"}),
        (["--name", "web_loan", "--waiting"], {"waiting"}),
        (["--waiting", "approval", "--until", "1s"], {"waiting"}),
        (["--error-type", "CardDeclined", "--step", "reserve", "--step-state", "compensated"],
         {"decline"}),
        (["--updated-since", "2000-01-01", "--updated-until", "1s", "--version", "1",
          "--name", "web_order", "--step", "charge"], {"decline", "stuck_undo", "flaky"}),
    ]  # fmt: skip
    for args, expected in cases:
        assert (
            shapes(pg_shop, as_json(saga(pg_shop, "list", "--json", *args))["items"]) == expected
        ), args


def test_list_pages_with_the_printed_cursor(pg_shop: Shop) -> None:
    seen: list[str] = []
    args = ["list", "--json", "--limit", "3"]
    while True:
        page = as_json(saga(pg_shop, *args))
        seen += [i["id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        args = ["list", "--json", "--limit", "3", "--cursor", page["next_cursor"]]
    assert seen == list(reversed(pg_shop.created))
    table = saga(pg_shop, "list", "--limit", "2")  # the table prints the next cursor too
    assert table.returncode == 0
    cursor = re.search(r"^next page: --cursor (\S+)$", table.stdout, re.M)
    assert cursor is not None
    rest = as_json(saga(pg_shop, "list", "--json", "--cursor", cursor.group(1)))
    assert [i["id"] for i in rest["items"]] == list(reversed(pg_shop.created))[2:]


def test_tables_fit_in_80_columns(pg_shop: Shop) -> None:
    for args in (["list"], ["stuck", "--older-than", "0"], ["dlq", "list"], ["versions"]):
        out = saga(pg_shop, *args)
        assert out.returncode == 0, (args, out.stderr)
        widest = max(len(line) for line in out.stdout.splitlines())
        assert widest <= 80, (args, out.stdout)
    listed = saga(pg_shop, "list").stdout
    assert all(i in listed for i in pg_shop.created)  # ids are never cut


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--since", "yesterday"], "--since"),
        (["--state", "exploded", "--json"], "--state"),
        (["--name", "x'; DROP TABLE saga; --"], "--name"),
        (["--cursor", "eyJ2IjoxfQ.AAAAAAAAAAAAAAAAAAAAAA", "--json"], "--cursor"),
    ],
)
def test_bad_filters_exit_2_naming_the_option(pg_shop: Shop, args: list[str], option: str) -> None:
    result = saga(pg_shop, "list", *args)
    assert result.returncode == 2, result
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {option}: "), line
    assert len(as_json(saga(pg_shop, "list", "--json"))["items"]) == 7  # nothing changed


def test_show_json(pg_shop: Shop) -> None:
    body = as_json(saga(pg_shop, "show", pg_shop.ids["decline"], "--json"))
    assert body["state"] == "failed" and body["failure"]["type"] == "CardDeclined"
    assert [s["name"] for s in body["steps"]] == ["reserve", "charge", "ship"]
    assert body["steps"][1]["attempts"][0]["error"]["type"] == "CardDeclined"
    assert body["history"][0]["kind"] == "saga_started"
    missing = saga(pg_shop, "show", "no-such-saga", "--json")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no saga with id")


def test_stuck_dlq_metrics_versions_json(pg_shop: Shop) -> None:
    stuck = as_json(saga(pg_shop, "stuck", "--older-than", "0", "--json"))
    assert {pg_shop.shape(i["saga"]["id"]): i["stuck_class"] for i in stuck["items"]} == {
        "park": "dead_lettered",
        "stuck_undo": "dead_lettered",
    }
    assert as_json(saga(pg_shop, "stuck", "--class", "no_progress", "--json"))["items"] == []
    dlq = as_json(saga(pg_shop, "dlq", "list", "--json"))
    assert {(pg_shop.shape(d["saga"]["id"]), d["step"], d["step_state"]) for d in dlq} == {
        ("park", "ship", "parked"),
        ("stuck_undo", "reserve", "compensation_failed"),
    }
    metrics = as_json(saga(pg_shop, "metrics", "--json"))
    assert metrics["parked"] == 2
    assert {(m["saga"], m["state"]): m["count"] for m in metrics["in_store"]} == {
        ("web_loan", "completed"): 1,
        ("web_loan", "pending"): 1,
        ("web_order", "completed"): 1,
        ("web_order", "compensating"): 1,
        ("web_order", "failed"): 1,
        ("web_order", "pending"): 2,
    }
    versions = as_json(saga(pg_shop, "versions", "--json"))
    assert versions["ok"] is True
    assert {
        (v["name"], v["version"], v["in_flight"], v["finished"]) for v in versions["versions"]
    } == {
        ("web_loan", 1, 1, 1),
        ("web_order", 1, 3, 2),
    }


def test_saga_dashboard_serves_the_api_on_loopback(pg_shop: Shop) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_"))}
    env["SAGAS_DATABASE_URL"] = pg_shop.url
    proc = subprocess.Popen(
        [SAGA, "dashboard", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, "uvicorn never said where it listens"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sagas?state=failed") as r:
            body = json.load(r)
        assert shapes(pg_shop, body["items"]) == {"decline"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/openapi.json") as r:
            assert "/api/stuck" in json.load(r)["paths"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
