"""The dashboard's pages through FastAPI's test client: over the shared stores of real sagas
(reading: list, filters, pages, the saga page, the stuck page, bad input) and over a private
testing-kit runtime (acting: login, CSRF, cross-site POSTs, plans, stale revisions, who and
why in the history). The same flows in a real browser against a real server are
``tests/browser``."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from sagas import operations
from sagas.store import Store
from sagas.testing import LocalRuntime, local_runtime
from sagas.web import create_app
from sagas.web.config import DashboardSettings, hash_password, verify_password
from sagas.web.wsgi import create_wsgi_app
from tests.web import shop
from tests.web.conftest import Shop

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD, n=2**10)  # a cheap cost: the format and check are the same
OPERATOR = DashboardSettings(user="ana", password_hash=HASH, redact=["order_id"])


def token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def log_in(client: TestClient, password: str = PASSWORD, user: str = "ana") -> Any:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"csrf": token(page.text), "username": user, "password": password, "next": "/"},
        follow_redirects=False,
    )


# -- reading ----------------------------------------------------------------------------------


@pytest.fixture
def reader(sqlite_shop: Shop) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_shop.store, dashboard=DashboardSettings())) as c:
        yield c


def test_the_list_shows_counts_and_filters(sqlite_shop: Shop, reader: TestClient) -> None:
    page = reader.get("/", params={"state": "failed"})
    assert page.status_code == 200, page.text
    assert sqlite_shop.ids["decline"] in page.text
    assert sqlite_shop.ids["ok"] not in page.text
    assert 'data-count="failed">1<' in page.text and 'data-count="total">7<' in page.text


def test_pages_follow_the_cursor(sqlite_shop: Shop, reader: TestClient) -> None:
    seen: list[str] = []
    url = "/?limit=3"
    while url:
        page = reader.get(url)
        assert page.status_code == 200
        seen += re.findall(r'href="http://testserver/sagas/([^"]+)"', page.text)
        nxt = re.search(r'id="next-page" href="([^"]+)"', page.text)
        url = nxt.group(1).replace("&amp;", "&") if nxt else ""
    assert seen == list(reversed(sqlite_shop.created))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-13-45"}, "since"),
        ({"state": "exploded"}, "state"),
        ({"name": "x'; DROP TABLE saga; --"}, "name"),
        ({"error_type": "1 OR 1=1"}, "error_type"),
        ({"cursor": "eyJ2IjoxfQ.AAAA"}, "cursor"),
        ({"limit": "0"}, "limit"),
    ],
)
def test_bad_filters_are_an_error_page(
    sqlite_shop: Shop, reader: TestClient, query: dict[str, str], field: str
) -> None:
    page = reader.get("/", params=query)
    assert page.status_code == 400
    assert f'id="error-field">{field}<' in page.text
    assert 'id="sagas"' not in page.text  # no result table: no query ran
    assert sqlite_shop.store.get(sqlite_shop.ids["ok"])[0].state.value == "completed"


def test_a_tampered_cursor_is_refused(sqlite_shop: Shop, reader: TestClient) -> None:
    first = reader.get("/?limit=2").text
    cursor = re.search(r"cursor=([^\"&]+)", first)
    assert cursor
    real = cursor.group(1)
    forged = real[:-2] + ("AA" if not real.endswith("AA") else "BB")
    page = reader.get("/", params={"limit": "2", "cursor": forged})
    assert page.status_code == 400 and "altered" in page.text


def test_the_saga_page_shows_timeline_diagram_and_history(
    sqlite_shop: Shop, reader: TestClient
) -> None:
    page = reader.get(f"/sagas/{sqlite_shop.ids['decline']}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'data-step="charge"' in html and "CardDeclined: card ending 0002 declined" in html
    assert "compensation 1: compensated" in html  # reserve was undone
    assert "On failure, undone newest first: charge → reserve" in html
    assert "flowchart TD" in html  # the Mermaid text, pre-formatted
    assert "compensation_started" in html
    assert "Read-only: no operator is configured" in html and 'id="action-' not in html
    flaky = reader.get(f"/sagas/{sqlite_shop.ids['flaky']}").text
    assert "attempt 1: failed" in flaky and "the saga is here" in flaky
    waiting = reader.get(f"/sagas/{sqlite_shop.ids['waiting']}").text
    assert 'class="bar signal running"' in waiting  # the wait for the approval, still open
    assert "waits up to 2 d for the signal approval" in waiting


def test_unknown_saga_and_bad_ids(reader: TestClient) -> None:
    assert reader.get("/sagas/no-such-saga").status_code == 404
    bad = reader.get("/sagas/bad%20id%3B")
    assert bad.status_code == 400 and 'id="error-field">saga_id<' in bad.text


def test_the_stuck_page_groups_by_class(sqlite_shop: Shop, reader: TestClient) -> None:
    page = reader.get("/stuck", params={"older_than": "0"})
    assert page.status_code == 200
    dead = page.text.split('id="stuck-dead_lettered"')[1].split("</section>")[0]
    assert sqlite_shop.ids["park"] in dead and sqlite_shop.ids["stuck_undo"] in dead
    assert reader.get("/stuck", params={"class": "nope"}).status_code == 400
    assert reader.get("/stuck", params={"older_than": "-1"}).status_code == 400


def test_reads_need_a_login_once_a_user_is_configured(sqlite_shop: Shop) -> None:
    with TestClient(create_app(sqlite_shop.store, dashboard=OPERATOR)) as c:
        first = c.get(f"/sagas/{sqlite_shop.ids['ok']}", follow_redirects=False)
        assert first.status_code == 303 and "/login?next=" in first.headers["location"]
        api = c.get("/api/sagas")
        assert api.status_code == 401 and api.json()["error"]["type"] == "LoginRequired"
        assert log_in(c, "wrong").status_code == 401
        assert log_in(c).status_code == 303
        assert len(c.get("/api/sagas").json()["items"]) == 7  # the session's login serves both
        page = c.get(f"/sagas/{sqlite_shop.ids['ok']}")
        assert page.status_code == 200 and 'id="user">ana<' in page.text
        assert "lite-ok" not in page.text.split('id="payload"')[1].split("</pre>")[0]
        assert '"order_id": "***"' in page.text  # redacted


def test_the_trace_link(sqlite_shop: Shop) -> None:
    settings = DashboardSettings(trace_url="https://traces.example/t/{correlation_id}")
    with TestClient(create_app(sqlite_shop.store, dashboard=settings)) as c:
        page = c.get(f"/sagas/{sqlite_shop.ids['ok']}").text
    assert 'id="trace-link" href="https://traces.example/t/' in page


def test_password_hash_round_trip() -> None:
    assert verify_password(PASSWORD, HASH)
    assert not verify_password(PASSWORD + "!", HASH)
    assert not verify_password(PASSWORD, "plain-text")
    with pytest.raises(ValueError, match="password_hash"):
        DashboardSettings(user="ana", password_hash="plain-text")


class Ticks:
    """The login throttle's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttled_app(store: Store) -> tuple[FastAPI, Ticks]:
    app = create_app(store, dashboard=OPERATOR)
    ticks = Ticks()
    app.state.guard.throttle.clock = ticks
    return app, ticks


def test_failed_logins_from_one_client_are_throttled(sqlite_shop: Shop) -> None:
    app, ticks = throttled_app(sqlite_shop.store)
    with TestClient(app) as c:
        for _ in range(4):
            assert log_in(c, "wrong").status_code == 401
        assert log_in(c).status_code == 303  # a success clears the count...
        c.post("/logout", data={"csrf": token(c.get("/").text)})
        for i in range(5):  # ...so five more fail as failures (nine in all), not refusals
            assert log_in(c, "wrong", user=f"guess{i}").status_code == 401, i
        ticks.now += 60
        refused = log_in(c)  # the right password, but from a client that keeps guessing
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) == 240  # the first failure leaves at 300 s
        assert 'id="throttled"' in refused.text
        assert c.get("/api/sagas").status_code == 401  # not logged in
        ticks.now += 240
        assert log_in(c).status_code == 303  # the window passed: allowed again
        assert c.get("/api/sagas").status_code == 200


def test_failed_logins_for_one_user_name_are_throttled_from_any_client(sqlite_shop: Shop) -> None:
    app, ticks = throttled_app(sqlite_shop.store)
    for i in range(5):
        with TestClient(app, client=(f"10.0.0.{i}", 4000)) as c:
            assert log_in(c, "wrong").status_code == 401
    with TestClient(app, client=("10.0.0.99", 4000)) as c:
        refused = log_in(c, user=" ANA")  # the same name, however spelled
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "300"
        assert log_in(c, "wrong", user="bo").status_code == 401  # another name: checked
        ticks.now += 300
        assert log_in(c).status_code == 303


# -- acting -----------------------------------------------------------------------------------


@pytest.fixture
def kit() -> Iterator[LocalRuntime]:
    with local_runtime(shop.app) as rt:
        yield rt


def operator_app(rt: LocalRuntime, store: Store | None = None) -> FastAPI:
    return create_app(store or rt.store, dashboard=OPERATOR, runtime=rt.runtime)


def assert_parked(kit: LocalRuntime, sid: str) -> None:
    assert kit.store.load(sid).record.parked  # type: ignore[union-attr]


def preview_then_post(
    c: TestClient,
    sid: str,
    name: str,
    revision: int,
    reason: str,
    *,
    params: dict[str, str] | None = None,
    prefix: str = "",
    headers: dict[str, str] | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[Any, Any]:
    """What an operator does on the pages: read action ``name``'s plan for the revision seen,
    then confirm it with the plan page's token and a reason (``meanwhile`` runs in between).
    Returns the plan page and the POST's answer (not followed)."""
    url = f"{prefix}/sagas/{sid}/actions/{name}"
    plan = c.get(url, params={"revision": revision, **(params or {})}, headers=headers)
    if meanwhile is not None:
        meanwhile()
    done = c.post(
        url,
        data={"csrf": token(plan.text), "revision": revision, "reason": reason, **(params or {})},
        headers=headers,
        follow_redirects=False,
    )
    return plan, done


def test_cancel_shows_its_plan_then_compensates(kit: LocalRuntime) -> None:
    sid = kit.start(shop.order, {"order_id": "c-1", "mode": "park"}, saga_id="c-1")
    revision = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        plan, done = preview_then_post(
            c,
            sid,
            "cancel",
            revision,
            "customer called",
            meanwhile=lambda: assert_parked(kit, sid),  # the preview changed nothing
        )
        assert plan.status_code == 200, plan.text
        assert "will compensate charge, then reserve" in plan.text
        assert done.status_code == 303, done.text
    kit.run()
    record, _, history = kit.store.get(sid)
    assert record.state.value == "failed"
    asked = [h for h in history if h.kind == "cancel_requested"]
    assert asked and asked[0].detail == {"by": "ana", "reason": "customer called"}
    undone = [h.step for h in history if h.kind == "step_compensated"]
    assert undone == ["charge", "reserve"]  # as the plan said


def test_retry_reruns_the_parked_step(kit: LocalRuntime) -> None:
    sid = kit.start(shop.order, {"order_id": "r-1", "mode": "park"}, saga_id="r-1")
    revision = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        plan, done = preview_then_post(c, sid, "retry", revision, "carrier fixed")
        assert "will re-run ship (attempt 2) with the same idempotency key" in plan.text
        assert done.status_code == 303, done.text
    _, _, history = kit.store.get(sid)
    retried = [h for h in history if h.kind == "operator_retry"]
    assert retried and retried[0].detail and retried[0].detail["by"] == "ana"


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_retry_and_cancel_show_the_plan_operations_preview_makes(
    kit: LocalRuntime, action: str
) -> None:
    """One source of truth: the page lists exactly the lines the CLI and Python API print."""
    sid = kit.start(shop.order, {"order_id": f"p-{action}", "mode": "park"}, saga_id=f"p-{action}")
    revision = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
    expected = operations.preview(sid, action, reason="x", by="ana", rt=kit.runtime)
    assert expected.refused is None and len(expected.lines) > 1
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        page = c.get(f"/sagas/{sid}/actions/{action}", params={"revision": revision})
    assert page.status_code == 200, page.text
    shown = re.findall(r"<li>(.*?)</li>", page.text.split('id="plan"')[1].split("</ul>")[0])
    assert [html.unescape(line) for line in shown] == list(expected.lines)


def test_an_action_on_a_saga_that_changed_is_refused(kit: LocalRuntime) -> None:
    sid = kit.start(shop.order, {"order_id": "s-1", "mode": "flaky"}, saga_id="s-1")
    seen = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        # The retry fires: the saga moves on while the operator reads the plan.
        _, r = preview_then_post(
            c, sid, "cancel", seen, "too late", meanwhile=lambda: kit.advance(3601)
        )
        moved = kit.store.get(sid)
        assert moved[0].lock_version != seen
    assert r.status_code == 409 and "changed since revision" in r.text
    after = kit.store.get(sid)
    assert after[0].lock_version == moved[0].lock_version  # nothing written
    assert not [h for h in after[2] if h.kind == "cancel_requested"]


def test_no_action_without_authentication(kit: LocalRuntime) -> None:
    sid = kit.start(shop.order, {"order_id": "a-1", "mode": "flaky"}, saga_id="a-1")
    rev = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
    before = kit.store.get(sid)[0].lock_version
    with TestClient(operator_app(kit)) as c:
        page = c.get("/login")  # a session with a token, but no login
        r = c.post(
            f"/sagas/{sid}/actions/cancel",
            data={"csrf": token(page.text), "revision": rev, "reason": "x"},
        )
        assert r.status_code == 403
        preview = c.get(f"/sagas/{sid}/actions/cancel?revision={rev}", follow_redirects=False)
        assert preview.status_code == 303 and "/login" in preview.headers["location"]
    with TestClient(create_app(kit.store, dashboard=DashboardSettings(), runtime=kit.runtime)) as c:
        r = c.post(f"/sagas/{sid}/actions/cancel", data={"revision": rev, "reason": "x"})
        assert r.status_code == 403 and "no operator is configured" in r.text
    assert kit.store.get(sid)[0].lock_version == before


def test_cross_site_and_tokenless_posts_are_refused(kit: LocalRuntime) -> None:
    sid = kit.start(shop.order, {"order_id": "x-1", "mode": "flaky"}, saga_id="x-1")
    rev = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        good = token(c.get(f"/sagas/{sid}").text)
        form = {"csrf": good, "revision": str(rev), "reason": "x"}
        for headers, data in [
            ({"Origin": "https://evil.example"}, form),
            ({"Sec-Fetch-Site": "cross-site"}, form),
            ({}, {**form, "csrf": "forged"}),
            ({}, {k: v for k, v in form.items() if k != "csrf"}),
        ]:
            r = c.post(f"/sagas/{sid}/actions/cancel", data=data, headers=headers)
            assert r.status_code == 403, (headers, r.text)
    assert kit.store.get(sid)[0].lock_version == rev


def test_bad_action_input(kit: LocalRuntime) -> None:
    sid = kit.start(shop.order, {"order_id": "b-1", "mode": "ok"}, saga_id="b-1")
    rev = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        csrf = token(c.get(f"/sagas/{sid}").text)
        refused = c.get(f"/sagas/{sid}/actions/cancel", params={"revision": rev})
        assert 'id="plan-refused"' in refused.text and "completed" in refused.text
        cases = [
            ("cancel", {"revision": "abc", "reason": "x"}, 400, "revision"),
            ("cancel", {"revision": str(rev), "reason": " "}, 400, "reason"),
            ("explode", {"revision": str(rev), "reason": "x"}, 400, "action"),
            ("cancel", {"revision": str(rev), "reason": "x"}, 409, None),
        ]
        for name, data, status, field in cases:
            r = c.post(f"/sagas/{sid}/actions/{name}", data={**data, "csrf": csrf})
            assert r.status_code == status, (name, data, r.text)
            if field:
                assert f'id="error-field">{field}<' in r.text
    assert kit.store.get(sid)[0].lock_version == rev


# -- mounted ----------------------------------------------------------------------------------


def test_mounted_in_an_asgi_app_with_the_hosts_login(kit: LocalRuntime) -> None:
    """The host app says who is logged in (here a header its own auth would set); the
    dashboard's links, redirects and forms stay under its mount point."""
    sid = kit.start(shop.order, {"order_id": "m-1", "mode": "park"}, saga_id="m-1")
    rev = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]

    def host_user(request: Any) -> str | None:
        return request.headers.get("x-host-user")

    host = FastAPI()
    dash = create_app(
        kit.store, dashboard=DashboardSettings(), runtime=kit.runtime, authenticate=host_user
    )
    host.mount("/ops/sagas", dash)
    with TestClient(host) as c:
        assert c.get("/ops/sagas/", follow_redirects=False).status_code == 303  # no host login
        as_bo = {"x-host-user": "bo"}
        page = c.get(f"/ops/sagas/sagas/{sid}", headers=as_bo)
        assert page.status_code == 200 and 'id="user">bo<' in page.text
        assert f'action="http://testserver/ops/sagas/sagas/{sid}/actions/cancel"' in page.text
        assert "/ops/sagas/static/dashboard.css" in page.text
        assert c.get("/ops/sagas/static/dashboard.css").status_code == 200
        plan, done = preview_then_post(
            c, sid, "cancel", rev, "duplicate order", prefix="/ops/sagas", headers=as_bo
        )
        assert "will compensate charge, then reserve" in plan.text
        assert done.status_code == 303
        assert done.headers["location"] == f"http://testserver/ops/sagas/sagas/{sid}"
        assert c.get("/ops/sagas/api/counts").status_code == 401  # the host's login guards it
        counts = c.get("/ops/sagas/api/counts", headers=as_bo).json()
        assert counts["total"] == 1  # the JSON API beside the pages
    asked = [h for h in kit.store.get(sid)[2] if h.kind == "cancel_requested"]
    assert asked[0].detail == {"by": "bo", "reason": "duplicate order"}


def test_mounted_in_a_wsgi_app(sqlite_shop: Shop) -> None:
    flask_app = Flask("host")

    @flask_app.get("/")
    def home() -> str:
        return "shop"

    wsgi = create_wsgi_app(store=sqlite_shop.store, dashboard=DashboardSettings())
    flask_app.wsgi_app = DispatcherMiddleware(flask_app.wsgi_app, {"/ops/sagas": wsgi})  # type: ignore[method-assign]
    client = flask_app.test_client()
    assert client.get("/").text == "shop"
    listing = client.get("/ops/sagas/?state=failed")
    assert listing.status_code == 200
    assert f"/ops/sagas/sagas/{sqlite_shop.ids['decline']}" in listing.text
    assert sqlite_shop.ids["ok"] not in listing.text
    page = client.get(f"/ops/sagas/sagas/{sqlite_shop.ids['decline']}")
    assert page.status_code == 200 and "CardDeclined" in page.text
    assert client.get("/ops/sagas/?since=nope").status_code == 400


# -- from a shell -----------------------------------------------------------------------------


def _saga(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).parent / "saga"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAGAS_DASHBOARD_")}
    return subprocess.run(
        [str(command), *args],
        input=stdin,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_saga_dashboard_hash_password_prints_a_hash_that_logs_in() -> None:
    done = _saga("dashboard", "--hash-password", stdin="s3cret pass\ns3cret pass\n")
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip().splitlines()[-1]
    assert printed.startswith("scrypt$") and "s3cret" not in printed
    assert verify_password("s3cret pass", printed)
    assert DashboardSettings(user="ops", password_hash=printed).checked().user == "ops"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SAGAS_DASHBOARD_USER": "ops"}, "SAGAS_DASHBOARD_USER and SAGAS_DASHBOARD_PASSWORD_HASH"),
        (
            {"SAGAS_DASHBOARD_USER": "ops", "SAGAS_DASHBOARD_PASSWORD_HASH": "hunter2"},
            "SAGAS_DASHBOARD_PASSWORD_HASH",
        ),
        ({"SAGAS_DASHBOARD_TRACE_URL": "https://t.example/"}, "SAGAS_DASHBOARD_TRACE_URL"),
    ],
)
def test_a_misconfigured_dashboard_is_one_error_line(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    done = _saga(
        "dashboard", "--port", "0", SAGAS_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}", **env
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and named in done.stderr, done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


def test_pause_resume_and_rerun_plug_in_by_name(kit: LocalRuntime) -> None:
    """The operator recovery actions (sagas.operations) on the same pages, login and checks."""
    sid = kit.start(shop.order, {"order_id": "p-1", "mode": "flaky"}, saga_id="p-1")
    failed = kit.start(shop.order, {"order_id": "p-2", "mode": "decline"}, saga_id="p-2")
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        page = c.get(f"/sagas/{sid}").text
        assert 'id="action-pause"' in page and 'id="action-rerun"' not in page
        for name, why in (("pause", "looking into the gateway"), ("resume", "gateway is back")):
            rev = kit.store.load(sid).record.lock_version  # type: ignore[union-attr]
            plan, done = preview_then_post(c, sid, name, rev, why)
            assert plan.status_code == 200 and 'id="plan"' in plan.text, plan.text
            assert done.status_code == 303, done.text
        assert 'id="action-rerun"' in c.get(f"/sagas/{failed}").text
        rev = kit.store.load(failed).record.lock_version  # type: ignore[union-attr]
        plan = c.get(f"/sagas/{failed}/actions/rerun", params={"revision": rev})
        # Its reserve step was compensated: ops' rule refuses the rerun and says to fork.
        refused = plan.text.split('id="plan-refused">')[1].split("</p>")[0]
        assert "was compensated" in refused and "fork the saga" in refused
        assert 'id="confirm"' not in plan.text
    kinds = {h.kind: h.detail for h in kit.store.get(sid)[2]}
    assert kinds["saga_paused"] == {"by": "ana", "reason": "looking into the gateway"}
    assert kinds["saga_resumed"]["by"] == "ana"  # type: ignore[index]
    assert kit.store.get(failed)[0].state.value == "failed"  # previewed only


def test_fork_edits_the_payload_reads_the_plan_and_lands_on_the_new_saga(
    kit: LocalRuntime,
) -> None:
    """The card was declined; the operator forks from the first step with the payload fixed,
    reads the plan (what is reused, the payload diff), confirms, and the new saga completes.
    A payload that is not JSON, or fails the model, is an error page naming the field, and no
    saga is made."""
    failed = kit.start(shop.order, {"order_id": "f-1", "mode": "decline"}, saga_id="f-1")
    assert kit.store.get(failed)[0].state.value == "failed"
    rev = kit.store.load(failed).record.lock_version  # type: ignore[union-attr]
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        assert 'id="action-fork"' in c.get(f"/sagas/{failed}").text
        form = c.get(f"/sagas/{failed}/actions/fork", params={"revision": rev})
        assert form.status_code == 200 and 'id="edit"' in form.text
        assert 'id="confirm"' not in form.text
        edited = '{"mode": "ok"}'
        for bad, field in (("{not json", "changes"), ('{"order_id": ["x"]}', "order_id")):
            page = c.get(
                f"/sagas/{failed}/actions/fork",
                params={"revision": rev, "from_step": "reserve", "changes": bad},
            )
            assert page.status_code == 400 and field in page.text, page.text
        plan, done = preview_then_post(
            c,
            failed,
            "fork",
            rev,
            "card replaced (ticket 12)",
            params={"from_step": "reserve", "changes": edited},
        )
        assert plan.status_code == 200 and 'id="plan"' in plan.text, plan.text
        assert "payload mode: &#39;decline&#39; -&gt; &#39;ok&#39;" in plan.text, plan.text
        assert done.status_code == 303, done.text
        new = done.headers["location"].rsplit("/", 1)[-1]
        assert new != failed
    kit.run()
    record, _, history = kit.store.get(new)
    assert record.state.value == "completed" and record.forked_from == failed
    assert record.payload == {**kit.store.get(failed)[0].payload, "mode": "ok"}
    forked = [h for h in kit.store.get(failed)[2] if h.kind.startswith("fork")]
    assert forked and forked[-1].detail["by"] == "ana"  # type: ignore[index]
    assert [r.id for r in kit.store.list(limit=10)].count(new) == 1  # the bad ones made none


def test_the_fork_plan_hides_the_old_and_new_values_of_redacted_fields(kit: LocalRuntime) -> None:
    """``order_id`` is redacted: the diff line names the field but shows neither value, while
    an unredacted field's change reads as usual."""
    failed = kit.start(shop.order, {"order_id": "secret-1", "mode": "decline"}, saga_id="f-r")
    rev = kit.store.load(failed).record.lock_version  # type: ignore[union-attr]
    with TestClient(operator_app(kit)) as c:
        log_in(c)
        plan = c.get(
            f"/sagas/{failed}/actions/fork",
            params={
                "revision": rev,
                "from_step": "reserve",
                "changes": '{"order_id": "secret-2", "mode": "ok"}',
            },
        )
    assert plan.status_code == 200 and 'id="plan"' in plan.text, plan.text
    assert "payload order_id: *** -&gt; ***" in plan.text, plan.text
    assert "secret-1" not in plan.text  # the original's value: nowhere on the page
    # The new value is only in the operator's own form fields (what they typed, sent back on
    # confirm), not in the plan they read.
    listed = plan.text.split('id="plan"', 1)[1].split("</ul>", 1)[0]
    assert "secret-2" not in listed
    assert "payload mode: &#39;decline&#39; -&gt; &#39;ok&#39;" in plan.text
