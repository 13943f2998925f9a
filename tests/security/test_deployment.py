"""The example deployment's exposed surfaces: Flower's login and binding, secrets in URLs.

Procfile and docker-compose.yml are read as text (no YAML library is a dependency): the Flower
service block of the compose file is cut out by indentation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import sagas
from sagas.cli import main
from sagas.settings import mask_url
from sagas.store import Store
from tests.services import scratch_database

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cretPW42"
AUTH_FROM_ENV = re.compile(r"--basic-auth=\$\{FLOWER_BASIC_AUTH(:\?[^}]*)?\}")


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def _compose_service(name: str) -> list[str]:
    lines = (ROOT / "docker-compose.yml").read_text().splitlines()
    start = lines.index(f"  {name}:")
    block = []
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith("   "):
            break
        block.append(line)
    return block


def test_flower_in_the_procfile_takes_basic_auth_from_the_environment_on_loopback() -> None:
    processes = _procfile()
    flower = processes["flower"]
    assert AUTH_FROM_ENV.search(flower), flower
    assert "--address=127.0.0.1" in flower
    assert not re.search(r"--basic-auth=(?!\$\{)", flower)  # no literal user:password
    for name, command in processes.items():
        assert "0.0.0.0" not in command, f"{name} listens on every interface"


def test_flower_in_compose_is_published_on_loopback_with_auth_from_the_environment() -> None:
    block = _compose_service("flower")
    text = "\n".join(block)
    ports = [
        line.strip().removeprefix("- ").strip('"')
        for line in block[block.index("    ports:") + 1 :]
        if line.strip().startswith("- ")
    ]
    assert ports == ["127.0.0.1:5555:5555"]
    assert re.search(r"FLOWER_BASIC_AUTH: \$\{FLOWER_BASIC_AUTH:\?[^}]+\}", text), text
    assert "--basic-auth=" not in text  # from the environment, never on the command line
    compose = (ROOT / "docker-compose.yml").read_text()
    published = re.findall(r'^\s+- "?([0-9.]*:?\d+:\d+)"?\s*$', compose, flags=re.M)
    assert published == ["127.0.0.1:5555:5555"]  # PostgreSQL and Redis are not published
    secrets = re.findall(r"PASSWORD: (.+)", compose)
    assert secrets and all(re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", v) for v in secrets)
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_flower_reads_its_login_from_FLOWER_BASIC_AUTH(monkeypatch: pytest.MonkeyPatch) -> None:
    from flower.command import apply_env_options
    from tornado.options import options

    for var in [v for v in os.environ if v.startswith("FLOWER_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:pw")
    before = options.basic_auth
    try:
        apply_env_options()
        assert options.basic_auth == ["ops:pw"]
    finally:
        options.basic_auth = before


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://sagas:{SECRET}@127.0.0.1:1/sagas",
        f"postgresql+psycopg://sagas:{SECRET}@127.0.0.1:1/sagas?sslmode=disable",
        f"postgresql://sagas@127.0.0.1:1/sagas?password={SECRET}",
    ],
    ids=["userinfo", "driver", "query"],
)
@pytest.mark.parametrize(
    "args", [["list"], ["show", "abc"], ["stuck"], ["dlq", "list"], ["db", "upgrade"], ["demo"]]
)
def test_the_cli_never_prints_a_database_password(url: str, args: list[str]) -> None:
    result = CliRunner().invoke(main, args, env={"SAGAS_DATABASE_URL": url})
    output = result.output  # stdout and stderr, interleaved (click 8.2+)
    assert result.exit_code == 1, output
    assert output.startswith("error: ") and output.count("\n") == 1, output
    assert "127.0.0.1:1" in output  # it does say where it could not connect
    assert SECRET not in output


def test_urls_are_masked_wherever_the_engine_shows_them() -> None:
    for url in (
        f"postgresql+psycopg://sagas:{SECRET}@db:5432/sagas",
        f"redis://:{SECRET}@redis:6379/0",
        f"amqp://guest:{SECRET}@rabbit:5672//",
        f"postgresql://db/sagas?sslmode=require&password={SECRET}",
    ):
        assert SECRET not in mask_url(url) and "***" in mask_url(url)
    store = Store(f"postgresql+psycopg://sagas:{SECRET}@127.0.0.1:1/sagas")
    assert SECRET not in repr(store)
    with pytest.raises(sagas.StoreUnavailable) as info:
        store.ping()
    assert SECRET not in str(info.value)


class _Stop(Exception):
    """Ends the demo right after it printed its first line."""


@pytest.fixture(scope="module")
def pg_url_with_password() -> Iterator[str]:
    with scratch_database("sagas_security_demo") as url:  # trust auth: any password works
        yield url.replace("postgres@", f"postgres:{SECRET}@", 1)


@pytest.mark.parametrize("broker", [None, f"redis://:{SECRET}@127.0.0.1:6379/15"])
def test_the_demo_first_line_masks_database_and_broker_passwords(
    monkeypatch: pytest.MonkeyPatch, pg_url_with_password: str, broker: str | None
) -> None:
    import sagas.examples.demo as embedded_demo
    import workers.demo as server_demo

    def stop(*_: Any, **__: Any) -> Any:
        raise _Stop

    monkeypatch.setattr(embedded_demo, "embedded", stop)  # embedded mode: after the first line
    monkeypatch.setattr(server_demo.sagas, "configure", stop)  # server mode: after the first line
    env = {"SAGAS_DATABASE_URL": pg_url_with_password, "CELERY_BROKER_URL": broker}
    result = CliRunner().invoke(main, ["demo"], env=env)
    assert isinstance(result.exception, _Stop), result.output
    first = result.output.splitlines()[0]
    assert first.startswith("server mode" if broker else "embedded mode"), first
    assert "postgres:***@" in first
    assert SECRET not in result.output
    if broker:
        assert "redis://:***@127.0.0.1" in first
