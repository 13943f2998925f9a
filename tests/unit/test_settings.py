"""Settings come from SAGAS_* variables (and CELERY_BROKER_URL); URLs are logged masked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sagas.settings import DEFAULT_DATABASE_URL, Settings, mask_url
from sagas.store import Store


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/sagas", "postgresql://app:***@db:5432/sagas"),
        ("postgresql+psycopg://app:p@ss:w0rd@db/sagas", "postgresql+psycopg://app:***@db/sagas"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("postgresql://app@db/sagas", "postgresql://app@db/sagas"),
        ("sqlite:///sagas.db", "sqlite:///sagas.db"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("", ""),
        (None, "None"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url: str | None, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret@db/sagas",
        "postgresql://app:s3cret@db/sagas?application_name=a@b",
        "redis://:s3cret@cache:6379/0",
        "amqp://user:s3cret@rabbit//",
    ],
)
def test_mask_url_never_shows_the_password(url: str) -> None:
    assert "s3cret" not in mask_url(url)


def test_store_repr_masks_the_password() -> None:
    store = Store("postgresql+psycopg://app:s3cret@127.0.0.1:1/sagas")
    try:
        assert "s3cret" not in repr(store) and "***" in repr(store)
    finally:
        store.dispose()


def test_defaults_without_environment() -> None:
    s = Settings()
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.broker_url is None
    assert s.coordinator_queue == "sagas"
    assert s.max_payload_bytes > 0 and s.max_payload_depth > 0


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAS_DATABASE_URL", "postgresql://app:pw@db/sagas")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://cache:6379/1")
    monkeypatch.setenv("SAGAS_COORDINATOR_QUEUE", "coord")
    monkeypatch.setenv("SAGAS_MAX_PAYLOAD_BYTES", "1024")
    monkeypatch.setenv("SAGAS_SWEEP_INTERVAL", "2.5")
    s = Settings()
    assert s.database_url == "postgresql://app:pw@db/sagas"
    assert s.database_url_sqlalchemy == "postgresql+psycopg://app:pw@db/sagas"
    assert s.broker_url == "redis://cache:6379/1"
    assert s.coordinator_queue == "coord"
    assert s.max_payload_bytes == 1024
    assert s.sweep_interval == 2.5


def test_broker_url_comes_from_celery_broker_url_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAS_BROKER_URL", "redis://wrong:6379/0")
    assert Settings().broker_url is None


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAS_DATABASE_URL", "postgresql://env/db")
    assert Settings(database_url="sqlite:///x.db").database_url == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://h/db", "postgresql+psycopg://h/db"),
        ("postgresql://h/db", "postgresql+psycopg://h/db"),
        ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
        ("sqlite:///sagas.db", "sqlite:///sagas.db"),
    ],
)
def test_database_url_for_sqlalchemy(url: str, expected: str) -> None:
    assert Settings(database_url=url).database_url_sqlalchemy == expected


@pytest.mark.parametrize("url", ["sagas.db", "localhost/sagas", ""])
def test_a_bad_database_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("SAGAS_DATABASE_URL", url)
    with pytest.raises(ValidationError) as exc:
        Settings()
    message = str(exc.value)
    assert "database_url" in message
    assert "SQLAlchemy URL" in message


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SAGAS_MAX_PAYLOAD_BYTES", "0"),
        ("SAGAS_MAX_PAYLOAD_DEPTH", "-1"),
        ("SAGAS_SWEEP_INTERVAL", "0"),
        ("SAGAS_MAX_PAYLOAD_BYTES", "lots"),
    ],
)
def test_bad_numbers_are_rejected(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as exc:
        Settings()
    assert var.removeprefix("SAGAS_").lower() in str(exc.value)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.coordinator_queue = "other"  # type: ignore[misc]


def test_settings_from_a_celery_config_take_its_keys_before_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SAGAS_SWEEP_INTERVAL", "9")
    monkeypatch.setenv("SAGAS_COORDINATOR_QUEUE", "from-env")
    settings = Settings.from_config(
        {"broker_url": "redis://127.0.0.1:6379/3", "sagas_sweep_interval": 2}
    )
    assert settings.broker_url == "redis://127.0.0.1:6379/3"
    assert settings.sweep_interval == 2.0  # the app's config wins
    assert settings.coordinator_queue == "from-env"  # the environment fills the rest


def test_a_wrong_setting_in_a_celery_config_is_named_and_its_password_masked() -> None:
    from sagas.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"setting sagas_sweep_interval") as bad:
        Settings.from_config({"sagas_sweep_interval": "soon"})
    assert bad.value.setting == "sweep_interval"
    with pytest.raises(ConfigurationError) as url:
        Settings.from_config({"sagas_database_url": "no-scheme:pw@secret"})
    assert url.value.setting == "database_url"


def test_the_start_is_recorded_in_the_caller_only_with_a_store_url_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SAGAS_DATABASE_URL", raising=False)
    monkeypatch.delenv("SAGAS_START_IN_CALLER", raising=False)
    monkeypatch.delenv("SAGAS_START_ON_STEP_QUEUE", raising=False)
    # The built-in sagas.db is relative to each process's directory: a web process writing
    # there would record sagas no worker sees, so it sends the message.
    assert not Settings().starts_in_caller
    assert Settings(database_url="sqlite:////srv/app/sagas.db").starts_in_caller
    assert Settings.from_config({"sagas_database_url": "postgresql://db/s"}).starts_in_caller
    monkeypatch.setenv("SAGAS_DATABASE_URL", "postgresql://db/sagas")
    assert Settings().starts_in_caller
    # Asked for explicitly, either way; the step-queue start keeps its message.
    assert not Settings(start_in_caller=False).starts_in_caller
    assert not Settings(start_on_step_queue=True).starts_in_caller
    monkeypatch.delenv("SAGAS_DATABASE_URL")
    assert Settings(start_in_caller=True).starts_in_caller
    monkeypatch.setenv("SAGAS_START_IN_CALLER", "0")
    assert not Settings(database_url="postgresql://db/s").starts_in_caller
