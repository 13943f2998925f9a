"""Who the operator is, and whether a POST really comes from our own page.

- **Identity**: a host framework's ``authenticate(request) -> user name | None`` when the
  dashboard is mounted inside an app that already logs people in; otherwise the configured user
  (``SAGAS_DASHBOARD_USER`` and ``_PASSWORD_HASH``), logged in through ``/login`` into a signed
  session cookie (Starlette's ``SessionMiddleware``: HttpOnly, ``SameSite=Strict``).
- **CSRF**: each session holds a random token; every POST carries it in a hidden field, compared
  in constant time. Before that, a POST whose ``Sec-Fetch-Site`` says ``cross-site`` or whose
  ``Origin`` is not this server's is refused outright (browsers send both on cross-site forms).
- **Login throttling**: after ``login_max_failures`` failed logins within ``login_window``
  seconds from one client address, or for one user name, more are refused (429, with
  ``Retry-After``) without checking the password, until the oldest of them is that old; a
  success clears both counts. In this process's memory: each process counts its own.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from .config import DashboardSettings, verify_password

Authenticate = Callable[[Request], "str | None"]
SESSION_COOKIE = "sagas_session"
_USER = "user"
_CSRF = "csrf"


class Forbidden(Exception):
    """A request refused for who sent it (403), with the reason shown to the operator."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


class LoginRequired(Exception):
    """The page needs a login: the operator is sent to ``/login``."""


class LoginThrottle:
    """Recent failed logins per key (a client address, a user name), bounded in memory."""

    MAX_KEYS = 10_000  # a guesser cycling user names or addresses cannot grow it past this

    def __init__(
        self, max_failures: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures, self.window, self.clock = max_failures, window, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()  # the login route runs in a thread pool

    @staticmethod
    def keys(client: str, user: str) -> tuple[tuple[str, str], ...]:
        return ("client", client), ("user", user.strip().casefold()[:200])

    def retry_after(self, client: str, user: str) -> int | None:
        """Seconds until a login may be tried again, or None: it may be now."""
        now = self.clock()
        with self._lock:
            waits = [self._wait(key, now) for key in self.keys(client, user)]
        worst = max(waits)
        return max(1, math.ceil(worst)) if worst > 0 else None

    def failed(self, client: str, user: str) -> None:
        now = self.clock()
        with self._lock:
            for key in self.keys(client, user):
                if key not in self._failures and len(self._failures) >= self.MAX_KEYS:
                    self._evict(now)
                found = self._failures.setdefault(key, deque(maxlen=self.max_failures))
                found.append(now)

    def succeeded(self, client: str, user: str) -> None:
        with self._lock:
            for key in self.keys(client, user):
                self._failures.pop(key, None)

    def _wait(self, key: tuple[str, str], now: float) -> float:
        found = self._failures.get(key)
        if found is None or len(found) < self.max_failures:
            return 0.0
        # Only the last max_failures are kept: once the oldest leaves the window, one more try.
        return found[0] + self.window - now

    def _evict(self, now: float) -> None:
        for key in [k for k, v in self._failures.items() if v[-1] + self.window <= now]:
            del self._failures[key]
        while len(self._failures) >= self.MAX_KEYS:  # all recent: drop the oldest key
            del self._failures[next(iter(self._failures))]


@dataclass(frozen=True, slots=True)
class Guard:
    settings: DashboardSettings
    authenticate: Authenticate | None = None
    throttle: LoginThrottle = field(init=False)

    def __post_init__(self) -> None:
        throttle = LoginThrottle(self.settings.login_max_failures, self.settings.login_window)
        object.__setattr__(self, "throttle", throttle)  # frozen: set once, here

    @property
    def actions_possible(self) -> bool:
        """Actions need someone to be authenticated as: a host hook or a configured user."""
        return self.authenticate is not None or self.settings.user is not None

    @property
    def has_login_form(self) -> bool:
        return self.authenticate is None and self.settings.user is not None

    def user(self, request: Request) -> str | None:
        if self.authenticate is not None:
            return self.authenticate(request)
        name = request.session.get(_USER)
        return name if isinstance(name, str) and name == self.settings.user else None

    def require_reader(self, request: Request) -> None:
        if self.user(request) is None and (
            self.authenticate is not None or self.settings.reads_need_login
        ):
            raise LoginRequired()

    def require_actor(self, request: Request) -> str:
        if not self.actions_possible:
            raise Forbidden(
                "actions are disabled: no operator is configured (set SAGAS_DASHBOARD_USER and "
                "SAGAS_DASHBOARD_PASSWORD_HASH, or mount the dashboard with authenticate=)"
            )
        who = self.user(request)
        if who is None:
            raise LoginRequired()
        return who

    def check_login(self, user: str, password: str) -> bool:
        expected_user, stored = self.settings.user, self.settings.password_hash
        if expected_user is None or stored is None:
            return False
        # Both compared every time, so the answer takes as long for a wrong name.
        same_user = hmac.compare_digest(user.encode(), expected_user.encode())
        same_password = verify_password(password, stored)
        return same_user and same_password

    @staticmethod
    def log_in(request: Request, user: str) -> None:
        request.session.clear()  # a fresh session (and token) after login: no fixation
        request.session[_USER] = user
        request.session[_CSRF] = secrets.token_urlsafe(32)

    @staticmethod
    def log_out(request: Request) -> None:
        request.session.clear()


def csrf_token(request: Request) -> str:
    """This session's token (made on first use)."""
    token = request.session.get(_CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session[_CSRF] = token
    return token


def check_post(request: Request, sent_token: object) -> None:
    """``Forbidden`` unless this POST is same-origin and carries the session's token."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise Forbidden("cross-site request refused")
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != _own_origin(request):
        raise Forbidden(f"request from another origin ({origin[:80]}) refused")
    expected = request.session.get(_CSRF)
    if not isinstance(expected, str) or not isinstance(sent_token, str):
        raise Forbidden("the form's security token is missing: reload the page and try again")
    if not hmac.compare_digest(expected.encode(), sent_token.encode()):
        raise Forbidden("the form's security token is wrong: reload the page and try again")


def _own_origin(request: Request) -> str:
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


def safe_next(target: str | None, default: str) -> str:
    """A redirect target after login: a path of this dashboard, never another site."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default
