"""``embedded`` sweeps at the period its runtime's settings say: the argument when given, else
the settings' own ``sweep_interval`` (it used to take the argument's 0.25 s default and ignore
the settings, so a test asking for slow or fast sweeps silently got neither)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest
from celery import Celery

from sagas.settings import Settings
from sagas.testing import embedded

# The module (the package's ``embedded`` attribute is the function of the same name).
embedded_module = importlib.import_module("sagas.testing.embedded")


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    seen: list[float] = []
    monkeypatch.setattr(embedded_module.sweeper, "sweep", lambda rt: seen.append(time.monotonic()))
    return seen


def test_the_settings_period_holds(tmp_path: Path, passes: list[float]) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sagas.db'}", sweep_interval=30.0)
    with embedded(Celery("sweep-period-settings"), settings=settings) as rt:
        assert rt.settings.sweep_interval == 30.0
        time.sleep(1.0)  # four passes at the old 0.25 s
    assert passes == []


def test_the_argument_overrides_the_settings(tmp_path: Path, passes: list[float]) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sagas.db'}", sweep_interval=30.0)
    with embedded(Celery("sweep-period-arg"), settings=settings, sweep_interval=0.05) as rt:
        assert rt.settings.sweep_interval == 0.05
        deadline = time.monotonic() + 20
        while len(passes) < 3:
            assert time.monotonic() < deadline, f"only {len(passes)} sweeper passes in 20 s"
            time.sleep(0.02)


def test_a_period_that_is_not_positive_is_refused(passes: list[float]) -> None:
    with pytest.raises(ValueError, match="sweep_interval must be > 0"):
        with embedded(Celery("sweep-period-zero"), sweep_interval=0):
            pass
    assert passes == []
