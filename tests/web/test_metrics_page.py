"""The app's Prometheus page (``<mount>/metrics``): the store-wide gauges read from the shop's
store, beside this process's own metrics, in Prometheus' text format."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sagas.web import create_app
from tests.web.conftest import Shop


def test_the_metrics_page_shows_the_store_gauges(sqlite_shop: Shop) -> None:
    with TestClient(create_app(sqlite_shop.store)) as client:
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    in_store = {
        (dict(labels)["saga"], dict(labels)["state"]): v
        for (name, labels), v in samples.items()
        if name == "sagas_in_store"
    }
    stats = sqlite_shop.store.stats(unsent_grace=10.0)
    assert in_store and in_store == {key: float(n) for key, n in stats["by_state"].items()}
    assert ("sagas_timers_due", ()) in samples
