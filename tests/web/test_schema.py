"""Property-based requests from the API's own published OpenAPI schema (schemathesis): every
operation, valid and invalid parameters alike, against stores holding real sagas (SQLite and
PostgreSQL). No request may end in a 500, every response matches the schema it is documented
with, a request the schema allows is accepted and one it forbids is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from sagas.store import Store
from sagas.web import create_app
from tests.web.conftest import Shop

# The schema is read from the app when the module is collected; the store it reads is swapped
# for the populated one before each test (the app takes its store from app.state).
APP = create_app(Store("sqlite://"))
schema = schemathesis.openapi.from_asgi("/api/openapi.json", APP)


@pytest.fixture(autouse=True)
def populated(any_shop: Shop) -> Iterator[None]:
    empty = APP.state.store
    APP.state.store = any_shop.store
    yield
    APP.state.store = empty


@schema.parametrize()
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_request_is_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text[:500])
    # Status, content type and body as the schema says; and a request the schema allows is
    # accepted, except with a generated cursor: its digest cannot match (that is its point).
    excluded = [positive_data_acceptance] if "cursor" in (case.query or {}) else []
    case.validate_response(response, excluded_checks=excluded)
