"""How the store connects from any process. A forked child (a prefork worker, a preloaded web
server process) gets a pool of its own:
it never talks on the parent's connections, and the parent's keep working after the child
used the store and exited. A server that never answers is unavailable within a bound."""

from __future__ import annotations

import os
import sys

import pytest
from sqlalchemy import text

from sagas.store import Store


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_a_forked_child_uses_fresh_connections_and_leaves_the_parents_alone(
    pg_store: Store,
) -> None:
    engine = pg_store.engine
    with engine.connect() as conn:  # a pooled connection, in the parent
        parent_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert engine.pool.checkedin() >= 1  # type: ignore[attr-defined]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read)
            fresh = engine.pool.checkedin() == 0  # type: ignore[attr-defined]
            with engine.connect() as conn:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            pg_store.list(limit=1)  # the store's own path, on the child's pool
            os.write(write, f"{int(fresh)} {pid}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as got:
        fresh, child_backend = got.read().split()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert fresh == "1" and int(child_backend) != parent_pid
    with engine.connect() as conn:  # the parent's connection survived the child's exit
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == parent_pid


def test_a_server_that_never_answers_is_unavailable_within_the_connect_timeout() -> None:
    import socket
    import time

    from sagas.errors import StoreUnavailable
    from sagas.store.engine import CONNECT_TIMEOUT

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever speaks
    port = silent.getsockname()[1]
    try:
        for query, bound in (("?connect_timeout=1", 3.0), ("", CONNECT_TIMEOUT + 3.0)):
            store = Store(f"postgresql+psycopg://u@127.0.0.1:{port}/db{query}")
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.list(limit=1)
            waited = time.monotonic() - t0
            store.dispose()
            assert waited < bound, (query, waited)  # the URL's own, else ours
    finally:
        silent.close()
