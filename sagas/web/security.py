"""Who the operator is, and whether a POST really comes from our own page.

- **Identity**: a host framework's ``authenticate(request) -> user name | None`` when the
  dashboard is mounted inside an app that already logs people in; otherwise the configured user
  (``SAGAS_DASHBOARD_USER`` and ``_PASSWORD_HASH``), logged in through ``/login`` into a signed
  session cookie (Starlette's ``SessionMiddleware``: HttpOnly, ``SameSite=Strict``).
- **CSRF**: each session holds a random token; every POST carries it in a hidden field, compared
  in constant time. Before that, a POST whose ``Sec-Fetch-Site`` says ``cross-site`` or whose
  ``Origin`` is not this server's is refused outright (browsers send both on cross-site forms).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Guard:
    settings: DashboardSettings
    authenticate: Authenticate | None = None

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
