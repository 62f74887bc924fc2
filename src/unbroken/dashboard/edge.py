"""What every request and response of the dashboard passes: the Host allow-list and the
security headers.

- Host allow-list: against DNS rebinding. A web page at evil.example whose name the
  attacker re-points to 127.0.0.1 reaches a loopback dashboard as the same origin, so the
  browser lets it read pages and post forms; only the Host header still says
  evil.example. A request whose Host is not allowed is answered 400 before any route
  runs. Allowed: loopback names and addresses (localhost, 127.0.0.0/8, ::1), always; the
  names given in UNBROKEN_DASHBOARD_ALLOWED_HOSTS (comma-separated; ".example.com" takes
  the domain and its subdomains; "*" turns the check off) or to `create_app`; and the
  address `unbroken dashboard --host` binds. The probes answer any Host (an orchestrator
  probes by the pod's address; they say yes or no, nothing else).
- Headers on every response, errors included: a Content-Security-Policy that allows only
  the dashboard's own script, style and fetches (no inline script or style: the pages
  carry none) and no framing; X-Frame-Options, X-Content-Type-Options, Referrer-Policy
  and Cross-Origin-Resource-Policy to the same effect for older browsers and other
  embedders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unbroken.dashboard.security import is_loopback, is_open_path, refuse

HOSTS_ENV = "UNBROKEN_DASHBOARD_ALLOWED_HOSTS"
WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with
    # the dashboard's own form posts, and foreign_post refuses those.
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def allowed_hosts_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [h for h in env.get(HOSTS_ENV, "").split(",") if h.strip()]


def with_bound_host(hosts: Iterable[str], bind: str) -> list[str]:
    """`hosts` and the address the server binds, unless that is a wildcard (0.0.0.0, ::)."""
    return [*hosts, *([] if bind in WILDCARD_BINDS else [bind])]


def host_name(header: str) -> str:
    """The name in a Host header: no port, no IPv6 brackets, lower case, no final dot."""
    if header.startswith("["):
        name = header[1:].partition("]")[0]
    else:
        name = header.rpartition(":")[0] if ":" in header else header
    return name.strip().lower().rstrip(".")


class HostAllowList:
    """ASGI middleware: 400 for a request whose Host header is not an allowed name."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]) -> None:
        self.app = app
        names = [
            host_name(h.strip()) if not h.strip().startswith(".") else h.strip().lower()
            for h in hosts
        ]
        self._any = "*" in names
        self._exact = {n for n in names if not n.startswith(".")}
        self._domains = tuple(n for n in names if n.startswith(".") and len(n) > 1)

    def allows(self, name: str) -> bool:
        if self._any or name in self._exact or is_loopback(name):
            return True
        return any(name.endswith(d) or name == d[1:] for d in self._domains)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
        name = host_name(header)
        if name and self.allows(name):
            await self.app(scope, receive, send)
            return
        shown = name if len(name) <= 80 else name[:79] + "…"
        reason = (
            f"Host {shown!r} is not allowed: add it to {HOSTS_ENV} (or to create_app's "
            "allowed_hosts)"
            if name
            else "no Host header"
        )
        await refuse(send, 400, reason + "\n")


class SecurityHeaders:
    """ASGI middleware: the security headers on every response (they replace any alike)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._names = {name for name, _ in SECURITY_HEADERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k not in self._names]
                message = {**message, "headers": kept + SECURITY_HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)
