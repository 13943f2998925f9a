"""``saga db upgrade`` through click's CliRunner on a scratch PostgreSQL database: one line per
migration on stderr as it ends (name and time) under a progress bar, stdout unchanged for
scripts, ``--json`` with the migrations applied."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from sagas.cli import main
from sagas.settings import Settings
from sagas.store import Store, migrate
from tests.services import scratch_database

HEAD = migrate.head_revision()


@pytest.fixture
def url() -> Iterator[str]:
    with scratch_database("sagas_upgrade") as found:
        yield found


def upgrade(url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["db", "upgrade", *args], env={"SAGAS_DATABASE_URL": url}, catch_exceptions=False
    )


def reported(stderr: str) -> list[tuple[str, str]]:
    """(revision, name) of each "0008 trace_context … done (1.2 s)" line, in order."""
    return re.findall(r"^(\d{4}) (\w+) … done \(\d+\.\d s\)$", stderr, re.M)


def test_each_migration_is_reported_on_stderr_and_stdout_is_one_line(url: str) -> None:
    result = upgrade(url)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(rf"saga store at revision {HEAD} \(<Store [^\n]+>\)\n", result.stdout)
    expected = [(s.revision, s.name) for s in migrate.all_steps()]
    assert expected[0] == ("0001", "saga_tables") and expected[-1][0] == HEAD
    assert reported(result.stderr) == expected
    assert "100%" in result.stderr  # rich's bar, on stderr
    again = upgrade(url)
    assert again.exit_code == 0 and again.stdout == result.stdout  # idempotent, same line
    assert reported(again.stderr) == [] and "up to date: no migration to apply" in again.stderr


def test_json_lists_only_the_migrations_that_ran(url: str) -> None:
    store = Store(url)
    try:
        migrate.upgrade(store.engine, "0007", settings=Settings(database_url=url))
        pending = [(s.revision, s.name) for s in migrate.pending_steps(store.engine)]
        assert pending[:2] == [("0008", "trace_context"), ("0009", "operator_recovery")]
    finally:
        store.dispose()
    result = upgrade(url, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["revision"] == HEAD
    assert [(a["revision"], a["name"]) for a in body["applied"]] == pending
    assert all(isinstance(a["seconds"], float) and a["seconds"] >= 0 for a in body["applied"])
    assert reported(result.stderr) == pending
    assert json.loads(upgrade(url, "--json").stdout) == {"revision": HEAD, "applied": []}
