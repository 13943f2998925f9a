"""celery-sagas' pytest entry point (``pytest11``): inert unless a project asks for it.

pytest loads every installed ``pytest11`` plugin into every run, so this module imports nothing
of sagas (``import sagas`` costs about a second: Celery, SQLAlchemy, pydantic). It registers one
ini option; the fixtures (``sagas.testing.plugin``) load only when it is on:

    [tool.pytest.ini_options]
    sagas = true

or, equivalently, ``pytest_plugins = ["sagas.testing.plugin"]`` in a conftest.py.
"""

from __future__ import annotations

from typing import Any

PLUGIN = "sagas.testing.plugin"


def pytest_addoption(parser: Any) -> None:
    parser.addini("sagas", "load the saga testing fixtures (sagas.testing.plugin)", type="bool")


def pytest_configure(config: Any) -> None:
    if config.getini("sagas") and not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
