"""Periodic tasks on a real server: exactly one job per tick whatever the number of workers,
none lost or repeated across a SIGKILL and a server restart, and after an outage the
catch-up policy decides what the missed ticks come to (the rest counted as missed).

A per-second schedule (croniter's sixth field) makes ticks come fast. The outage of the
policy tests is a schedule whose cursor a worker left ten days ago: the row is all the
state a schedule has, so that is what ten days without a worker look like.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import warnings
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` under its TestClient; plain httpx is what dev installs.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from apps.harness import FAST_SETTINGS, Probe, running_worker, wait_until, worker_processes
from cli_support import cli, cli_json
from pg import Faults
from unbroken import App, metrics, telemetry
from unbroken.dashboard import create_app
from unbroken.periodic import CatchUp
from unbroken.settings import load_settings

NAME = "periodic_app.every_second"  # the same name as tests/apps/periodic_app.py's task
DAILY = "tests.daily"
PROCESS_SETTINGS = {k: v for k, v in FAST_SETTINGS.items() if k != "max_payload_bytes"}


def every_second_app(url: str, tz: str = "UTC") -> App:
    app = App(database_url=url, **FAST_SETTINGS)

    @app.periodic("* * * * * *", name=NAME, tz=tz, catch_up=10_000)
    def every_second(tick: datetime) -> str:
        return tick.isoformat()

    return app


def jobs_by_tick(probe: Probe, name: str = NAME) -> Counter[datetime]:
    rows = probe.rows(
        "SELECT (args->'kwargs'->>'tick')::timestamptz AS tick FROM unbroken.jobs WHERE task = %s",
        [name],
    )
    return Counter(r["tick"] for r in rows)


def wait_more_ticks(probe: Probe, more: int, timeout: float = 60) -> None:
    start = sum(jobs_by_tick(probe).values())
    wait_until(
        lambda: sum(jobs_by_tick(probe).values()) >= start + more,
        timeout=timeout,
        what=f"{more} more ticks enqueued",
    )


def assert_every_second_once(probe: Probe) -> list[datetime]:
    """Each second from the first tick to the schedule's cursor has exactly one job, and
    the tick records name exactly those jobs."""
    found = jobs_by_tick(probe)
    assert found, "no tick was enqueued"
    twice = {t: n for t, n in found.items() if n > 1}
    assert not twice, f"ticks enqueued more than once: {twice}"
    ticks = sorted(found)
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != timedelta(seconds=1)]
    assert not gaps, f"ticks lost between: {gaps}"
    cursor = probe.value("SELECT checked_until FROM unbroken.schedules WHERE name = %s", [NAME])
    assert ticks[-1] == cursor.replace(microsecond=0), "a tick before the cursor was lost"
    records = probe.rows(
        "SELECT t.tick, (j.args->'kwargs'->>'tick')::timestamptz AS job_tick"
        " FROM unbroken.periodic_ticks AS t JOIN unbroken.jobs AS j ON j.id = t.job_id"
        " WHERE t.name = %s",
        [NAME],
    )
    assert sorted(r["tick"] for r in records) == ticks
    assert all(r["tick"] == r["job_tick"] for r in records)
    return ticks


def test_three_workers_enqueue_each_tick_once_and_the_task_gets_its_tick(
    database_url: str, probe: Probe
) -> None:
    apps = [every_second_app(database_url, tz="Europe/Paris") for _ in range(3)]
    with contextlib.ExitStack() as stack:
        for app in apps:
            stack.enter_context(running_worker(app))
        wait_more_ticks(probe, 6)
    ticks = assert_every_second_once(probe)
    assert len(ticks) >= 6
    done = probe.rows(
        "SELECT args->'kwargs'->>'tick' AS arg, result #>> '{}' AS result FROM unbroken.jobs"
        " WHERE task = %s AND state = 'succeeded'",
        [NAME],
    )
    assert done
    for row in done:  # the task got its tick as a datetime in the schedule's zone
        assert row["result"] == row["arg"]
        assert datetime.fromisoformat(row["result"]).utcoffset() in (
            timedelta(hours=1),
            timedelta(hours=2),
        )
    for app in apps:
        app.close()


def test_sigkill_and_server_outage_lose_no_tick_and_repeat_none(
    database_url: str, probe: Probe, faults: Faults, tmp_path: Path
) -> None:
    app_ref = "tests.apps.periodic_app:app"
    App(database_url=database_url).migrate()
    with worker_processes(database_url, tmp_path, app_ref, **PROCESS_SETTINGS) as start:
        a, b, c = start("a"), start("b"), start("c")
        for proc in (a, b, c):
            proc.wait_registered(probe)
        wait_more_ticks(probe, 3)
        a.signal(signal.SIGKILL)  # perhaps in the middle of a check: it rolls back
        a.wait_exit(30)
        wait_more_ticks(probe, 3)
        faults.stop_for(3)  # ticks fall due while the server is down: enqueued late, once
        wait_more_ticks(probe, 3)
        d = start("d")
        d.wait_registered(probe)
        wait_more_ticks(probe, 3)
        for proc in (b, c, d):
            assert proc.stop() == 0, proc.log()[-3000:]
    assert_every_second_once(probe)


def install_metrics() -> tuple[metrics.Metrics, Any]:
    found = metrics.Metrics(CollectorRegistry())
    return found, telemetry.subscribe(found.handle)


@pytest.mark.parametrize(
    ("catch_up", "enqueued_days_ago"),
    [("none", []), ("latest", [0]), (3, [2, 1, 0])],
    ids=["none", "latest", "three"],
)
def test_after_an_outage_the_policy_decides_and_the_rest_count_as_missed(
    database_url: str, probe: Probe, catch_up: CatchUp, enqueued_days_ago: list[int]
) -> None:
    app = App(database_url=database_url, **FAST_SETTINGS)

    @app.periodic("0 0 * * *", name=DAILY, catch_up=catch_up, grace=1.0)
    def daily(tick: datetime) -> None:
        pass

    app.migrate()
    # Midnights D-10 .. D (D today, UTC) are due: eleven ticks, none on time (grace 1 s).
    outage = probe.rows(
        "INSERT INTO unbroken.schedules (name, cron, tz, catch_up, queue, checked_until)"
        " VALUES (%s, '0 0 * * *', 'UTC', %s, 'default',"
        "  date_trunc('day', now()) - interval '10 days' - interval '1 second')"
        " RETURNING date_trunc('day', now()) AS today, checked_until",
        [DAILY, str(catch_up)],
    )[0]
    found, unsubscribe = install_metrics()
    try:
        with running_worker(app):
            wait_until(
                lambda: probe.value(
                    "SELECT checked_until > %s FROM unbroken.schedules WHERE name = %s",
                    [outage["checked_until"], DAILY],
                ),
                timeout=30,
                what="the first check after the outage",
            )
    finally:
        unsubscribe()
        app.close()
    today = outage["today"]
    expected = [today - timedelta(days=n) for n in enqueued_days_ago]
    assert sorted(jobs_by_tick(probe, DAILY)) == expected
    missed = 11 - len(expected)
    row = probe.rows("SELECT missed, last_tick FROM unbroken.schedules WHERE name = %s", [DAILY])
    assert row[0]["missed"] == missed
    assert row[0]["last_tick"] == (expected[-1] if expected else None)
    counter = found.registry.get_sample_value(
        "unbroken_schedule_ticks_missed_total", {"schedule": DAILY}
    )
    assert counter == missed


def test_schedules_ls_and_the_dashboard_show_next_and_last_run(
    database_url: str, probe: Probe
) -> None:
    app = every_second_app(database_url)
    with running_worker(app):
        wait_more_ticks(probe, 2)
    app.close()
    listed = cli_json(database_url, "schedules", "ls")["schedules"]
    assert [s["name"] for s in listed] == [NAME]
    shown = listed[0]
    assert (shown["cron"], shown["tz"], shown["catch_up"]) == ("* * * * * *", "UTC", "10000")
    last = max(jobs_by_tick(probe))
    assert datetime.fromisoformat(shown["last_run"]) == last
    assert datetime.fromisoformat(shown["next_run"]) == last + timedelta(seconds=1)
    assert shown["last_job_state"] in ("available", "running", "succeeded")
    table = cli(database_url, "schedules", "ls")
    assert table.returncode == 0, table.stderr
    assert NAME in table.stdout
    with TestClient(
        create_app(load_settings(database_url=database_url), credentials=None),
        base_url="http://localhost",
    ) as c:
        page = c.get("/schedules")
    assert page.status_code == 200
    assert NAME in page.text
    assert last.isoformat(sep=" ") in page.text
    assert (last + timedelta(seconds=1)).isoformat(sep=" ") in page.text
