"""The JSON API through FastAPI's test client, over stores holding real sagas (SQLite and
PostgreSQL): filters, pages, one saga, counts, the stuck list, and bad input."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sagas.clock import FakeClock
from sagas.store import Store
from sagas.web import create_app
from sagas.web.config import DashboardSettings, redact
from tests.web.conftest import Shop

ALL = {"ok", "decline", "flaky", "park", "stuck_undo", "waiting", "approved"}


@pytest.fixture
def client(any_shop: Shop) -> Iterator[TestClient]:
    with TestClient(create_app(any_shop.store)) as c:
        yield c


def shapes(shop: Shop, body: dict[str, Any]) -> set[str]:
    return {shop.shape(item["id"]) for item in body["items"]}


def test_the_list_is_every_saga_newest_first(any_shop: Shop, client: TestClient) -> None:
    r = client.get("/api/sagas")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["id"] for i in body["items"]] == list(reversed(any_shop.created))
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert first["name"] == "web_loan" and first["state"] == "completed"
    assert first["kind"] == "orchestrated" and first["created_at"].endswith("Z")


FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"state": "failed"}, {"decline"}),
    ({"state": "pending,compensating"}, {"flaky", "park", "stuck_undo", "waiting"}),
    ({"state": ["completed", "failed"]}, {"ok", "approved", "decline"}),
    ({"name": "web_loan"}, {"waiting", "approved"}),
    ({"name": "web_order", "version": 1}, {"ok", "decline", "flaky", "park", "stuck_undo"}),
    ({"version": 2}, set()),
    ({"error_type": "CardDeclined"}, {"decline", "stuck_undo"}),
    ({"error_type": "CarrierDown"}, {"flaky"}),
    ({"error_type": "PermanentError"}, {"park", "stuck_undo"}),
    ({"step": "charge"}, {"decline", "stuck_undo", "flaky"}),
    ({"step": "ship", "step_state": "parked"}, {"park"}),
    ({"step": "reserve", "step_state": "compensation_failed"}, {"stuck_undo"}),
    ({"step": "reserve", "step_state": "compensated"}, {"decline"}),
    ({"waiting": "true"}, {"waiting"}),
    ({"signal": "approval"}, {"waiting"}),
    ({"signal": "ship"}, set()),
    ({"waiting": "false", "name": "web_loan"}, {"approved"}),
    ({"parked": "true"}, {"park", "stuck_undo"}),
    ({"parked": "false", "state": "pending"}, {"flaky", "waiting"}),
    ({"since": "1h"}, ALL),
    ({"until": "1h"}, set()),
    ({"since": "2000-01-01", "until": "2100-01-01T00:00:00+02:00"}, ALL),
    ({"updated_since": "1h", "state": "failed"}, {"decline"}),
    ({"updated_until": "2000-01-01"}, set()),
    ({"since": "0001-01-01T00:00:00+05:00"}, ALL),  # before datetime's range: the beginning
    ({"until": "9999-12-31T23:59:59-05:00"}, ALL),
    ({"since": "2100-01-01", "until": "2000-01-01"}, set()),  # a window backwards: empty
    ({"since": "1990-12-31t23:59:60z"}, ALL),  # RFC 3339: lower case, a leap second
    ({"step_state": "compensation_failed"}, {"stuck_undo"}),  # any step
    ({"step_state": "parked,compensation_failed"}, {"park", "stuck_undo"}),
    ({"signal": "approval", "waiting": "false", "name": "web_loan"}, {"approved"}),
]


@pytest.mark.parametrize(("params", "expected"), FILTERS, ids=[json.dumps(f[0]) for f in FILTERS])
def test_filters(
    any_shop: Shop, client: TestClient, params: dict[str, Any], expected: set[str]
) -> None:
    r = client.get("/api/sagas", params=params)
    assert r.status_code == 200, r.text
    assert shapes(any_shop, r.json()) == expected
    counted = client.get("/api/counts", params=params).json()
    assert counted["total"] == len(expected)  # counts take the same filter


def test_correlation_id_filter(any_shop: Shop, client: TestClient) -> None:
    one = client.get("/api/sagas/" + any_shop.ids["park"]).json()
    r = client.get("/api/sagas", params={"correlation_id": one["correlation_id"]})
    assert shapes(any_shop, r.json()) == {"park"}


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
def test_pages_by_cursor_cover_every_saga_once(
    any_shop: Shop, client: TestClient, limit: int
) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/sagas", params=params).json()
        assert len(body["items"]) <= limit
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(any_shop.created))


def test_a_filtered_page_continues_with_the_same_filter(any_shop: Shop, client: TestClient) -> None:
    params = {"name": "web_order", "limit": 2}
    first = client.get("/api/sagas", params=params).json()
    second = client.get("/api/sagas", params={**params, "cursor": first["next_cursor"]}).json()
    ids = [i["id"] for i in first["items"] + second["items"]]
    orders = [i for i in reversed(any_shop.created) if "loan" not in i]
    assert ids == orders[:4]


def test_one_saga_with_steps_attempts_and_history(any_shop: Shop, client: TestClient) -> None:
    flaky = client.get("/api/sagas/" + any_shop.ids["flaky"]).json()
    assert flaky["payload"] == {"order_id": any_shop.ids["flaky"], "mode": "flaky"}
    steps = {s["name"]: s for s in flaky["steps"]}
    assert [s["name"] for s in flaky["steps"]] == ["reserve", "charge", "ship"]
    assert steps["reserve"]["state"] == "succeeded"
    assert steps["reserve"]["result"] == {"reservation": f"r-{any_shop.ids['flaky']}"}
    charge = steps["charge"]
    assert charge["state"] == "pending" and charge["error"]["type"] == "CarrierDown"
    [attempt] = charge["attempts"]
    assert attempt["action"] == "forward" and attempt["outcome"] == "failed"
    assert attempt["error"] == {
        "type": "CarrierDown",
        "message": "gateway timeout",
        "retryable": True,
    }
    assert attempt["started_at"] <= attempt["ended_at"]
    kinds = [h["kind"] for h in flaky["history"]]
    assert kinds[0] == "saga_started" and kinds[-1] == "retry_scheduled"

    declined = client.get("/api/sagas/" + any_shop.ids["decline"]).json()
    assert declined["failure"]["type"] == "CardDeclined"
    reserve = next(s for s in declined["steps"] if s["name"] == "reserve")
    assert [(a["action"], a["outcome"]) for a in reserve["attempts"]] == [
        ("forward", "succeeded"),
        ("compensate", "compensated"),
    ]

    waiting = client.get("/api/sagas/" + any_shop.ids["waiting"]).json()
    wait = next(s for s in waiting["steps"] if s["name"] == "approval")
    assert wait["state"] == "running"
    assert [(a["outcome"], a["waited_for_signal"]) for a in wait["attempts"]] == [("running", True)]


def test_counts_store_wide(client: TestClient) -> None:
    body = client.get("/api/counts").json()
    assert body == {
        "total": 7,
        "by_state": {"started": 0, "pending": 3, "compensating": 1, "completed": 2, "failed": 1},
        "parked": 2,
    }


def test_stuck_lists_the_dead_lettered_with_how_long(any_shop: Shop, client: TestClient) -> None:
    body = client.get("/api/stuck", params={"older_than": 0}).json()
    found = {any_shop.shape(i["saga"]["id"]): i for i in body["items"]}
    # Everything else has a timer ahead of it (a backoff, a wait's deadline) or is finished.
    assert set(found) == {"park", "stuck_undo"}
    assert {i["stuck_class"] for i in found.values()} == {"dead_lettered"}
    assert found["stuck_undo"]["reason"] == "compensation exhausted (dead-lettered)"
    assert found["park"]["reason"] == "step parked for an operator"
    assert all(i["stuck_for_seconds"] >= 0 for i in found.values())
    only = client.get("/api/stuck", params={"older_than": 0, "class": "no_progress"}).json()
    assert only["items"] == []


def test_stuck_timers_not_fired_are_waiting_past_due(sqlite_shop: Shop) -> None:
    """The operator's clock three hours on, with no sweeper having run: the retry due after an
    hour is past due by two, the two-day wait is not, the parked ones stay dead-lettered."""
    assert sqlite_shop.clock is not None
    read_at = sqlite_shop.clock.now() + timedelta(hours=3)
    later = Store(sqlite_shop.url, clock=FakeClock(read_at))
    try:
        with TestClient(create_app(later)) as c:
            body = c.get("/api/stuck", params={"older_than": 60}).json()
    finally:
        later.dispose()
    found = {sqlite_shop.shape(i["saga"]["id"]): i for i in body["items"]}
    assert {k: v["stuck_class"] for k, v in found.items()} == {
        "flaky": "waiting_past_due",
        "park": "dead_lettered",
        "stuck_undo": "dead_lettered",
    }
    due = sqlite_shop.store.get(sqlite_shop.ids["flaky"])[0].wake_at  # the retry, ~1 h in
    assert due is not None and found["flaky"]["since"] == due.isoformat().replace("+00:00", "Z")
    assert found["flaky"]["stuck_for_seconds"] == round((read_at - due).total_seconds(), 3)
    assert [sqlite_shop.shape(i["saga"]["id"]) for i in body["items"]][-1] == "flaky"


def _cursor(client: TestClient) -> str:
    cursor: str = client.get("/api/sagas", params={"limit": 1}).json()["next_cursor"]
    return cursor


def _flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]


def _recomputed_layout() -> str:
    """A cursor whose body is well-formed base64 JSON of another layout, with a digest that
    does not match (what editing the position by hand gives)."""
    body = base64.urlsafe_b64encode(b'{"v":2,"c":"x","i":"y"}').rstrip(b"=").decode()
    return f"{body}.AAAAAAAAAAAAAAAAAAAAAA"


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("bad date", {"since": "yesterday"}, "since"),
    ("impossible date", {"until": "2026-02-30"}, "until"),
    ("age too large", {"updated_since": "99999999d"}, "updated_since"),
    ("unknown state", {"state": "exploded"}, "state"),
    ("unknown state among good", {"state": "failed,exploded"}, "state"),
    ("unknown step state", {"step": "charge", "step_state": "melted"}, "step_state"),
    ("sql in name", {"name": "x'; DROP TABLE saga; --"}, "name"),
    ("sql in error type", {"error_type": "A' OR '1'='1"}, "error_type"),
    ("sql in correlation id", {"correlation_id": "1; DELETE FROM saga"}, "correlation_id"),
    ("sql in step", {"step": "charge' --"}, "step"),
    ("sql in signal", {"signal": "approval'); DROP TABLE saga_step;"}, "signal"),
    ("version zero", {"version": 0}, "version"),
    ("version text", {"version": "one"}, "version"),
    ("waiting not a bool", {"waiting": "maybe"}, "waiting"),
    ("limit zero", {"limit": 0}, "limit"),
    ("limit huge", {"limit": 100000}, "limit"),
    ("unknown parameter", {"sort": "name"}, "sort"),
    ("cursor garbage", {"cursor": "not-a-cursor"}, "cursor"),
    ("cursor other layout", {"cursor": _recomputed_layout()}, "cursor"),
]


@pytest.mark.parametrize(("params", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(
    any_shop: Shop, client: TestClient, params: dict[str, Any], field: str
) -> None:
    before = client.get("/api/counts").json()
    r = client.get("/api/sagas", params=params)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    assert field in error["message"] and error["type"] in ("FilterInvalid", "CursorInvalid")
    assert client.get("/api/counts").json() == before == {**before, "total": 7}


@pytest.mark.parametrize("where", ["body", "digest", "truncated", "extended"])
def test_a_tampered_cursor_is_refused(client: TestClient, where: str) -> None:
    good = _cursor(client)
    body, digest = good.split(".")
    tampered = {
        "body": _flip(body, 12) + "." + digest,
        "digest": body + "." + _flip(digest, 3),
        "truncated": good[:-4],
        "extended": good + "AA",
    }[where]
    r = client.get("/api/sagas", params={"cursor": tampered})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "type": "CursorInvalid",
        "field": "cursor",
        "message": r.json()["error"]["message"],
    }
    assert "start again without it" in r.json()["error"]["message"]
    assert client.get("/api/sagas", params={"cursor": good}).status_code == 200


def test_one_saga_bad_id_unknown_id(client: TestClient) -> None:
    r = client.get("/api/sagas/x';DROP TABLE saga;--")
    assert r.status_code == 400 and r.json()["error"]["field"] == "saga_id"
    missing = client.get("/api/sagas/no-such-saga")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "type": "SagaNotFound",
        "message": "no saga with id 'no-such-saga'",
        "field": None,
    }


def test_read_only(client: TestClient, any_shop: Shop) -> None:
    for method in ("post", "put", "patch", "delete"):
        r = getattr(client, method)("/api/sagas/" + any_shop.ids["park"])
        assert r.status_code == 405, (method, r.status_code)
    assert client.get("/api/counts").json()["total"] == 7


def test_mounted_in_an_existing_app(any_shop: Shop) -> None:
    host = FastAPI()

    @host.get("/")
    def home() -> dict[str, str]:
        return {"app": "shop"}

    host.mount("/ops/sagas", create_app(any_shop.store))
    with TestClient(host) as c:
        assert c.get("/").json() == {"app": "shop"}
        assert len(c.get("/ops/sagas/api/sagas").json()["items"]) == 7
        schema = c.get("/ops/sagas/api/openapi.json").json()
        assert {"/api/sagas", "/api/sagas/{saga_id}", "/api/counts", "/api/stuck"} <= set(
            schema["paths"]
        )


def test_an_unreachable_store_is_a_503() -> None:
    store = Store("postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing")
    with TestClient(create_app(store)) as c:
        r = c.get("/api/sagas")
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "StoreUnavailable" and "secret" not in r.text


def test_one_saga_is_redacted_as_on_its_page(any_shop: Shop) -> None:
    """SAGAS_DASHBOARD_REDACT holds for the API too: the setting is not bypassed by /api."""
    ok, approved = any_shop.ids["ok"], any_shop.ids["approved"]
    with TestClient(create_app(any_shop.store, dashboard=DashboardSettings())) as plain:
        seen = {sid: plain.get(f"/api/sagas/{sid}").json() for sid in (ok, approved)}
    assert seen[ok]["payload"]["order_id"] != "***"  # shown when nothing is redacted
    hidden = DashboardSettings(redact=["order_id", "reservation", "by", "paid"])
    with TestClient(create_app(any_shop.store, dashboard=hidden)) as c:
        r = c.get(f"/api/sagas/{ok}")
        loan = c.get(f"/api/sagas/{approved}")
    assert r.status_code == 200 and loan.status_code == 200, (r.text, loan.text)
    body = r.json()
    assert body["payload"] == {**seen[ok]["payload"], "order_id": "***"}
    assert body["steps"][0]["result"] == {"reservation": "***"}
    assert seen[ok]["steps"][0]["result"]["reservation"] in json.dumps(seen[ok])
    assert seen[ok]["steps"][0]["result"]["reservation"] not in r.text
    assert seen[ok]["payload"]["order_id"] not in json.dumps(body["payload"])
    assert "ops@example.com" in json.dumps(seen[approved])  # the approval's data, unredacted
    assert "ops@example.com" not in loan.text  # its result and its history detail alike
    # Everything else is as it was.
    assert body["steps"][1] == seen[ok]["steps"][1] and body["revision"] == seen[ok]["revision"]


def test_redaction_reaches_dotted_keys_of_a_fork_diff() -> None:
    diff = {"changes": {"customer.card_number": {"old": "4000", "new": "4242"}, "city": {}}}
    assert redact(diff, frozenset({"card_number"})) == {
        "changes": {"customer.card_number": "***", "city": {}}
    }
