"""The dashboard in Chromium, as an operator uses it, against a real server process, a real
store and a real worker (``conftest.py``): log in, find the failed saga by filter, open it and
read its timeline; cancel and retry after reading their plans and see the worker carry them
out; fork a failed saga with an edited field after reading the plan and see the new one complete; an action on a saga that changed since its page was loaded; bad filters and a tampered
cursor; no action without a login, and a cross-site form POST refused."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from sagas import coordinator
from tests.browser.conftest import TRACE_URL, Deployment, log_in, shot


def test_find_a_failed_saga_by_filter_and_read_its_timeline(
    page: Page, deployment: Deployment
) -> None:
    log_in(page, deployment)
    failed = deployment.store.counts()["by_state"]["failed"]  # other tests may cancel one
    expect(page.locator("#counts [data-count=failed]")).to_have_text(str(failed))
    page.check("input[name=state][value=failed]")
    page.fill("input[name=name]", "browser_order")
    page.click("#filters button[type=submit]")
    rows = page.locator("#sagas tbody tr")
    expect(rows).to_have_count(failed)
    declined = deployment.ids["declined"]
    expect(page.locator("#sagas")).to_contain_text(declined)
    expect(page.locator("#sagas")).not_to_contain_text(deployment.ids["ok"])
    shot(page, "list-filtered")

    page.click(f"text={declined}")
    expect(page.locator("#saga-state")).to_have_text("failed")
    charge = page.locator(".gantt .row[data-step=charge] .bar")
    expect(charge).to_have_count(1)
    expect(charge.first).to_have_class("bar forward failed")
    attempts = page.locator("#attempts")
    expect(attempts).to_contain_text("CardDeclined: card ending 0002 declined")
    expect(attempts).to_contain_text("compensation 1: compensated")  # reserve, undone
    expect(page.locator(".flow .node.here")).to_contain_text("charge")
    expect(page.locator("#payload")).to_contain_text('"card_number": "***"')
    expect(page.locator("#data")).not_to_contain_text("4111111111111111")
    trace = page.locator("#trace-link")
    cid = deployment.store.get(declined)[0].correlation_id
    expect(trace).to_have_attribute("href", TRACE_URL.replace("{correlation_id}", cid))
    shot(page, "saga-failed")


def test_cancel_shows_the_plan_then_compensates(page: Page, deployment: Deployment) -> None:
    sid = deployment.ids["flaky"]
    log_in(page, deployment)
    listing = page.context.new_page()  # the list, left open: its counts follow the store
    listing.goto(deployment.url)
    failed = deployment.store.counts()["by_state"]["failed"]
    expect(listing.locator("#counts [data-count=failed]")).to_have_text(str(failed))
    page.goto(f"{deployment.url}sagas/{sid}")
    page.click("#action-cancel")
    expect(page.locator("#plan")).to_contain_text("will compensate reserve")
    shot(page, "preview-cancel")
    assert deployment.state(sid) == "pending"  # reading the plan changed nothing
    page.fill("textarea[name=reason]", "customer called to cancel")
    page.click("#confirm")
    expect(page.locator(".flash")).to_contain_text("cancel: saga")
    deployment.wait_state(sid, "failed")
    # No reload: the list's script re-reads /api/counts every 5 s.
    expect(listing.locator("#counts [data-count=failed]")).to_have_text(str(failed + 1))
    page.reload()
    expect(page.locator("#saga-state")).to_have_text("failed")
    expect(page.locator("#history")).to_contain_text('"by": "ana"')
    expect(page.locator("#history")).to_contain_text("customer called to cancel")
    shot(page, "saga-cancelled")


def test_retry_shows_the_plan_then_runs_the_step_again(page: Page, deployment: Deployment) -> None:
    sid = deployment.ids["parked"]
    log_in(page, deployment, f"sagas/{sid}")
    expect(page.locator(".flow .node.here")).to_contain_text("ship")
    page.click("#action-retry")
    expect(page.locator("#plan")).to_contain_text(
        "will re-run ship (attempt 2) with the same idempotency key"
    )
    shot(page, "preview-retry")
    page.fill("textarea[name=reason]", "carrier fixed the address")
    page.click("#confirm")
    deployment.wait_state(sid, "completed")
    page.reload()
    expect(page.locator("#saga-state")).to_have_text("completed")
    expect(page.locator(".gantt .row[data-step=ship] .bar.forward")).to_have_count(2)


def test_fork_a_failed_saga_with_an_edited_field_after_reading_the_plan(
    page: Page, deployment: Deployment
) -> None:
    """The card was declined: fork from the first step with the mode fixed, read the plan
    (the payload diff), confirm, land on the new saga and see the worker complete it."""
    sid = deployment.ids["declined"]
    log_in(page, deployment, f"sagas/{sid}")
    page.click("#action-fork")
    page.select_option("#from_step", "reserve")
    page.fill("#changes", '{"mode": "ok"}')
    page.click("#show-plan")
    expect(page.locator("#plan")).to_contain_text("payload mode: 'decline' -> 'ok'")
    shot(page, "preview-fork")
    assert deployment.state(sid) == "failed"  # reading the plan changed nothing
    page.fill("textarea[name=reason]", "customer replaced the card")
    page.click("#confirm")
    expect(page.locator(".flash")).to_contain_text("fork: saga")
    new = page.locator("#saga-id").inner_text()
    assert new != sid
    deployment.wait_state(new, "completed")
    page.reload()
    expect(page.locator("#saga-state")).to_have_text("completed")
    expect(page.locator("#history")).to_contain_text("customer replaced the card")
    shot(page, "saga-forked")


def test_an_action_on_a_saga_that_changed_since_is_refused(
    page: Page, deployment: Deployment
) -> None:
    sid = deployment.ids["flaky2"]
    log_in(page, deployment, f"sagas/{sid}")
    page.click("#action-cancel")
    expect(page.locator("#plan")).to_be_visible()
    before = deployment.store.get(sid)[0].lock_version
    # Meanwhile someone else re-drives the saga (its charge fails again: a new revision).
    coordinator.retry(sid, "another operator", by="bo")
    moved = lambda: deployment.store.get(sid)[0].lock_version  # noqa: E731
    assert moved() != before
    settled = moved()
    page.fill("textarea[name=reason]", "too late")
    page.click("#confirm")
    expect(page.locator("h1")).to_have_text("The saga changed")
    expect(page.locator("#error-field")).to_have_text("revision")
    shot(page, "error-changed")
    history = deployment.store.get(sid)[2]
    assert not [h for h in history if h.kind == "cancel_requested"]
    assert deployment.state(sid) == "pending" and moved() >= settled


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("state=exploded", "state"),
        ("name=x%27%3B%20DROP%20TABLE%20saga%3B--", "name"),
    ],
)
def test_bad_filters_are_a_clear_error_page(
    page: Page, deployment: Deployment, query: str, field: str
) -> None:
    before = deployment.store.counts()["total"]  # states may move meanwhile (the worker)
    log_in(page, deployment, "?" + query)
    expect(page.locator("#error-field")).to_have_text(field)
    expect(page.locator("#sagas")).to_have_count(0)
    if field == "since":
        shot(page, "error-filter")
    assert deployment.store.counts()["total"] == before  # nothing made


def test_a_tampered_cursor_is_refused(page: Page, deployment: Deployment) -> None:
    log_in(page, deployment, "?limit=2")
    href = page.get_attribute("#next-page", "href")
    assert href and "cursor=" in href
    page.goto(deployment.url + href.replace("cursor=", "cursor=x").lstrip("/"))
    expect(page.locator("#error-field")).to_have_text("cursor")


def test_no_action_without_authentication(chromium: Browser, deployment: Deployment) -> None:
    sid = deployment.ids["flaky3"]
    revision = deployment.store.get(sid)[0].lock_version
    context = chromium.new_context()
    try:
        anonymous = context.new_page()
        anonymous.goto(f"{deployment.url}sagas/{sid}/actions/cancel?revision={revision}")
        expect(anonymous.locator("input[name=password]")).to_be_visible()  # sent to log in
        r = context.request.post(
            f"{deployment.url}sagas/{sid}/actions/cancel",
            form={"revision": str(revision), "reason": "anonymous"},
        )
        assert r.status == 403
    finally:
        context.close()
    assert deployment.store.get(sid)[0].lock_version == revision


@pytest.fixture
def evil_site() -> Iterator[str]:
    """Another site (another host name and port) whose page posts a form to the dashboard."""
    target: dict[str, str] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = (
                f'<form id="f" method="post" action="{target["action"]}">'
                f'<input name="revision" value="{target["revision"]}">'
                '<input name="reason" value="csrf"><input name="csrf" value="guess"></form>'
                "<script>document.getElementById('f').submit()</script>"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/", target  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


def test_a_cross_site_post_is_refused(
    page: Page, deployment: Deployment, evil_site: tuple[str, dict[str, str]]
) -> None:
    url, target = evil_site
    sid = deployment.ids["flaky3"]
    revision = deployment.store.get(sid)[0].lock_version
    log_in(page, deployment, f"sagas/{sid}")  # the operator is logged in, in this browser
    target.update(action=f"{deployment.url}sagas/{sid}/actions/cancel", revision=str(revision))
    assert urlsplit(url).hostname != urlsplit(deployment.url).hostname
    page.goto(url)
    page.wait_for_url(f"{deployment.url}sagas/{sid}/actions/cancel")
    expect(page.locator("h1")).to_have_text("Refused")
    shot(page, "refused-cross-site")
    assert deployment.store.get(sid)[0].lock_version == revision
    assert deployment.state(sid) == "pending"
