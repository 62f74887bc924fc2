"""The dashboard over HTTP (Starlette's TestClient): pages with data, actions, and its guards."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.routing import Mount

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` under its TestClient; plain httpx is what dev installs.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from ops_seed import HOSTILE, Seeded, state_of
from unbroken.dashboard import check_bind, create_app
from unbroken.errors import ConfigError
from unbroken.ops import store as store_module
from unbroken.settings import load_settings

UNBROKEN = str(Path(sys.executable).parent / "unbroken")
LOCAL = "http://localhost"  # a Host the dashboard answers (TestClient's own is "testserver")
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_client(url: str, **kwargs: Any) -> TestClient:
    kwargs.setdefault("credentials", None)
    return TestClient(create_app(load_settings(database_url=url), **kwargs), base_url=LOCAL)


@pytest.fixture
def client(database_url: str, seeded: Seeded) -> Iterator[TestClient]:
    with make_client(database_url) as c:
        yield c


def token_from(html: str) -> str:
    match = TOKEN.search(html)
    assert match, "no CSRF field on the page"
    return match[1]


def test_pages_render_with_data(client: TestClient, seeded: Seeded) -> None:
    overview = client.get("/")
    assert overview.status_code == 200
    html = overview.text
    for text in (
        "Throughput",
        "Failure rate",
        "Backlog per queue",
        "reports",
        "host-b:2:w2",
        "silent",
        "Stuck jobs",
        'data-chart="throughput"',
        "unbroken:dashboard",
    ):
        assert text in html, text
    jobs = client.get("/jobs", params={"state": "dead"})
    assert jobs.status_code == 200
    assert "4 matching" in jobs.text
    assert f'href="/jobs/{seeded.dead_http[0]}"' in jobs.text
    job = client.get(f"/jobs/{seeded.dead_http[0]}")
    assert job.text.count("502 Bad Gateway") >= 3  # every attempt, each with its traceback
    assert "Traceback (most recent call last)" in job.text
    running = client.get(f"/jobs/{seeded.running}")
    assert "120.5 rows/s" in running.text
    assert "host-a:1:w1" in running.text
    assert "&#34;cursor&#34;: 420" in running.text  # JSON, escaped for HTML
    long = client.get("/long")
    assert 'aria-valuenow="42.3"' in long.text
    dead = client.get("/dead")
    assert "HTTPError" in dead.text
    assert "Retry…" in dead.text
    queues = client.get("/queues")
    assert "paused" in queues.text
    assert client.get("/jobs/999999").status_code == 404


def test_text_from_jobs_is_escaped(client: TestClient, seeded: Seeded) -> None:
    for path in ("/jobs", f"/jobs/{seeded.dead_hostile}", "/dead", "/dead/confirm?action=retry"):
        body = client.get(path).text
        assert HOSTILE not in body, path
    # The JSON API carries the text as data, under a type no browser renders as HTML.
    api = client.get("/api/jobs", params={"state": "dead"})
    assert api.headers["content-type"] == "application/json"
    assert "&lt;script&gt;" in client.get(f"/jobs/{seeded.dead_hostile}").text


def test_actions_need_the_csrf_token(client: TestClient, database_url: str, seeded: Seeded) -> None:
    job = seeded.dead_http[0]
    page = client.get(f"/jobs/{job}")
    token = token_from(page.text)
    assert client.cookies.get("unbroken_csrf") == token
    # No token, a forged one, a cross-site request: all refused, nothing changes.
    assert client.post(f"/jobs/{job}/retry").status_code == 403
    forged = "abc.0123456789abcdef0123456789abcdef"
    client.cookies.set("unbroken_csrf", forged)
    refused = client.post(f"/jobs/{job}/retry", data={"csrf_token": forged})
    assert refused.status_code == 403
    assert "CSRF" in refused.text
    client.cookies.set("unbroken_csrf", token)
    cross = client.post(
        f"/jobs/{job}/retry", data={"csrf_token": token}, headers={"sec-fetch-site": "cross-site"}
    )
    assert cross.status_code == 403
    assert state_of(database_url, job) == "dead"
    # The genuine form works, and says so on the next page.
    done = client.post(f"/jobs/{job}/retry", data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303
    assert state_of(database_url, job) == "available"
    assert "queued again" in client.get(done.headers["location"]).text


def test_bulk_actions_go_through_a_confirmation(
    client: TestClient, database_url: str, seeded: Seeded
) -> None:
    confirm = client.get("/jobs/confirm", params={"action": "retry", "queue": "etl"})
    assert "Retry 3 job(s)?" in confirm.text
    assert all(state_of(database_url, i) == "dead" for i in seeded.dead_http)  # a GET did nothing
    token = token_from(confirm.text)
    form = {"csrf_token": token, "action": "retry", "queue": "etl"}
    done = client.post("/jobs/bulk", data=form)
    assert "Retried 3 of 3 job(s)." in done.text
    assert all(state_of(database_url, i) == "available" for i in seeded.dead_http)

    cancel = {"csrf_token": token, "action": "cancel", "task": "emails.send", "state": "available"}
    assert "Cancelled 3 of 3" in client.post("/jobs/bulk", data=cancel).text
    assert state_of(database_url, seeded.available[0]) == "cancelled"


def test_dead_letters_retry_and_purge(
    client: TestClient, database_url: str, seeded: Seeded
) -> None:
    groups = client.get("/api/dead").json()["groups"]
    hostile = next(g for g in groups if g["error_type"] == "ValueError")
    confirm = client.get("/dead/confirm", params={"action": "purge", "key": hostile["key"]})
    assert "Delete 1 dead job(s) for good?" in confirm.text
    token = token_from(confirm.text)
    purged = client.post("/dead/purge", data={"csrf_token": token, "key": hostile["key"]})
    assert "Deleted 1 dead job(s)." in purged.text
    assert state_of(database_url, seeded.dead_hostile) is None
    retried = client.post("/dead/retry", data={"csrf_token": token, "key": ""})
    assert "Retried 3 of 3" in retried.text
    assert client.post("/dead/explode", data={"csrf_token": token}).status_code == 404


def test_queues_pause_and_resume(client: TestClient, database_url: str) -> None:
    token = token_from(client.get("/queues").text)
    assert (
        "Queue etl paused."
        in client.post("/queues/pause", data={"csrf_token": token, "name": "etl"}).text
    )
    paused = {q["name"]: q["paused"] for q in client.get("/api/overview").json()["queues"]}
    assert paused == {"default": False, "etl": True, "reports": True}
    client.post("/queues/resume", data={"csrf_token": token, "name": "etl"})
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT paused FROM unbroken.queues WHERE name = 'etl'").fetchone()
    assert row == (False,)


def test_read_only_shows_everything_and_allows_nothing(database_url: str, seeded: Seeded) -> None:
    with make_client(database_url, read_only=True) as client:
        page = client.get(f"/jobs/{seeded.dead_http[0]}")
        assert "read-only" in page.text
        assert 'method="post"' not in page.text
        for path in ("/", "/jobs", "/dead", "/queues", "/long"):
            assert 'method="post"' not in client.get(path).text, path
        token = client.cookies.get("unbroken_csrf")
        refused = client.post(f"/jobs/{seeded.dead_http[0]}/retry", data={"csrf_token": token})
        assert refused.status_code == 403
        assert "read-only" in refused.text
    assert state_of(database_url, seeded.dead_http[0]) == "dead"


def test_basic_auth_guards_all_but_the_probes(database_url: str, seeded: Seeded) -> None:
    with make_client(database_url, credentials=("ops", "s3cret")) as client:
        assert client.get("/").status_code == 401
        assert client.get("/").headers["www-authenticate"].startswith("Basic")
        assert client.get("/", auth=("ops", "wrong")).status_code == 401
        assert client.get("/", auth=("ops", "s3cret")).status_code == 200
        assert client.get("/health").status_code == 401  # reasons name queues: private
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code in (200, 503)


def test_binding_beyond_loopback_needs_credentials() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "dashboard.example.com"):
        with pytest.raises(ConfigError, match="without credentials"):
            check_bind(host, None)
        check_bind(host, ("ops", "k7-vanilla-Quartz-9x"))


def test_the_command_refuses_a_public_bind_without_credentials(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNBROKEN_DASHBOARD")}
    env["UNBROKEN_DATABASE_URL"] = database_url
    result = subprocess.run(
        [UNBROKEN, "dashboard", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to serve the dashboard on 0.0.0.0 without credentials" in result.stderr
    half = subprocess.run(
        [UNBROKEN, "dashboard", "--host", "0.0.0.0", "--port", "1"],
        env={**env, "UNBROKEN_DASHBOARD_USER": "ops"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert half.returncode == 2
    assert "set both" in half.stderr


def test_json_health_and_metrics(client: TestClient, seeded: Seeded) -> None:
    overview = client.get("/api/overview").json()
    assert overview["totals"]["dead"] == 4
    assert overview["health"]["status"] == "degraded"
    assert len(overview["series"]) == 60
    jobs = client.get("/api/jobs", params={"state": "running"}).json()["jobs"]
    assert {j["id"] for j in jobs} == {seeded.running, seeded.stuck}
    assert client.get("/api/jobs", params={"state": "nope"}).status_code == 400
    job = client.get(f"/api/jobs/{seeded.running}").json()
    assert job["progress_view"]["fraction"] == pytest.approx(0.423)
    assert client.get("/api/long").json()["jobs"][0]["id"] == seeded.stuck
    health = client.get("/health")
    assert health.status_code == 200  # degraded is still ready
    assert health.json()["status"] == "degraded"
    assert client.get("/health/ready").json() == {"ready": True, "status": "degraded"}
    assert client.get("/health/live").json() == {"live": True}
    metrics = client.get("/metrics").text
    assert 'unbroken_jobs{queue="default",state="available"} 3.0' in metrics
    assert 'unbroken_pool_max_connections{role="dashboard"}' in metrics


def test_unhealthy_is_503(client: TestClient, database_url: str, seeded: Seeded) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE unbroken.workers SET heartbeat_at = now() - interval '1 hour'")
    assert client.get("/health").status_code == 503
    # Silent workers are the jobs' problem, not this process's: it still serves.
    assert client.get("/health/ready").json() == {"ready": True, "status": "unhealthy"}


def test_mounts_inside_another_app(database_url: str, seeded: Seeded) -> None:
    dashboard = create_app(load_settings(database_url=database_url), credentials=None)
    host = Starlette(routes=[Mount("/ops", app=dashboard)])
    try:
        with TestClient(host, base_url=LOCAL) as client:
            page = client.get("/ops/jobs")
            assert page.status_code == 200
            assert f'href="/ops/jobs/{seeded.running}"' in page.text
            assert 'href="/ops/static/app.css"' in page.text
            assert client.get("/ops/static/app.js").status_code == 200
            token = token_from(client.get("/ops/queues").text)
            done = client.post(
                "/ops/queues/pause",
                data={"csrf_token": token, "name": "etl"},
                follow_redirects=False,
            )
            assert done.headers["location"] == "/ops/queues"
    finally:
        dashboard.state.dashboard.close()  # a mounted app gets no lifespan of its own


def test_polling_gets_the_same_page_without_consuming_the_flash(client: TestClient) -> None:
    token = token_from(client.get("/queues").text)
    client.post("/queues/pause", data={"csrf_token": token, "name": "etl"}, follow_redirects=False)
    polled = client.get("/queues", headers={"x-unbroken-poll": "1"})
    assert 'id="queues" data-live' in polled.text
    assert "Queue etl paused." not in polled.text
    assert "Queue etl paused." in client.get("/queues").text


def test_a_database_outage_is_a_503_page_not_a_traceback() -> None:
    settings = load_settings(database_url="postgresql://nobody@127.0.0.1:1/none", startup_wait=0)
    with TestClient(create_app(settings, credentials=None), base_url=LOCAL) as client:
        page = client.get("/")
        assert page.status_code == 503
        assert "Database unavailable" in page.text
        assert client.get("/api/overview").status_code == 503
        assert client.get("/health/live").status_code == 200  # the process itself is fine
        assert client.get("/health/ready").status_code == 503


def test_a_search_by_arguments_links_to_where_it_stopped(
    client: TestClient, database_url: str, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The jobs page searches at most SEARCH_LIMIT candidates (never fewer than its 50 rows)
    # for a filter no index answers: it says how many it read and links to the next stretch.
    monkeypatch.setattr(store_module, "SEARCH_LIMIT", 3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO unbroken.jobs (task, state, finished_at)"
            " SELECT 'bulk.task', 'succeeded', now() FROM generate_series(1, 120)"
        )
    first = client.get("/jobs", params={"args": "welcome"})  # the oldest jobs' args
    assert first.status_code == 200
    assert "No job matches among these." in first.text
    assert "Searched the newest 50 jobs." in first.text
    pages = [first]
    while seeded_job(seeded.available[0]) not in pages[-1].text:
        link = re.search(r'href="\?([^"]*before=\d+[^"]*)">Search older', pages[-1].text)
        assert link, "the search ended without the job"
        assert len(pages) < 5
        pages.append(client.get("/jobs?" + html.unescape(link[1])))
    assert "below id" in pages[-2].text  # a later stretch says where it started
    assert "Search older" not in pages[-1].text  # the last stretch reached the oldest job
    api = client.get("/api/jobs", params={"args": "welcome"}).json()
    assert api["jobs"] == []
    assert api["searched"]["jobs"] == 50
    assert api["searched"]["stopped_at"] == int(re.findall(r"before=(\d+)", first.text)[-1])


def seeded_job(job_id: int) -> str:
    return f'href="/jobs/{job_id}"'
