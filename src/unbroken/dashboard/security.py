"""The dashboard's guards: where it may listen, who may see it, and which POSTs are genuine.

- Bind: loopback by default; any other address needs credentials, or it refuses to start
  (a job table holds customer data in its arguments and errors).
- Authentication: HTTP basic auth from UNBROKEN_DASHBOARD_USER / UNBROKEN_DASHBOARD_PASSWORD,
  compared in constant time. The two probe endpoints stay open so an orchestrator needs no
  secret; they reveal a yes or a no, nothing else.
- CSRF: every action is a POST carrying a token equal to the token in a cookie (double
  submit). The token is signed with a per-app secret, so a cookie planted from a sibling
  domain is not accepted either; the cookie is SameSite=Strict and HttpOnly (the server
  writes the token into its forms, no script needs to read it). Cross-site fetches that
  the browser labels as such (Sec-Fetch-Site) are refused outright.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from unbroken.errors import ConfigError

CSRF_COOKIE = "unbroken_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
USER_ENV = "UNBROKEN_DASHBOARD_USER"
PASSWORD_ENV = "UNBROKEN_DASHBOARD_PASSWORD"
OPEN_PATHS = ("/health/live", "/health/ready")


def credentials_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    env = os.environ if environ is None else environ
    user, password = env.get(USER_ENV, ""), env.get(PASSWORD_ENV, "")
    if bool(user) != bool(password):
        raise ConfigError(f"set both {USER_ENV} and {PASSWORD_ENV}, or neither")
    return (user, password) if user else None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def check_bind(host: str, credentials: tuple[str, str] | None) -> None:
    """Refuse to listen beyond this machine without credentials."""
    if not is_loopback(host) and credentials is None:
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without credentials: set "
            f"{USER_ENV} and {PASSWORD_ENV} (HTTP basic auth), or bind 127.0.0.1"
        )


class Csrf:
    """Signed double-submit tokens."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _sign(self, raw: str) -> str:
        return hmac.new(self._secret, raw.encode(), hashlib.sha256).hexdigest()[:32]

    def new_token(self) -> str:
        raw = secrets.token_urlsafe(18)
        return f"{raw}.{self._sign(raw)}"

    def valid(self, token: str | None) -> bool:
        if not token or "." not in token:
            return False
        raw, _, sig = token.partition(".")
        return hmac.compare_digest(self._sign(raw), sig)

    def check(self, cookie: str | None, submitted: str | None) -> bool:
        if not cookie or not submitted or not self.valid(cookie):
            return False
        return hmac.compare_digest(cookie.encode(), submitted.encode())


class BasicAuth:
    """ASGI middleware: HTTP basic auth on every path but the probes."""

    def __init__(self, app: ASGIApp, credentials: tuple[str, str], realm: str = "unbroken"):
        self.app = app
        self._user = credentials[0].encode()
        self._password = credentials[1].encode()
        self._realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", f'Basic realm="{self._realm}"'.encode()),
                    (b"content-type", b"text/plain; charset=utf-8"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"authentication required\n"})

    def _allowed(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if path.removeprefix(root) in OPEN_PATHS:
            return True
        header = dict(scope.get("headers") or ()).get(b"authorization", b"")
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Both compared, always: no early exit that times which half was wrong.
        ok_user = hmac.compare_digest(user, self._user)
        ok_password = hmac.compare_digest(password, self._password)
        return ok_user and ok_password
