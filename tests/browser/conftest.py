"""A real deployment for the browser: a scratch PostgreSQL store, Redis under a key prefix of
this run, one ``celery worker`` process running the sagas of ``tests.browser.shop``, and the
dashboard as its own process (``saga dashboard --app tests.browser.worker_app:app``, uvicorn on
127.0.0.1) with an operator configured. Sagas are started from this process as a web app would
and left in the shapes the tests need. Chromium is Debian's (``/usr/bin/chromium``), driven by
Playwright; nothing is downloaded. Screenshots go to ``tests/browser/screenshots/`` (kept by CI
as artifacts; git-ignored).

Readiness is polled (the worker answers ``control.ping``, the dashboard answers ``/login``);
every process is stopped by PID at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from celery import Celery
from celery import _state as celery_state
from playwright.sync_api import Browser, Page, sync_playwright

import sagas
from sagas.runtime import reset
from sagas.settings import Settings
from sagas.store import Store
from sagas.store.migrate import upgrade
from sagas.web.config import hash_password
from tests.browser import shop
from tests.integration.conftest import _stop, poll, redis_namespace, tail
from tests.services import REQUIRED, scratch_database
from tests.worker_harness import base_app

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM = os.environ.get("SAGAS_TEST_CHROMIUM", "/usr/bin/chromium")
USER, PASSWORD = "ana", "a long operator passphrase"
TRACE_URL = "https://traces.example/trace/{correlation_id}"
START_TIMEOUT = 60.0


@dataclass
class Deployment:
    url: str  # the dashboard, e.g. http://127.0.0.1:PORT/
    store: Store
    app: Celery
    ids: dict[str, str]
    logs: dict[str, Path]

    def state(self, saga_id: str) -> str:
        return self.store.get(saga_id)[0].state.value

    def wait_state(self, saga_id: str, state: str, timeout: float = 30.0) -> None:
        if not poll(lambda: self.state(saga_id) == state, timeout):
            logs = "\n".join(f"--- {n} ---\n{tail(p)}" for n, p in self.logs.items())
            pytest.fail(f"{saga_id} is {self.state(saga_id)}, not {state}:\n{logs}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _saga_command() -> str:
    found = Path(sys.executable).parent / "saga"
    return str(found) if found.exists() else shutil.which("saga") or "saga"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - our own loopback URL
            return bool(r.status == 200)
    except OSError:
        return False


def _settled(store: Store, saga_id: str, check: Any) -> bool:
    record, status, _ = store.get(saga_id)
    return bool(check(record, status))


SHAPES: dict[str, tuple[str, Any]] = {
    "declined": ("decline", lambda r, s: r.state.value == "failed"),
    "flaky": ("flaky", lambda r, s: s.steps[1].state.value == "pending" and s.steps[1].attempt),
    "flaky2": ("flaky", lambda r, s: s.steps[1].state.value == "pending" and s.steps[1].attempt),
    "flaky3": ("flaky", lambda r, s: s.steps[1].state.value == "pending" and s.steps[1].attempt),
    "parked": ("park_once", lambda r, s: r.parked),
    "ok": ("ok", lambda r, s: r.state.value == "completed"),
}


@pytest.fixture(scope="session")
def browser_path() -> str:
    if not Path(CHROMIUM).exists():
        message = f"Chromium is not installed at {CHROMIUM} (scripts/test installs it)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


# Module scope, not session: the browser tests are one module, and Playwright's sync API keeps
# an asyncio loop running in the main thread while it is open; left open for the session it
# made asyncio.run() in every later test module fail ("cannot be called from a running event
# loop"), and the dashboard and worker processes would idle until the end.
@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, browser_path: str) -> Iterator[Deployment]:
    run = uuid.uuid4().hex[:8]
    logdir = tmp_path_factory.mktemp("browser")
    SCREENSHOTS.mkdir(exist_ok=True)
    with ExitStack() as stack:
        database_url = stack.enter_context(scratch_database("sagas_browser"))
        broker_url, keyprefix = stack.enter_context(redis_namespace(run))
        store = Store(database_url)
        stack.callback(store.dispose)
        upgrade(store.engine)
        app = base_app("sagas_browser_client", [], "%(message)s", broker_url, keyprefix)
        stack.callback(app.close)
        stack.callback(celery_state.get_current_app().set_current)
        app.set_current()
        sagas.configure(settings=Settings(database_url=database_url), store=store, app=app)
        stack.callback(reset)

        port = _free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SAGAS_DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "SAGAS_IT_KEYPREFIX": keyprefix,
            "SAGAS_IT_PARENT_PID": str(os.getpid()),
            "SAGAS_DASHBOARD_USER": USER,
            "SAGAS_DASHBOARD_PASSWORD_HASH": hash_password(PASSWORD),
            "SAGAS_DASHBOARD_REDACT": "card_number",
            "SAGAS_DASHBOARD_TRACE_URL": TRACE_URL,
        }
        env.pop("CELERY_RESULT_BACKEND", None)
        celery = [sys.executable, "-m", "celery", "-A", "tests.browser.worker_app"]
        commands = {
            "worker": [
                *celery, "worker", "-Q", ",".join(shop.QUEUES), "-n", f"browser-{run}@%h",
                "-c", "2", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
            ],
            "dashboard": [
                _saga_command(), "dashboard", "--app", "tests.browser.worker_app:app",
                "--port", str(port),
            ],
        }  # fmt: skip
        logs = {name: logdir / f"{name}.log" for name in commands}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        files: list[IO[bytes]] = []
        stack.callback(lambda: [f.close() for f in files])
        stack.callback(_stop, procs)
        for name, argv in commands.items():
            out = open(logs[name], "wb")  # noqa: SIM115 - closed by the stack
            files.append(out)
            procs[name] = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        _wait_ready(app, procs, logs, run, url)

        ids = {}
        for shape, (mode, _) in SHAPES.items():
            sid = f"b-{run}-{shape}"
            sagas.start_saga.delay(
                "browser_order",
                {"order_id": sid, "card_number": "4111111111111111", "mode": mode},
                saga_id=sid,
            )
            ids[shape] = sid
            time.sleep(0.01)  # distinct creation times: the list's order is deterministic
        for shape, sid in ids.items():
            check = SHAPES[shape][1]
            if not poll(lambda s=sid, c=check: _safe_settled(store, s, c), START_TIMEOUT):
                pytest.fail(f"{shape} ({sid}) never settled:\n{tail(logs['worker'])}")
        yield Deployment(url, store, app, ids, logs)
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited during the tests:\n{tail(logs[name])}"


def _safe_settled(store: Store, saga_id: str, check: Any) -> bool:
    try:
        return _settled(store, saga_id, check)
    except sagas.SagaNotFound:
        return False


def _wait_ready(
    app: Celery,
    procs: dict[str, subprocess.Popen[bytes]],
    logs: dict[str, Path],
    run: str,
    url: str,
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    worker = dashboard = False
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited at start ({proc.returncode}):\n{tail(logs[name])}"
                )
        worker = worker or any(
            host.startswith(f"browser-{run}@")
            for reply in app.control.ping(timeout=0.5) or []
            for host in reply
        )
        dashboard = dashboard or _answers(url + "login")
        if worker and dashboard:
            return
    raise RuntimeError(f"not ready in {START_TIMEOUT}s (worker {worker}, dashboard {dashboard})")


@pytest.fixture(scope="module")
def chromium(browser_path: str) -> Iterator[Browser]:
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


def log_in(page: Page, deployment: Deployment, target: str = "") -> None:
    page.goto(deployment.url + target)
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#user")


def shot(page: Page, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
