"""Rendering: the Jinja2 templates, their filters, and the responses pages send.

Every value a template shows is escaped (autoescape, no template opts out) and formatted by
unbroken.ops.format, as the CLI formats it; the dashboard marks a missing value "–" and
puts a space before a unit. A page carries the CSRF token its forms need (a fresh cookie
when the browser has none that is valid) and the one-time flash message an action left.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from unbroken.dashboard.security import CSRF_COOKIE, CSRF_FIELD, Csrf
from unbroken.ops.format import (
    clip,
    format_age,
    format_bytes,
    format_duration,
    format_pct,
    shown_json,
)
from unbroken.states import JobState

HERE = Path(__file__).parent
FLASH_COOKIE = "unbroken_flash"
MISSING = "–"  # how a page shows a value that is not known


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise (none do)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = partial(format_age, missing=MISSING)
    env.filters["per"] = per
    env.filters["pct"] = partial(format_pct, missing=MISSING)
    env.filters["secs"] = partial(format_duration, missing=MISSING, unit_sep=" ")
    env.filters["bytes"] = partial(format_bytes, missing=MISSING)
    env.filters["num"] = lambda v: MISSING if v is None else f"{v:,.0f}"
    env.filters["pretty"] = partial(shown_json, indent=2)
    env.filters["compact"] = shown_json
    env.filters["clip"] = lambda s, n=120: clip(s, n)
    env.globals["STATES"] = tuple(JobState)
    return env


def per(bucket_s: int) -> str:
    """A chart bucket as a unit: 'minute', 'hour', 'day', else its age ('5m', '15m')."""
    names = {60: "minute", 3600: "hour", 86400: "day"}
    return names.get(bucket_s) or f"{format_age(bucket_s).removesuffix('00s')}"


class Renderer:
    """Pages, redirects and errors for one dashboard."""

    def __init__(self, *, title: str, read_only: bool, poll_interval: float, csrf: Csrf) -> None:
        self.env = templates()
        self.title = title
        self.read_only = read_only
        self.poll_interval = poll_interval
        self.csrf = csrf

    def page(self, request: Request, name: str, status: int = 200, **ctx: Any) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        token = request.cookies.get(CSRF_COOKIE)
        fresh = not self.csrf.valid(token)
        if fresh:
            token = self.csrf.new_token()
        flash = request.cookies.get(FLASH_COOKIE)
        polled = request.headers.get("x-unbroken-poll") == "1"
        html = self.env.get_template(name).render(
            base=base,
            title=self.title,
            read_only=self.read_only,
            csrf_field=CSRF_FIELD,
            csrf_token=token,
            poll_ms=int(self.poll_interval * 1000),
            flash=unquote(flash) if flash and not polled else None,
            request_path=request.url.path,
            **ctx,
        )
        response = HTMLResponse(html, status_code=status)
        path = base or "/"
        if fresh:
            response.set_cookie(
                CSRF_COOKIE,
                token or "",
                httponly=True,
                samesite="strict",
                path=path,
                secure=request.url.scheme == "https",
            )
        if flash and not polled:
            response.delete_cookie(FLASH_COOKIE, path=path)
        return response

    def error(self, request: Request, status: int, reason: str, nav: str = "") -> Response:
        return self.page(request, "error.html", status=status, reason=reason, nav=nav)

    def redirect(self, request: Request, to: str, message: str) -> Response:
        """A 303 to `to` (below the mount point) that shows `message` once."""
        base = request.scope.get("root_path", "").rstrip("/")
        response = RedirectResponse(base + to, status_code=303)
        response.set_cookie(
            FLASH_COOKIE,
            quote(message),
            max_age=60,
            httponly=True,
            samesite="strict",
            path=base or "/",
        )
        return response
