"""The dashboard's guards: where it may listen, who may see it, and which POSTs are genuine.

- Bind: loopback by default; any other address needs credentials with a password that is
  not weak, or it refuses to start (a job table holds customer data in its arguments and
  errors).
- Authentication: HTTP basic auth from UNBROKEN_DASHBOARD_USER / UNBROKEN_DASHBOARD_PASSWORD,
  compared in constant time, failures throttled (throttle.py). The two probe endpoints stay
  open so an orchestrator needs no secret; they reveal a yes or a no, nothing else.
- CSRF: every action is a POST carrying a token equal to the token in a cookie (double
  submit). The token is signed with a per-app secret, so a cookie planted from a sibling
  domain is not accepted either; the cookie is SameSite=Strict and HttpOnly (the server
  writes the token into its forms, no script needs to read it). Besides the token, a POST
  that the browser says comes from elsewhere (Origin, Sec-Fetch-Site) is refused outright
  (`foreign_post`).
- The Host allow-list and the security headers of every response: edge.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from unbroken.dashboard.throttle import LoginThrottle
from unbroken.errors import ConfigError

CSRF_COOKIE = "unbroken_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
USER_ENV = "UNBROKEN_DASHBOARD_USER"
PASSWORD_ENV = "UNBROKEN_DASHBOARD_PASSWORD"
OPEN_PATHS = ("/health/live", "/health/ready")
MIN_PASSWORD = 12
# Well-known passwords of 12 characters or more (the shorter ones fail on length).
COMMON_PASSWORDS = frozenset(
    {
        "123456789012",
        "1234567890123",
        "12345678901234",
        "adminadminadmin",
        "administrator",
        "changemechangeme",
        "iloveyou1234",
        "letmeinletmein",
        "password1234",
        "password12345",
        "passwordpassword",
        "qwerty123456",
        "qwertyuiop123",
        "qwertyuiopasdf",
        "unbrokenunbroken",
    }
)


def is_open_path(scope: Scope) -> bool:
    """A probe: open without credentials, and to any Host."""
    return str(scope.get("path", "")).removeprefix(scope.get("root_path", "")) in OPEN_PATHS


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


def password_problem(password: str) -> str | None:
    """Why `password` is too weak to guard a dashboard others can reach; None if it is not."""
    if len(password) < MIN_PASSWORD:
        return f"shorter than {MIN_PASSWORD} characters"
    if password.lower() in COMMON_PASSWORDS:
        return "a well-known password"
    if len(set(password)) < 5:
        return "fewer than 5 different characters"
    return None


def check_bind(host: str, credentials: tuple[str, str] | None) -> None:
    """Refuse to listen beyond this machine without credentials, or with a weak password."""
    if is_loopback(host):
        return
    if credentials is None:
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without credentials: set "
            f"{USER_ENV} and {PASSWORD_ENV} (HTTP basic auth), or bind 127.0.0.1"
        )
    problem = password_problem(credentials[1])
    if problem:
        raise ConfigError(
            f"{PASSWORD_ENV} is too weak to serve beyond loopback ({problem}): use "
            f"{MIN_PASSWORD} or more characters that are not a common password, or bind "
            "127.0.0.1"
        )


def foreign_post(headers: Headers, scheme: str) -> str | None:
    """Why a POST comes from another site by the browser's own word; None if it does not.

    Sec-Fetch-Site must be same-origin (or none: typed or bookmarked), and an Origin must
    be this very origin (scheme, host and port as the Host header says). A client that
    sends neither (curl, a script) is judged by the CSRF token alone."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"{site} request refused"
    origin = headers.get("origin")
    if origin is not None and origin != f"{scheme}://{headers.get('host', '')}":
        shown = origin if len(origin) <= 80 else origin[:79] + "…"
        return f"cross-origin request refused (Origin {shown!r})"
    return None


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
        # Bytes: compare_digest refuses str holding anything but ASCII (a forged cookie may).
        return hmac.compare_digest(self._sign(raw).encode(), sig.encode())

    def check(self, cookie: str | None, submitted: str | None) -> bool:
        if not cookie or not submitted or not self.valid(cookie):
            return False
        return hmac.compare_digest(cookie.encode(), submitted.encode())


class BasicAuth:
    """ASGI middleware: HTTP basic auth on every path but the probes, failures throttled."""

    def __init__(
        self,
        app: ASGIApp,
        credentials: tuple[str, str],
        throttle: LoginThrottle | None = None,
        realm: str = "unbroken",
    ):
        self.app = app
        self._user = credentials[0].encode()
        self._password = credentials[1].encode()
        self._throttle = throttle or LoginThrottle()
        self._realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or ()).get(b"authorization")
        client = scope["client"][0] if scope.get("client") else "unknown"
        if header is not None:
            wait = self._throttle.wait(client)
            if wait > 0:
                seconds = math.ceil(wait)
                text = f"too many failed logins: retry in {seconds} s\n"
                await refuse(send, 429, text, [(b"retry-after", str(seconds).encode())])
                return
            if self._matches(header):
                self._throttle.succeeded(client)
                await self.app(scope, receive, send)
                return
            self._throttle.failed(client)
        challenge = f'Basic realm="{self._realm}"'.encode()
        await refuse(send, 401, "authentication required\n", [(b"www-authenticate", challenge)])

    def _matches(self, header: bytes) -> bool:
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


async def refuse(
    send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A plain-text answer from a middleware, before any route runs."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})
