"""pytest fixtures for testing sagas (load with ``sagas = true`` in the pytest ini, or
``pytest_plugins = ["sagas.testing.plugin"]`` in a conftest.py, or ``-p sagas.testing.plugin``).

- ``sagas_celery_app``: the Celery app the sagas run on. Override it in your conftest.py to
  return your own app (``return shop.celery.app``), or name it in the ini
  (``sagas_celery_app = shop.celery:app``); with pytest's ``celery_app`` fixture
  (``celery.contrib.pytest``) in use, that one. Otherwise a fresh app.
- ``saga_clock``: the ``FakeClock`` (``saga_clock.advance(timedelta(hours=1))``).
- ``saga_settings``: ``Settings`` field overrides for the runtime (a dict; override it).
- ``saga_runtime``: the real engine on that app, in the test's thread: a fresh SQLite store, an
  in-process broker, the sweeper on the fake clock; torn down after each test.
- ``saga_doubles``: ``StepDoubles`` on that app, restored after each test.
- ``saga_explore``: ``explore`` on that app that fails the test on any violated invariant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..clock import FakeClock
from .doubles import StepDoubles
from .explore import Exploration, explore
from .runtime import LocalRuntime, local_runtime


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "sagas_celery_app",
        "module:attribute of the Celery app the saga fixtures run on (default: a fresh app)",
    )
    parser.addini(
        "sagas_modules",
        "modules declaring the sagas under test, imported before each saga_runtime",
        type="linelist",
    )


def _from_ini(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    target: Any = importlib.import_module(module)
    for part in (attribute or "app").split("."):
        target = getattr(target, part)
    return target


@pytest.fixture
def sagas_celery_app(request: pytest.FixtureRequest) -> Any:
    """The Celery app for the saga fixtures (override this fixture to give yours)."""
    spec = request.config.getini("sagas_celery_app")
    if spec:
        return _from_ini(str(spec))
    if "celery_app" in request.fixturenames:  # celery.contrib.pytest's app, when in use
        return request.getfixturevalue("celery_app")
    celery = importlib.import_module("celery")
    return celery.Celery("sagas-tests", set_as_current=False)


@pytest.fixture
def saga_clock() -> FakeClock:
    """The fake clock the saga runtime runs on."""
    return FakeClock()


@pytest.fixture
def saga_settings() -> dict[str, Any]:
    """``Settings`` overrides for ``saga_runtime`` (override, e.g. ``{"sweep_interval": 1}``)."""
    return {}


@pytest.fixture
def saga_runtime(
    request: pytest.FixtureRequest,
    sagas_celery_app: Any,
    saga_clock: FakeClock,
    saga_settings: dict[str, Any],
) -> Iterator[LocalRuntime]:
    """The engine on ``sagas_celery_app`` with a fresh store, in-process broker and fake clock."""
    for module in request.config.getini("sagas_modules") or ():
        importlib.import_module(str(module))
    with local_runtime(sagas_celery_app, clock=saga_clock, **saga_settings) as rt:
        yield rt


@pytest.fixture
def saga_doubles(sagas_celery_app: Any) -> Iterator[StepDoubles]:
    """Replace steps or remote tasks for this test; every original is back afterwards."""
    doubles = StepDoubles(sagas_celery_app)
    try:
        yield doubles
    finally:
        doubles.restore()


@pytest.fixture
def saga_explore(sagas_celery_app: Any) -> Callable[..., Exploration]:
    """``saga_explore(saga, payload, ...)``: ``explore`` on this app; fails the test with the
    report (and a one-line reproduction per failing point) if any invariant is violated."""

    def run(saga: Any, payload: Any, **options: Any) -> Exploration:
        result = explore(saga, payload, app=sagas_celery_app, **options)
        if not result.ok:
            pytest.fail(result.report(), pytrace=False)
        return result

    return run
