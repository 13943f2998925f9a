"""The kit next to ``celery.contrib.pytest``'s fixtures, as an existing Celery test suite has
them: no ``sagas_celery_app`` override here, so the kit picks up ``celery_app``."""

from __future__ import annotations

from typing import Any

import pytest

from sagas import SagaState
from sagas.testing import LocalRuntime, assert_compensated, assert_completed, embedded, wait_for
from tests.testing import shop


@pytest.fixture(scope="session")
def celery_config() -> dict[str, Any]:
    return {"broker_url": "memory://", "task_serializer": "json", "accept_content": ["json"]}


def test_saga_runtime_runs_on_the_celery_app_fixture(
    celery_app: Any, saga_runtime: LocalRuntime, sagas_celery_app: Any
) -> None:
    assert sagas_celery_app is celery_app and saga_runtime.app is celery_app
    assert celery_app.conf.broker_url == "memory://"  # celery_config reached the app
    saga_id = saga_runtime.start(shop.dinner, {"guest": "pat", "card": "0000"})
    assert_compensated(saga_id, ["book_table"])
    assert {d.message.name for d in saga_runtime.broker.log} >= {"saga.kit_dinner.book_table"}


def test_without_celery_app_a_fresh_app_is_used(
    saga_runtime: LocalRuntime, sagas_celery_app: Any
) -> None:
    assert sagas_celery_app.main == "sagas-tests"
    sid = saga_runtime.start(shop.dinner, {"guest": "quin"})
    assert_completed(sid)


@pytest.mark.timeout(60)
def test_a_real_worker_on_the_celery_app_fixture(celery_app: Any) -> None:
    with embedded(celery_app) as rt:
        saga_id = shop.dinner.start({"guest": "rae"})
        assert wait_for(rt.store, saga_id, timeout=20).state is SagaState.COMPLETED
