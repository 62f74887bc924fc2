"""The dashboard's guards over real HTTP: a uvicorn server on a loopback port, httpx as the
client, the test's PostgreSQL behind it (docs/security.md, "The dashboard").

Host allow-list (DNS rebinding), security headers, Origin/Sec-Fetch-Site on POSTs, failed
logins throttled, weak passwords refused off loopback, bad input answered 400 with its
reason, and a 503 only when the database is really down.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg.conninfo
import pytest

from apps.harness import wait_until
from live_server import free_port, serve
from ops_seed import Seeded, state_of
from pg import Faults
from unbroken.dashboard import create_app
from unbroken.dashboard.throttle import LoginThrottle
from unbroken.settings import load_settings

UNBROKEN = str(Path(sys.executable).parent / "unbroken")
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
STRONG = ("ops", "k7-vanilla-Quartz-9x")
PAGES = ("/", "/jobs", "/long", "/dead", "/queues", "/pipelines", "/dead/confirm?action=retry")


@pytest.fixture
def base(database_url: str, seeded: Seeded) -> Iterator[str]:
    """The seeded dashboard, no credentials, on a real server."""
    app = create_app(load_settings(database_url=database_url), credentials=None)
    with serve(app) as url:
        yield url


def client(base: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=30, **kwargs)


def token_of(c: httpx.Client, path: str = "/queues") -> str:
    match = TOKEN.search(c.get(path).text)
    assert match, "no CSRF field on the page"
    return match[1]


# --- Host allow-list (DNS rebinding) -------------------------------------------------------
def test_a_foreign_host_header_is_refused(base: str, seeded: Seeded) -> None:
    port = base.rsplit(":", 1)[1]
    with client(base) as c:
        # A page of evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example.
        for method, path in (("GET", "/"), ("GET", "/api/jobs"), ("POST", "/queues/pause")):
            refused = c.request(method, path, headers={"host": f"evil.example:{port}"})
            assert refused.status_code == 400, path
            assert "Host 'evil.example' is not allowed" in refused.text
            assert "UNBROKEN_DASHBOARD_ALLOWED_HOSTS" in refused.text
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", f"[::1]:{port}"):
            assert c.get("/", headers={"host": host}).status_code == 200, host
        # The probes stay open to an orchestrator probing by the pod's address.
        assert c.get("/health/live", headers={"host": "10.1.2.3:8787"}).status_code == 200


def test_allowed_hosts_are_configurable(
    database_url: str, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNBROKEN_DASHBOARD_ALLOWED_HOSTS", "dash.example.com, .example.org")
    app = create_app(load_settings(database_url=database_url), credentials=None)
    with serve(app) as url, client(url) as c:
        for host in ("dash.example.com", "a.example.org", "example.org", "localhost"):
            assert c.get("/", headers={"host": host}).status_code == 200, host
        for host in ("example.com", "dash.example.com.evil.example", "badexample.org"):
            assert c.get("/", headers={"host": host}).status_code == 400, host


# --- headers --------------------------------------------------------------------------------
class Inline(HTMLParser):
    """Script and style that a CSP without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.found.append("inline <script>")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag} {n}=" for n in names if n == "style" or n.startswith("on")]
        if any((v or "").lower().startswith("javascript:") for v in names.values()):
            self.found.append(f"{tag} javascript: URL")


def test_every_response_carries_the_security_headers(base: str, seeded: Seeded) -> None:
    with client(base) as c:
        responses = [c.get(p) for p in PAGES]
        responses += [c.get(f"/jobs/{seeded.running}"), c.get("/static/app.js")]
        responses += [c.get("/nowhere"), c.get("/api/jobs?state=nope"), c.post("/queues/x")]
        responses.append(c.get("/", headers={"host": "evil.example"}))
        for r in responses:
            where = f"{r.request.method} {r.request.url.path} ({r.status_code})"
            csp = r.headers.get("content-security-policy", "")
            assert "default-src 'none'" in csp, where
            assert "script-src 'self'" in csp, where
            assert "frame-ancestors 'none'" in csp, where
            assert "unsafe-inline" not in csp, where
            assert "unsafe-eval" not in csp, where
            assert r.headers.get("x-frame-options") == "DENY", where
            assert r.headers.get("x-content-type-options") == "nosniff", where
            assert r.headers.get("referrer-policy") == "same-origin", where
        # ...and the pages need nothing that policy blocks.
        for path in (*PAGES, f"/jobs/{seeded.running}", "/jobs/confirm?action=retry"):
            parser = Inline()
            parser.feed(c.get(path).text)
            assert parser.found == [], (path, parser.found)


def test_basic_auth_answers_carry_the_headers_too(database_url: str, seeded: Seeded) -> None:
    app = create_app(load_settings(database_url=database_url), credentials=STRONG)
    with serve(app) as url, client(url) as c:
        denied = c.get("/")
        assert denied.status_code == 401
        assert "frame-ancestors 'none'" in denied.headers["content-security-policy"]


# --- POSTs: Origin and Sec-Fetch-Site besides the token ----------------------------------
def test_a_post_from_another_origin_is_refused_even_with_the_token(
    base: str, database_url: str, seeded: Seeded
) -> None:
    job = seeded.dead_http[0]
    with client(base) as c:
        token = token_of(c)
        form = {"csrf_token": token}
        for headers in (
            {"origin": "http://evil.example"},
            {"origin": "null"},
            {"origin": base.replace("127.0.0.1", "localhost")},  # another origin, same server
            {"sec-fetch-site": "same-site"},
            {"sec-fetch-site": "cross-site", "origin": base},
        ):
            refused = c.post(f"/jobs/{job}/retry", data=form, headers=headers)
            assert refused.status_code == 403, headers
            assert "request refused" in refused.text, headers
        assert state_of(database_url, job) == "dead"
        same = {"origin": base, "sec-fetch-site": "same-origin"}
        done = c.post(f"/jobs/{job}/retry", data=form, headers=same)
        assert done.status_code == 303
        assert state_of(database_url, job) == "available"


# --- failed logins ----------------------------------------------------------------------
def test_failed_logins_are_throttled_per_client(database_url: str, seeded: Seeded) -> None:
    app = create_app(load_settings(database_url=database_url), credentials=STRONG)
    with serve(app) as url:
        with client(url, auth=("ops", "guess")) as guesser:
            answers = [guesser.get("/").status_code for _ in range(12)]
            assert answers[:5] == [401] * 5  # a few typos are free
            assert 429 in answers
            throttled = guesser.get("/")
            assert throttled.status_code == 429
            assert int(throttled.headers["retry-after"]) >= 1
            assert "too many failed logins" in throttled.text
        # Even the right password waits from that address: no oracle while throttled.
        with client(url, auth=STRONG) as same_address:
            assert same_address.get("/").status_code == 429
        # Another client is not held up by it.
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with client(url, auth=STRONG, transport=other) as elsewhere:
            assert elsewhere.get("/").status_code == 200


def test_failed_logins_are_throttled_globally(database_url: str) -> None:
    throttle = LoginThrottle(free_failures=5, global_per_minute=6)
    app = create_app(
        load_settings(database_url=database_url), credentials=STRONG, login_throttle=throttle
    )
    with serve(app) as url:
        answers = []
        for i in range(2, 10):  # guesses spread over many addresses
            transport = httpx.HTTPTransport(local_address=f"127.0.0.{i}")
            with client(url, auth=("ops", f"guess{i}"), transport=transport) as c:
                answers.append(c.get("/").status_code)
        assert answers[:6] == [401] * 6
        assert answers[6:] == [429, 429]


# --- weak passwords -----------------------------------------------------------------------
def run_dashboard(host: str, port: int, password: str, database_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNBROKEN_DASHBOARD")}
    env |= {
        "UNBROKEN_DATABASE_URL": database_url,
        "UNBROKEN_DASHBOARD_USER": "ops",
        "UNBROKEN_DASHBOARD_PASSWORD": password,
        "UNBROKEN_DASHBOARD_ALLOWED_HOSTS": "dash.example.com",
    }
    return subprocess.Popen(
        [UNBROKEN, "dashboard", "--host", host, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("password", ["s3cret", "password1234", "aaaaaaaaaaaaaaaa"])
def test_a_weak_password_is_refused_off_loopback(database_url: str, password: str) -> None:
    proc = run_dashboard("0.0.0.0", free_port(), password, database_url)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "UNBROKEN_DASHBOARD_PASSWORD is too weak to serve beyond loopback" in err
    assert password not in err


def test_a_weak_password_is_accepted_on_loopback(database_url: str, seeded: Seeded) -> None:
    port = free_port()
    proc = run_dashboard("127.0.0.1", port, "s3cret", database_url)
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(url + "/health/live", timeout=5).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[1]
                return False

        wait_until(answers, timeout=30, what="the dashboard answers")
        auth = ("ops", "s3cret")
        assert httpx.get(url + "/", auth=auth, timeout=30).status_code == 200
        # The command reads the allow-list from the environment.
        for host, status in (("dash.example.com", 200), ("evil.example", 400)):
            page = httpx.get(url + "/", auth=auth, headers={"host": host}, timeout=30)
            assert page.status_code == status, host
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


# --- bad input is a 400 with its reason ---------------------------------------------------
HUGE = "9" * 30
BAD_GETS = [
    ("/jobs?before=" + HUGE, "before"),
    ("/api/jobs?before=" + HUGE, "before"),
    ("/jobs?before=-3", "before"),
    ("/api/jobs?limit=-5", "limit"),
    ("/api/jobs?limit=lots", "limit"),
    ("/jobs?older_than=" + HUGE + "d", "too long a duration"),
    ("/api/jobs?older_than=" + HUGE, "too long a duration"),
    ("/jobs?queue=etl%00x", "NUL"),
    ("/jobs?task=%00", "NUL"),
    ("/jobs?args=a%00b", "NUL"),
    ("/api/jobs?args=" + '{"k": "\\u0000"}', "NUL"),
    ("/jobs/confirm?action=retry&state=odd", "unknown job state 'odd'"),
    ("/jobs/confirm?action=cancel&older_than=" + HUGE, "too long a duration"),
    ("/dead/confirm?action=purge&key=%00", "NUL"),
    ("/jobs/" + HUGE, "no job"),
    ("/api/jobs/" + HUGE, "no job"),
]


@pytest.mark.parametrize(("path", "reason"), BAD_GETS)
def test_bad_parameters_are_400_with_the_reason(base: str, path: str, reason: str) -> None:
    with client(base) as c:
        r = c.get(path)
    expected = 404 if reason == "no job" else 400
    assert r.status_code == expected, (r.status_code, r.text[:300])
    assert reason in html.unescape(r.text)
    assert "database" not in r.text.lower()


def test_a_non_ascii_csrf_cookie_is_a_fresh_token_not_a_500(base: str, seeded: Seeded) -> None:
    with client(base) as c:
        odd = "unbroken_csrf=\u00e9t\u00e9.\u00e9".encode()
        page = c.get("/queues", headers={"cookie": odd})
        assert page.status_code == 200
        assert TOKEN.search(page.text)
        form = {"csrf_token": "\u00e9t\u00e9.\u00e9", "name": "etl"}
        refused = c.post("/queues/pause", data=form, headers={"cookie": odd})
        assert refused.status_code == 403
        assert "CSRF" in refused.text


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"action": "retry", "state": "odd"}, "unknown job state 'odd'"),
        ({"action": "cancel", "queue": "a\x00b"}, "NUL"),
        ({"action": "retry", "older_than": HUGE + "w"}, "too long a duration"),
    ],
)
def test_bad_bulk_forms_are_400(base: str, form: dict[str, str], reason: str) -> None:
    with client(base) as c:
        r = c.post("/jobs/bulk", data={"csrf_token": token_of(c), **form})
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert reason in html.unescape(r.text)


def test_bad_post_fields_are_400(base: str) -> None:
    with client(base) as c:
        token = token_of(c)
        pause = c.post("/queues/pause", data={"csrf_token": token, "name": "a\x00b"})
        assert pause.status_code == 400
        assert "NUL" in pause.text
        purge = c.post("/dead/purge", data={"csrf_token": token, "key": "\x00"})
        assert purge.status_code == 400
        assert "NUL" in purge.text


# --- 503 only when the database is down --------------------------------------------------
def test_a_stopped_database_is_a_503_that_says_so(
    base: str, faults: Faults, seeded: Seeded
) -> None:
    with client(base) as c:
        assert c.get("/").status_code == 200  # the pool is open and warm
        faults.stop()
        for path in ("/", "/jobs", f"/jobs/{seeded.running}"):
            page = c.get(path)
            assert page.status_code == 503, path
            assert "the database did not answer" in page.text
        api = c.get("/api/jobs")
        assert api.status_code == 503
        assert api.json()["error"].startswith("the database did not answer")
        assert c.get("/health/ready").status_code == 503
        assert c.get("/health/live").status_code == 200
        # Bad input is still bad input, and says so, while the database is away.
        assert c.get("/api/jobs?limit=-5").status_code == 400
        faults.start()
        wait_until(lambda: c.get("/").status_code == 200, timeout=30, what="pages answer again")


def test_a_database_down_from_the_start_is_a_503(
    database_url: str, faults: Faults, seeded: Seeded
) -> None:
    app = create_app(load_settings(database_url=database_url), credentials=None)
    faults.stop()
    with serve(app) as url, client(url) as c:
        page = c.get("/jobs")
        assert page.status_code == 503
        assert "the database did not answer" in page.text
        faults.start()
        wait_until(lambda: c.get("/jobs").status_code == 200, timeout=30, what="pages answer")


def test_an_unmigrated_database_or_a_missing_grant_is_named_not_called_down(
    database_url: str,
) -> None:
    """503 "did not answer" is for a database that is away. One without the schema says to
    migrate; a role without the grants a page needs gets 403 naming the grant problem."""
    app = create_app(load_settings(database_url=database_url), credentials=None)
    with serve(app) as url, client(url) as c:
        page = c.get("/jobs")
        assert page.status_code == 503
        assert "did not answer" not in page.text
        assert "unbroken db migrate" in page.text
        api = c.get("/api/jobs")
        assert api.status_code == 503
        assert "unbroken db migrate" in api.json()["error"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        from unbroken.migrations import migrate

        migrate(conn)
        conn.execute("DROP ROLE IF EXISTS dash_nobody")
        conn.execute("CREATE ROLE dash_nobody LOGIN PASSWORD 'dash-nobody-pw'")
    try:
        parts = psycopg.conninfo.conninfo_to_dict(database_url)
        parts.update(user="dash_nobody", password="dash-nobody-pw")
        nobody = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})
        app = create_app(load_settings(database_url=nobody), credentials=None)
        with serve(app) as url, client(url) as c:
            page = c.get("/jobs")
            assert page.status_code == 403
            assert "did not answer" not in page.text
            assert "permission denied" in page.text
            assert "docs/security.md" in page.text
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP OWNED BY dash_nobody")
            conn.execute("DROP ROLE dash_nobody")
