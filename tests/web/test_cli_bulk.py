"""``saga bulk`` selects with ``saga list``'s filters: click's CliRunner in this process, on a
PostgreSQL store of its own holding one saga of each shape (made by real workers), acting with
the shop's Celery app on an in-memory broker (no worker reads it: the tests read the store)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from kombu.transport import memory

from sagas import runtime
from sagas.cli import main
from sagas.store import Store
from sagas.testing import embedded
from tests.services import scratch_database
from tests.web import shop
from tests.web.conftest import _run_on_workers

APP = "tests.web.shop:app"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with scratch_database("sagas_bulk") as found:
        memory.Transport.global_state.clear()  # see tests/web/conftest.py pg_shop
        with embedded(shop.app, database_url=found):
            _run_on_workers(found)
        yield found
        runtime.reset()  # the operator commands' runtime points at this database


def saga(url: str, *args: str, answer: str | None = None) -> Result:
    env = {"SAGAS_DATABASE_URL": url, "CELERY_BROKER_URL": "memory://", "SAGAS_CELERY_APP": None}
    return CliRunner().invoke(main, list(args), env=env, input=answer, catch_exceptions=False)


def snapshot(url: str) -> dict[str, tuple[str, int, int]]:
    """Each saga's state, revision and history length: what an action would change."""
    store = Store(url)
    try:
        out = {}
        for record in store.list(limit=100):
            _, _, history = store.get(record.id)
            out[record.id] = (record.state.value, record.lock_version, len(history))
        return out
    finally:
        store.dispose()


def selected(out: str) -> set[str]:
    return set(re.findall(r"^(pg-\S+)", out, re.M))


FILTERS = [
    ["--state", "pending", "--step", "charge"],
    ["--name", "web_order", "--parked"],
    ["--state", "pending,compensating", "--not-parked", "--since", "1h"],
    ["--waiting", "approval"],
    ["--error-type", "CardDeclined"],
    ["--version", "1", "--updated-since", "2000-01-01", "--until", "0s", "--step", "ship"],
    ["--correlation-id", "<pg-park's>"],
    ["--name", "web_loan", "--step", "approval", "--step-state", "running"],
]


@pytest.mark.parametrize("args", FILTERS, ids=[" ".join(a) for a in FILTERS])
def test_bulk_selects_what_list_lists(url: str, args: list[str]) -> None:
    if "<pg-park's>" in args:  # the starter's id, made when the saga started
        store = Store(url)
        args = [store.get("pg-park")[0].correlation_id if a == "<pg-park's>" else a for a in args]
        store.dispose()
    before = snapshot(url)
    listed = saga(url, "list", "--json", *args)
    assert listed.exit_code == 0, listed.output
    ids = {i["id"] for i in json.loads(listed.stdout)["items"]}
    assert ids, args  # each filter selects something, so the comparison means something
    dry = saga(url, "bulk", "resume", *args, "--reason", "check", "--dry-run", "--app", APP)
    assert dry.exit_code == 0, dry.output
    assert re.match(rf"resume: \d+ of {len(ids)} selected saga\(s\)", dry.stdout), dry.stdout
    assert selected(dry.stdout) == ids, (args, dry.stdout)
    assert snapshot(url) == before  # a dry run changes nothing


def test_older_than_is_an_age_of_the_last_change(url: str) -> None:
    none = saga(url, "bulk", "cancel", "--older-than", "1h", "--reason", "x", "--app", APP)
    assert none.exit_code == 0, none.output
    assert none.stdout.startswith("cancel: 0 of 0 selected saga(s)")
    some = saga(
        url, "bulk", "cancel", "--older-than", "0", "--parked", "--state", "pending",
        "--reason", "x", "--dry-run", "--app", APP,
    )  # fmt: skip
    assert some.exit_code == 0, some.output
    assert selected(some.stdout) == {"pg-park"}
    assert "cancel: 1 of 1 selected saga(s) would be acted on" in some.stdout


def test_bad_selection_is_one_error_line_and_changes_nothing(url: str) -> None:
    before = snapshot(url)
    cases = [
        (["--state", "stuck"], 2, "error: --state: "),
        (["--since", "yesterday"], 2, "error: --since: expected an ISO 8601 date"),
        (["--name", "x'; drop table sagas;--"], 2, "error: --name: "),
        (
            ["--older-than", "2h", "--updated-until", "1h"],
            1,
            "error: give --older-than or --updated-until",
        ),
        (["--older-than", "soon"], 1, "error: --older-than 'soon'"),
        (["pg-park", "--name", "web_order"], 1, "error: give saga ids or filters, not both"),
        ([], 1, "error: select sagas: ids, or filters"),
    ]
    for args, code, message in cases:
        result = saga(url, "bulk", "cancel", *args, "--reason", "x", "--yes", "--app", APP)
        assert result.exit_code == code, (args, result.output)
        assert result.stderr.startswith(message), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert snapshot(url) == before


def test_bulk_cancel_by_filter_asks_then_acts_with_a_progress_bar(url: str) -> None:
    args = ["bulk", "cancel", "--name", "web_loan", "--waiting", "approval", "--reason", "dup"]
    before = snapshot(url)
    refused = saga(url, *args, "--by", "ana", "--app", APP, answer="n\n")
    assert refused.exit_code == 1
    assert "not confirmed, nothing done" in refused.stderr
    assert "cancel: 1 of 1 selected saga(s) would be acted on" in refused.stdout
    assert snapshot(url) == before
    done = saga(url, *args, "--by", "ana", "--app", APP, answer="y\n")
    assert done.exit_code == 0, done.output
    assert "cancel: 1 done, 0 refused" in done.stdout
    assert "cancel" in done.stderr and "100%" in done.stderr  # rich's bar, on stderr
    after = snapshot(url)
    assert after["pg-loan-waiting"][0] != "pending"
    assert {k: v for k, v in after.items() if k != "pg-loan-waiting"} == {
        k: v for k, v in before.items() if k != "pg-loan-waiting"
    }  # only the selected saga moved
    store = Store(url)
    try:
        kinds = {h.kind: h.detail for h in store.get("pg-loan-waiting")[2]}
    finally:
        store.dispose()
    assert kinds["cancel_requested"] == {"by": "ana", "reason": "dup"}
