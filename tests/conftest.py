from __future__ import annotations

import os

# Tests never read a developer's real configuration by accident.
for _var in ("SAGAS_DATABASE_URL", "CELERY_BROKER_URL"):
    os.environ.pop(_var, None)

# The wheel and the fresh venv with it installed, shared by tests/user and tests/contrib; the
# testing kit's fixtures (sagas.testing.plugin), as a user project loads them.
pytest_plugins = ("tests.wheelhouse", "sagas.testing.plugin")
