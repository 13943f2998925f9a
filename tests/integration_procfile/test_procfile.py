"""The Procfile runs: ``honcho start`` brings up the whole example deployment, a saga started the
way a web app starts one completes, Flower demands its login, and stopping honcho leaves nothing
behind.

Needs PostgreSQL and Redis (a scratch database, Redis db 14, reserved for this test) and the port
127.0.0.1:5555 free for Flower.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, TypeVar

import pytest
from celery import Celery
from celery import _state as celery_state
from sqlalchemy import create_engine, text

import sagas
from sagas.state import SagaState
from sagas.store import Store
from tests.services import PG_ADMIN_URL, require, scratch_database

ROOT = Path(__file__).resolve().parents[2]
BROKER_URL = "redis://127.0.0.1:6379/14"
FLOWER = ("127.0.0.1", 5555)
NODES = ("coordinator", "inventory", "payment", "shipping", "notification")
STARTUP_TIMEOUT = 90.0
SAGA_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0  # honcho itself SIGKILLs what is left 5 s after it forwards SIGTERM

T = TypeVar("T")

pytestmark = [pytest.mark.integration, pytest.mark.workers, pytest.mark.timeout(240)]


# -- processes -------------------------------------------------------------------------------


class Proc(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int  # clock ticks after boot: tells a reused pid apart


def _processes() -> dict[int, Proc]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry)] = Proc(
            int(entry), int(fields[1]), int(fields[2]), int(fields[3]), fields[0], int(fields[19])
        )
    return found


def _descendants(root: int) -> list[Proc]:
    procs = _processes()
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def _alive(tracked: dict[int, Proc], sessions: set[int]) -> list[Proc]:
    """Tracked processes still running, plus anything else in honcho's sessions (a prefork child
    forked after the snapshot). Zombies have exited: they are only waiting for a reaper."""
    now = _processes()
    alive = [p for p in now.values() if p.state != "Z" and p.sid in sessions]
    alive += [
        p
        for pid, old in tracked.items()
        if (p := now.get(pid)) and p.start == old.start and p.state != "Z" and p not in alive
    ]
    return alive


def _signal_all(procs: list[Proc], sig: signal.Signals) -> None:
    own_group = os.getpgrp()
    for p in procs:
        try:
            if p.pgid != own_group:
                os.killpg(p.pgid, sig)
            os.kill(p.pid, sig)
        except OSError:
            pass


def _stop(honcho: subprocess.Popen[bytes]) -> tuple[bool, list[Proc]]:
    """SIGTERM honcho's process group (honcho forwards it to every Procfile process, each in its
    own session); SIGKILL everything after STOP_TIMEOUT. Returns (graceful, survivors)."""
    tracked = {p.pid: p for p in _descendants(honcho.pid)}
    sessions = {honcho.pid} | {p.sid for p in tracked.values()}
    graceful = True
    try:
        os.killpg(honcho.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        honcho.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        graceful = False
        _signal_all([*_alive(tracked, sessions)], signal.SIGKILL)
        try:
            os.killpg(honcho.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        honcho.wait(10)
    deadline = time.monotonic() + 10
    while (left := _alive(tracked, sessions)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:  # never leave them behind, but report them
        _signal_all(left, signal.SIGKILL)
    return graceful, left


# -- helpers ---------------------------------------------------------------------------------


def _port_free(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 1):
            return False
    except OSError:
        return True


def _poll(what: str, fn: Callable[[], T | None], timeout: float, check: Callable[[], None]) -> T:
    deadline = time.monotonic() + timeout
    while True:
        check()
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f}s")
        time.sleep(0.25)


def _http_status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - fixed URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a LISTEN socket on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                found.add(address)
    return found


@contextmanager
def _current_app(app: Celery) -> Iterator[None]:
    """``sagas.start_saga`` is a shared task: it publishes through the current app."""
    previous = celery_state.get_current_app()
    app.set_current()
    try:
        yield
    finally:
        previous.set_current()


def _client_app() -> Celery:
    app = Celery("procfile-test-client", set_as_current=False)
    app.conf.update(
        broker_url=BROKER_URL,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        broker_connection_retry_on_startup=True,
    )
    return app


def _flush_broker() -> None:
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    try:
        client.flushdb()
    finally:
        client.close()


def _saga_state(store: Store, saga_id: str) -> SagaState | None:
    try:
        return store.get(saga_id)[0].state
    except sagas.SagaNotFound:
        return None


# -- the test --------------------------------------------------------------------------------


def test_procfile_runs_a_saga_end_to_end_and_stops_cleanly(tmp_path: Path) -> None:
    require("PostgreSQL", PG_ADMIN_URL)
    require("Redis", BROKER_URL)
    bindir = Path(sys.executable).parent  # the venv running the tests (not resolved: a symlink)
    honcho_bin = bindir / "honcho"
    assert honcho_bin.exists(), (
        f"{honcho_bin} missing: install the dev extra (pip install -e '.[dev]')"
    )
    assert _port_free(*FLOWER), (
        "127.0.0.1:5555 is already in use (a Flower left running?); this test needs it for its own"
    )
    _flush_broker()  # db 14 belongs to this test: no messages left by an earlier run

    auth = f"test:{secrets.token_urlsafe(16)}"
    with scratch_database("sagas_procfile") as db_url:
        # honcho gives .env precedence over the environment: the test passes its own file.
        env_file = tmp_path / "procfile.env"
        settings = {
            "SAGAS_DATABASE_URL": db_url,
            "CELERY_BROKER_URL": BROKER_URL,
            "FLOWER_BASIC_AUTH": auth,
            "SAGAS_SWEEP_INTERVAL": "1",
            "SAGAS_BEAT_SCHEDULE": str(tmp_path / "celerybeat-schedule"),
        }
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SAGAS_", "CELERY_", "FLOWER"))
        }
        env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
        log_path = tmp_path / "honcho.log"

        with log_path.open("wb") as log:
            honcho = subprocess.Popen(
                [str(honcho_bin), "--no-colour", "-e", str(env_file), "-f", "Procfile", "start"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, stopped as one
            )
        try:
            _exercise(honcho, db_url, auth, log_path)
        finally:
            graceful, survivors = _stop(honcho)
        tail = log_path.read_text(errors="replace")[-3000:]
        assert graceful, f"honcho did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM\n{tail}"
        assert not survivors, f"processes survived honcho: {survivors}\n{tail}"
    _flush_broker()


def _exercise(honcho: subprocess.Popen[bytes], db_url: str, auth: str, log_path: Path) -> None:
    def check() -> None:
        if honcho.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            pytest.fail(f"honcho exited with {honcho.returncode} (a process died)\n{tail}")

    # 1. The coordinator migrated the scratch database (saga db upgrade in its command).
    engine = create_engine(db_url)
    try:

        def migrated() -> bool:
            try:
                with engine.connect() as conn:
                    return bool(
                        conn.execute(text("SELECT version_num FROM sagas_alembic_version")).all()
                    )
            except Exception:  # noqa: BLE001 - table not there yet
                return False

        _poll("the coordinator's saga db upgrade", migrated, STARTUP_TIMEOUT, check)
    finally:
        engine.dispose()

    # 2. Every worker answers a ping.
    client = _client_app()
    try:

        def all_pong() -> bool:
            replies = client.control.ping(timeout=1.0) or []
            names = {name.split("@", 1)[0] for reply in replies for name in reply}
            return names >= set(NODES)

        _poll(f"ping replies from {', '.join(NODES)}", all_pong, STARTUP_TIMEOUT, check)

        # 3. A saga started exactly as a web app starts one completes.
        from sagas.examples.demo import orders

        saga_id, _label, payload = orders(f"procfile{os.getpid()}")[0]
        with _current_app(client):
            sagas.start_saga.delay("order_fulfillment", payload, saga_id=saga_id)
    finally:
        client.close()
    store = Store(db_url)
    try:
        state = _poll(
            f"saga {saga_id} reaching a terminal state",
            lambda: s if (s := _saga_state(store, saga_id)) and s.terminal else None,
            SAGA_TIMEOUT,
            check,
        )
    finally:
        store.dispose()
    assert state is SagaState.COMPLETED, f"saga {saga_id} ended {state}"

    # 4. Flower: only on loopback, and only with its login.
    url = f"http://{FLOWER[0]}:{FLOWER[1]}/"
    _poll("Flower listening", lambda: not _port_free(*FLOWER), STARTUP_TIMEOUT, check)
    assert _http_status(url) == 401
    assert _http_status(url + "api/tasks") == 401
    assert _http_status(url, auth="test:wrong-password") == 401
    assert _http_status(url, auth=auth) == 200
    assert _http_status(url + "api/tasks", auth=auth) == 200
    assert _listening_addresses(FLOWER[1]) == {"0100007F"}, "Flower must bind 127.0.0.1 only"
    check()  # nothing died while we looked
