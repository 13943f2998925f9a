"""``saga dashboard``: the app served by uvicorn (one process, loopback by default)."""

from __future__ import annotations

import ipaddress
import sys

import uvicorn

from ..runtime import Runtime
from ..store import Store
from .app import create_app
from .config import from_environment


def serve(
    store: Store, *, host: str = "127.0.0.1", port: int = 8000, runtime: Runtime | None = None
) -> None:
    """Serve ``create_app(store)`` until interrupted (Ctrl-C, SIGTERM)."""
    dashboard = from_environment()
    if not _loopback(host):
        # Plain HTTP: the login and the payloads cross the network in clear.
        print(
            f"warning: serving on {host}, reachable from other machines over plain HTTP; put "
            "it behind your TLS proxy (and set SAGAS_DASHBOARD_SECURE_COOKIES=1), or bind "
            "127.0.0.1",
            file=sys.stderr,
        )
    if dashboard.user is None:
        print("warning: no SAGAS_DASHBOARD_USER: anyone who reaches the port reads every "
              "saga (actions are off)", file=sys.stderr)  # fmt: skip
    app = create_app(store, dashboard=dashboard, runtime=runtime)
    config = uvicorn.Config(app, host=host, port=port, access_log=False)
    server = uvicorn.Server(config)
    who = f"operator {dashboard.user!r}" if dashboard.user else "read-only: no operator"
    acts = "actions on" if runtime is not None else "no actions: pass --app"
    print(f"saga dashboard at http://{host}:{port}/ ({who}; {acts}; {store!r})", file=sys.stderr)
    server.run()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
