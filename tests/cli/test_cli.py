"""The ``saga`` command, run as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagas.store.migrate import head_revision
from tests.services import scratch_database

ROOT = Path(__file__).resolve().parents[2]
SAGA = str(Path(sys.executable).with_name("saga"))


def run(
    *args: str, db: str | None = None, cwd: Path = ROOT, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("SAGAS_DATABASE_URL", "CELERY_BROKER_URL")
    }
    env["SAGAS_CELERY_APP"] = "workers.app"  # operator commands publish with the example app
    if db:
        env["SAGAS_DATABASE_URL"] = db
    env.update(extra)
    return subprocess.run(
        [SAGA, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Run the README's demo once on a fresh SQLite file; share its output with the tests."""
    db = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'demo.db'}"
    result = run("demo", db=db)
    assert result.returncode == 0, result.stderr[-3000:]
    return db, result.stdout


def test_demo_runs_three_sagas_with_the_expected_outcomes(demo_db: tuple[str, str]) -> None:
    _, out = demo_db
    assert "embedded mode" in out
    blocks = out.split("=" * 100)[1:]
    assert len(blocks) == 3
    completes, declined, flaky = blocks
    assert "state=completed" in completes and "saga_completed" in completes
    assert "state=failed" in declined and "CardDeclined" in declined
    assert "step_compensated         reserve_inventory" in declined
    assert "state=completed" in flaky
    assert flaky.count("retry_scheduled") == 2
    assert "create_shipment    succeeded  3" in flaky


def test_list_filters_by_state_and_name(demo_db: tuple[str, str]) -> None:
    db, _ = demo_db
    failed = run("list", "--state", "failed", db=db)
    assert failed.returncode == 0
    assert "card-declined" in failed.stdout and "completes" not in failed.stdout
    named = run("list", "--name", "order_fulfillment", db=db)
    assert named.stdout.count("order_fulfillment") == 3
    none = run("list", "--name", "nothing_here", db=db)
    assert none.returncode == 0 and none.stdout.strip() == "no sagas"


def test_show_prints_the_step_timeline(demo_db: tuple[str, str]) -> None:
    db, _ = demo_db
    saga_id = next(
        line.split()[0]
        for line in run("list", db=db).stdout.splitlines()
        if "carrier-flaky" in line
    )
    result = run("show", saga_id, db=db)
    assert result.returncode == 0
    out = result.stdout
    assert f"saga {saga_id}" in out and "correlation=" in out
    assert "CarrierUnavailable: carrier API unavailable (attempt 1) (retryable)" in out
    assert "wait " in out  # retry intervals are shown


@pytest.mark.parametrize("bad_id", ["does-not-exist", "bad id with spaces"])
def test_show_bad_id_is_one_line_and_nonzero(demo_db: tuple[str, str], bad_id: str) -> None:
    db, _ = demo_db
    result = run("show", bad_id, db=db)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_unreachable_database_is_one_line_and_nonzero() -> None:
    result = run("list", db="postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0]
    assert "secret" not in result.stderr  # the password is masked


def test_db_upgrade_on_postgresql_is_idempotent() -> None:
    with scratch_database() as url:
        first = run("db", "upgrade", db=url)
        assert first.returncode == 0, first.stderr
        head = head_revision()
        assert f"revision {head}" in first.stdout
        second = run("db", "upgrade", db=url)
        assert second.returncode == 0 and f"revision {head}" in second.stdout
        assert run("list", db=url).stdout.strip() == "no sagas"


def test_operator_commands_on_a_healthy_store(demo_db: tuple[str, str]) -> None:
    db, _ = demo_db
    assert run("stuck", db=db).stdout.strip() == "no stuck sagas"
    assert run("dlq", "list", db=db).stdout.strip() == "dead-letter list is empty"
    missing = run("retry", "no-such-saga", "--reason", "ticket 1", db=db)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no saga with id 'no-such-saga'"
    finished = run("list", "--state", "completed", db=db).stdout.splitlines()[2].split()[0]
    done = run("cancel", finished, "--reason", "too late", db=db)
    assert done.returncode == 1 and "nothing to cancel" in done.stderr
    not_parked = run("dlq", "retry", finished, "--reason", "x", db=db)
    assert not_parked.returncode == 1 and "not on the dead-letter list" in not_parked.stderr
    no_reason = run("retry", finished, db=db)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr


def test_demo_runs_embedded_outside_the_checkout(tmp_path: Path) -> None:
    """The example ships in the package: no checkout, no servers."""
    out = run("demo", db=f"sqlite:///{tmp_path / 'demo.db'}", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("order_fulfillment") >= 3 and "compensated" in out.stdout


def test_server_mode_demo_outside_the_checkout_says_where_to_run_it(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    out = run("demo", db=db, cwd=tmp_path, timeout=60, CELERY_BROKER_URL="memory://")
    assert out.returncode != 0
    assert "run it from the root of the sagas checkout" in out.stderr
    assert "Traceback" not in out.stderr


def test_operator_commands_need_the_app(demo_db: tuple[str, str]) -> None:
    db, _ = demo_db
    out = run("retry", "any-id", "--reason", "x", db=db, SAGAS_CELERY_APP="")
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: --app is required (or set SAGAS_CELERY_APP)")


def test_metrics_prints_store_gauges_in_prometheus_format(demo_db: tuple[str, str]) -> None:
    db, _ = demo_db
    result = run("metrics", db=db)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 'sagas_in_store{saga="order_fulfillment",state="completed"} 2' in lines
    assert 'sagas_in_store{saga="order_fulfillment",state="failed"} 1' in lines
    for gauge in ("sagas_parked 0", "sagas_timers_due 0", "sagas_outbox_unsent 0"):
        assert gauge in lines
    assert "sagas_oldest_active_seconds 0.0" in lines  # nothing active after the demo
    assert all(ln.startswith(("# HELP ", "# TYPE ", "sagas_")) for ln in lines)


def test_prune_counts_asks_archives_and_deletes(tmp_path: Path) -> None:
    from sagas.state import SagaState
    from sagas.store import Store, migrate
    from tests.store.test_retention import age
    from tests.store.test_store_contract import insert

    db = f"sqlite:///{tmp_path / 'prune.db'}"
    store = Store(db)
    migrate.upgrade(store.engine)
    for i, state in enumerate([SagaState.COMPLETED, SagaState.FAILED, SagaState.COMPLETED]):
        insert(store, f"old-{i}")
        age(store, f"old-{i}", state, 40)
    insert(store, "running")
    age(store, "running", SagaState.PENDING, 40)
    store.dispose()
    dry = run("prune", "--older-than", "30d", "--dry-run", db=db)
    assert dry.returncode == 0 and dry.stdout.startswith("3 finished saga(s)"), dry.stdout
    refused = run("prune", "--older-than", "30d", db=db)  # no terminal to say yes: aborted
    assert refused.returncode == 1 and "Aborted" in refused.stderr
    archive = tmp_path / "old.jsonl"
    done = run("prune", "--older-than", "30d", "--yes", "--archive", str(archive), db=db)
    assert done.returncode == 0, done.stderr
    assert "deleted 3 saga(s)" in done.stdout
    assert len(archive.read_text().splitlines()) == 3
    left = run("list", db=db).stdout
    assert "running" in left and "old-" not in left
    for bad in ("soon", "-3d", "0"):
        out = run("prune", "--older-than", bad, db=db)
        assert out.returncode == 2 and "--older-than" in out.stderr, (bad, out.stderr)
