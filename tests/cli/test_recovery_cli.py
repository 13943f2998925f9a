"""The operator actions as a user runs them: ``saga fork/pause/resume/cancel/rerun/bulk`` in a
subprocess, on the demo's store. The plan is printed first; actions that run compensations or
effects ask (``--yes`` skips, ``--dry-run`` only shows); bad input ends in one ``error:`` line.

Commands publish with the example app on an in-process broker (``memory://``): the tests read
what the commands wrote in the store; ``tests/integration`` runs the same actions on workers."""

from __future__ import annotations

import getpass
import re

import pytest

from sagas.store import Store
from tests.cli.test_cli import run

ORDER_FIX = '"4242424242424242"'


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli_ops') / 'demo.db'}"
    result = run("demo", db=url)
    assert result.returncode == 0, result.stderr[-3000:]
    return url


def saga(*args: str, db: str) -> tuple[int, str, str]:
    out = run(*args, db=db, CELERY_BROKER_URL="memory://")
    return out.returncode, out.stdout, out.stderr


def failed_id(db: str) -> str:
    return run("list", "--state", "failed", db=db).stdout.splitlines()[2].split()[0]


def history(db: str, saga_id: str) -> list[tuple[str, dict[str, object] | None]]:
    store = Store(db)
    try:
        return [(h.kind, h.detail) for h in store.get(saga_id)[2]]
    finally:
        store.dispose()


def test_fork_shows_the_plan_then_asks_and_a_dry_run_changes_nothing(db: str) -> None:
    original = failed_id(db)
    fork = ("fork", original, "--from", "reserve_inventory", "--set", f"card_number={ORDER_FIX}")
    code, out, err = saga(
        *fork, "--reason", "new card (ticket 4)", "--by", "ana", "--dry-run", db=db
    )
    assert code == 0, err
    assert out.splitlines()[0] == f"fork {original} from reserve_inventory as {original}.fork1"
    assert "payload card_number: '4000000000000002' -> '4242424242424242'" in out
    assert out.strip().endswith("dry run: nothing done")
    code, out, err = saga(*fork, "--reason", "new card", "--by", "ana", db=db)  # stdin closed
    assert code == 1 and "not confirmed, nothing done (--yes skips the question)" in err
    assert Store(db).forks_of(original) == []
    assert [k for k, _ in history(db, original)].count("forked_to") == 0


def test_fork_with_yes_links_both_sagas_with_who_why_and_the_diff(db: str) -> None:
    original = failed_id(db)
    code, out, err = saga(
        "fork", original, "--from", "reserve_inventory", "--set", f"card_number={ORDER_FIX}",
        "--reason", "customer gave a new card", "--by", "ana", "--yes", db=db,
    )  # fmt: skip
    assert code == 0, err
    child = f"{original}.fork1"
    assert f"saga {original}: forked as {child}" in out
    shown = run("show", child, db=db).stdout
    assert f"forked from {original}" in shown and "forked_from" in shown
    assert f"forks: {child}" in run("show", original, db=db).stdout
    detail = dict(history(db, original))["forked_to"]
    assert detail == {
        "saga_id": child,
        "step": "reserve_inventory",
        "by": "ana",
        "reason": "customer gave a new card",
        "changes": {"card_number": {"old": "4000000000000002", "new": "4242424242424242"}},
    }
    first_kind, first = history(db, child)[0]
    assert first_kind == "forked_from" and first is not None
    assert first["saga_id"] == original and first["changes"] == detail["changes"]


def test_pause_resume_cancel_and_bulk_on_a_saga_in_flight(db: str) -> None:
    original = failed_id(db)
    code, out, err = saga(
        "fork", original, "--from", "reserve_inventory", "--id", "inflight-1",
        "--reason", "replay", "--yes", db=db,
    )  # fmt: skip
    assert code == 0, err  # its first step went to a broker no worker reads: it stays running
    code, out, err = saga("pause", "inflight-1", "--reason", "looking into it", db=db)
    assert code == 0, err  # a pause runs nothing: no question asked
    assert "reserve_inventory is running: its reply is recorded" in out
    assert "PAUSED since" in run("show", "inflight-1", db=db).stdout
    assert dict(history(db, "inflight-1"))["saga_paused"] == {
        "by": getpass.getuser(),  # the OS user when --by is not given
        "reason": "looking into it",
    }
    code, _, err = saga("cancel", "inflight-1", "--reason", "x", "--dry-run", db=db)
    assert (
        code == 1
        and err == "error: nothing to cancel: saga 'inflight-1' is paused: resume it first\n"
    )

    code, out, err = saga(
        "bulk", "resume", "--state", "pending", "--reason", "go", "--dry-run", db=db
    )
    assert code == 0, err
    # Only the paused one is planned; other pending sagas (forks of earlier tests) are refused.
    assert re.match(r"resume: 1 of \d+ selected saga\(s\) would be acted on", out), out
    assert "inflight-1" in out
    assert Store(db).get("inflight-1")[0].paused_at is not None  # the dry run changed nothing
    code, out, err = saga("bulk", "resume", "inflight-1", "--reason", "go", "--yes", db=db)
    assert code == 0, err
    assert "resume: 1 done, 0 refused" in out
    assert "resume" in err and "100%" in err  # rich's progress bar, on stderr
    assert Store(db).get("inflight-1")[0].paused_at is None

    code, out, err = saga("cancel", "inflight-1", "--reason", "customer left", "--dry-run", db=db)
    assert code == 0, err
    assert "reserve_inventory is running: its outcome is unknown, so it is compensated too" in out
    assert "will compensate reserve_inventory" in out
    assert "cancel_requested" not in [k for k, _ in history(db, "inflight-1")]


def test_bad_input_ends_in_one_error_line_and_writes_nothing(db: str) -> None:
    original = failed_id(db)
    before = history(db, original)
    cases = {
        ("fork", original, "--from", "pack_box"): "has no step 'pack_box'",
        ("fork", original, "--from", "reserve_inventory", "--set", 'card_number="12"'): (
            "field 'card_number'"
        ),
        ("fork", original, "--from", "reserve_inventory", "--set", 'cardnumber="1"'): (
            "'cardnumber' is not a field of Order"
        ),
        ("fork", original, "--from", "reserve_inventory", "--set", "card_number=not json"): (
            "--set card_number is not JSON"
        ),
        ("fork", original, "--from", "charge_payment"): "'reserve_inventory' is compensated",
        ("pause", original, "--revision", "0"): "changed since revision 0",
        ("rerun", original): "'reserve_inventory' was compensated",
        ("resume", "no-such-saga"): "no saga with id 'no-such-saga'",
        ("bulk", "cancel"): "select sagas",
        ("bulk", "cancel", "--older-than", "soon"): "--older-than 'soon'",
    }
    for args, message in cases.items():
        code, out, err = saga(*args, "--reason", "x", "--yes", db=db)
        assert code == 1, (args, out, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (args, err)
        assert message in err, (args, err)
    assert history(db, original) == before


def test_show_prints_the_revision_an_action_can_pin(db: str) -> None:
    original = failed_id(db)
    code, _, err = saga(
        "fork", original, "--from", "reserve_inventory", "--id", "inflight-2",
        "--reason", "replay", "--yes", db=db,
    )  # fmt: skip
    assert code == 0, err
    shown = run("show", "inflight-2", db=db).stdout.splitlines()[1]  # correlation=... revision=N
    revision = shown.split("revision=")[1].split()[0]
    code, out, err = saga("pause", "inflight-2", "--reason", "x", "--revision", revision, db=db)
    assert code == 0 and "paused" in out, err
    code, _, err = saga("resume", "inflight-2", "--reason", "x", "--revision", revision, db=db)
    assert code == 1 and f"changed since revision {revision}" in err  # the pause moved it
