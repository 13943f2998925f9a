"""The kit's own tests use the plugin the way a user project does: overriding the app."""

from __future__ import annotations

from typing import Any

import pytest

from tests.testing import shop


@pytest.fixture
def sagas_celery_app() -> Any:
    return shop.app
