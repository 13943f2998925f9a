from __future__ import annotations

import os

# Tests never read a developer's real configuration by accident.
for _var in ("SAGAS_DATABASE_URL", "CELERY_BROKER_URL"):
    os.environ.pop(_var, None)

# The wheel and the fresh venv with it installed, shared by tests/user and tests/contrib; the
# testing kit's fixtures (sagas.testing.plugin), as a user project loads them; Celery's own
# pytest fixtures (celery_app, celery_config, ...), which the kit composes with. That plugin
# is loaded by module name: "-p no:celery" only keeps its entry point from loading it twice.
pytest_plugins = ("tests.wheelhouse", "sagas.testing.plugin", "celery.contrib.pytest")
