"""``saga dashboard``: the app served by uvicorn (one process, loopback by default)."""

from __future__ import annotations

import ipaddress
import sys

import uvicorn

from ..store import Store
from .app import API_PREFIX, create_app


def serve(store: Store, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``create_app(store)`` until interrupted (Ctrl-C, SIGTERM)."""
    if not _loopback(host):
        # The API is read-only but shows payloads: anyone who reaches the port reads them.
        print(
            f"warning: serving on {host}, reachable from other machines; the API has no "
            "authentication of its own (put it behind your proxy's, or bind 127.0.0.1)",
            file=sys.stderr,
        )
    config = uvicorn.Config(create_app(store), host=host, port=port, access_log=False)
    server = uvicorn.Server(config)
    print(f"saga API at http://{host}:{port}{API_PREFIX}/sagas ({store!r})", file=sys.stderr)
    server.run()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
