"""Ticks and catch-up of periodic tasks, with explicit times (no database, no clock)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from unbroken import App, ConfigError
from unbroken.periodic import Schedule, schedule

PARIS = ZoneInfo("Europe/Paris")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def paris(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=PARIS)  # type: ignore[misc]


def local_ticks(s: Schedule, after: datetime, until: datetime) -> list[str]:
    """Ticks as the task receives them: wall-clock time and UTC offset in the zone."""
    return [s.local(t).isoformat() for t in s.ticks(after, until)]


def test_a_time_the_spring_forward_skips_fires_once_at_the_shifted_time() -> None:
    s = schedule("t", "30 2 * * *", "Europe/Paris", "latest", 60)
    # 2025-03-30: clocks jump from 02:00 (+01:00) to 03:00 (+02:00); 02:30 does not exist.
    assert local_ticks(s, utc(2025, 3, 28), utc(2025, 4, 1)) == [
        "2025-03-28T02:30:00+01:00",
        "2025-03-29T02:30:00+01:00",
        "2025-03-30T03:30:00+02:00",  # the gap's length later, once
        "2025-03-31T02:30:00+02:00",
    ]


def test_a_time_the_fall_back_repeats_fires_once_at_its_first_occurrence() -> None:
    s = schedule("t", "30 2 * * *", "Europe/Paris", "latest", 60)
    # 2025-10-26: clocks go from 03:00 (+02:00) back to 02:00 (+01:00); 02:30 happens twice.
    assert local_ticks(s, utc(2025, 10, 24), utc(2025, 10, 28)) == [
        "2025-10-24T02:30:00+02:00",
        "2025-10-25T02:30:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]


def test_every_half_hour_across_the_gap_fires_each_instant_once() -> None:
    s = schedule("t", "*/30 * * * *", "Europe/Paris", "latest", 60)
    spring = local_ticks(s, paris(2025, 3, 30, 1, 0), paris(2025, 3, 30, 4, 0))
    # 02:00 and 02:30 map onto 03:00 and 03:30, which the expression names too: once each.
    assert spring == [
        "2025-03-30T01:30:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-30T03:30:00+02:00",
        "2025-03-30T04:00:00+02:00",
    ]
    fall = local_ticks(s, utc(2025, 10, 25, 23, 0), utc(2025, 10, 26, 2, 0))
    # Wall-clock times fire once: the repeated 02:00 and 02:30 (+01:00) do not fire again.
    assert fall == [
        "2025-10-26T01:30:00+02:00",
        "2025-10-26T02:00:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-26T03:00:00+01:00",
    ]


def test_ticks_are_half_open_and_seconds_are_a_sixth_field() -> None:
    s = schedule("t", "* * * * * */2", "UTC", "none", 1)
    assert list(s.ticks(utc(2025, 1, 1, 0, 0, 0), utc(2025, 1, 1, 0, 0, 6))) == [
        utc(2025, 1, 1, 0, 0, 2),
        utc(2025, 1, 1, 0, 0, 4),
        utc(2025, 1, 1, 0, 0, 6),
    ]
    assert s.next_tick(utc(2025, 1, 1, 0, 0, 6)) == utc(2025, 1, 1, 0, 0, 8)


# Ten-second outage of a per-second schedule: ticks 1..10 due at 00:00:10, grace 2 s, so
# 8, 9, 10 are on time and 1..7 were missed.
CURSOR, NOW = utc(2025, 1, 1, 0, 0, 0), utc(2025, 1, 1, 0, 0, 10)


def seconds(*secs: int) -> list[datetime]:
    return [utc(2025, 1, 1, 0, 0, s) for s in secs]


@pytest.mark.parametrize(
    ("catch_up", "enqueued", "skipped"),
    [
        ("none", seconds(8, 9, 10), 7),
        ("latest", seconds(8, 9, 10), 7),  # on-time ticks exist: the missed ones coalesce
        (3, seconds(5, 6, 7, 8, 9, 10), 4),
        (100, seconds(*range(1, 11)), 0),
    ],
)
def test_catch_up_policy(catch_up: str | int, enqueued: list[datetime], skipped: int) -> None:
    plan = schedule("t", "* * * * * *", "UTC", catch_up, 2).plan(CURSOR, NOW)
    assert plan.enqueue == enqueued
    assert plan.skipped == skipped
    if skipped:
        assert plan.skipped_first == seconds(1)[0]
        assert plan.skipped_last == seconds(7 - (len(enqueued) - 3))[0]


def test_latest_enqueues_the_latest_missed_tick_when_none_is_on_time() -> None:
    s = schedule("t", "0 * * * *", "UTC", "latest", 60)
    plan = s.plan(utc(2025, 1, 1, 0, 30), utc(2025, 1, 1, 5, 30))
    assert plan.enqueue == [utc(2025, 1, 1, 5)]
    assert (plan.skipped, plan.skipped_first, plan.skipped_last) == (
        4,
        utc(2025, 1, 1, 1),
        utc(2025, 1, 1, 4),
    )


def test_a_very_long_outage_is_walked_in_bounded_time_with_a_floor_for_the_count() -> None:
    s = schedule("t", "* * * * * *", "UTC", 2, 1)
    plan = s.plan(utc(2025, 1, 1), utc(2025, 1, 10))  # 777,600 ticks
    # The two latest missed ticks, then the two on time (within a second of now).
    assert plan.enqueue == [
        utc(2025, 1, 9, 23, 59, 57),
        utc(2025, 1, 9, 23, 59, 58),
        utc(2025, 1, 9, 23, 59, 59),
        utc(2025, 1, 10),
    ]
    assert not plan.exact
    assert 100_000 <= plan.skipped < 777_600


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression '61 * * * *'"),
        ({"cron": "every day"}, "bad cron expression 'every day'"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"tz": "Europe/Pariss"}, "unknown time zone 'Europe/Pariss'"),
        ({"catch_up": "all"}, "catch_up must be 'none', 'latest' or a number"),
        ({"catch_up": 0}, "catch_up must be 'none', 'latest' or a number"),
        ({"catch_up": True}, "catch_up must be 'none', 'latest' or a number"),
        ({"grace": 0}, "grace must be seconds"),
    ],
)
def test_bad_options_are_one_line_config_errors_at_decoration(
    kwargs: dict[str, object], message: str
) -> None:
    app = App(database_url="postgresql://nowhere/db")
    options: dict[str, object] = {"cron": "*/5 * * * *", **kwargs}
    cron = options.pop("cron")
    with pytest.raises(ConfigError) as caught:

        @app.periodic(cron, name="t.bad", **options)  # type: ignore[arg-type]
        def bad(tick: datetime) -> None:
            pass

    assert message in str(caught.value)
    assert str(caught.value).startswith("periodic task t.bad: ")
    assert "\n" not in str(caught.value)
    assert not app.tasks
    assert not app.schedules


def test_parameters_other_than_the_tick_need_defaults() -> None:
    app = App(database_url="postgresql://nowhere/db")
    with pytest.raises(ConfigError, match="parameters region need defaults"):

        @app.periodic("@daily", name="t.report")
        def report(tick: datetime, region: str) -> None:
            pass


def test_a_task_defined_in_a_script_needs_a_name() -> None:
    app = App(database_url="postgresql://nowhere/db")

    def run_me(tick: datetime) -> None:
        pass

    run_me.__module__ = "__main__"
    with pytest.raises(ConfigError, match=r'give it one: @app\.periodic\(\.\.\., name="myapp\.'):
        app.periodic("@daily")(run_me)


def test_the_task_gets_its_tick_as_a_datetime_in_the_schedule_zone() -> None:
    app = App(database_url="postgresql://nowhere/db")

    @app.periodic("30 2 * * *", tz="Europe/Paris", name="t.sync")
    def sync_report(tick: datetime) -> datetime:
        return tick

    @app.periodic("30 2 * * *", name="t.async")
    async def async_report() -> str:  # no tick parameter: called without one
        return "ran"

    got = sync_report.fn(tick="2025-03-30T01:30:00+00:00")  # as a job's kwargs hold it
    assert got == paris(2025, 3, 30, 3, 30)
    assert got.tzinfo == PARIS
    assert asyncio.run(async_report.fn(tick="2025-03-30T01:30:00+00:00")) == "ran"
    spec = sync_report.job(
        tick=app.schedules["t.sync"][0].local(utc(2025, 3, 30, 1, 30)).isoformat()
    )
    assert spec.args == '{"args":[],"kwargs":{"tick":"2025-03-30T03:30:00+02:00"}}'
    assert sorted(app.schedules) == ["t.async", "t.sync"]


def test_next_tick_after_a_year_without_one_in_the_sample() -> None:
    s = schedule("t", "0 0 29 2 *", "Europe/Paris", "none", 60)  # leap days only
    assert s.local(s.next_tick(utc(2025, 1, 1))) == paris(2028, 2, 29)
    assert timedelta(0) < s.next_tick(utc(2028, 2, 29)) - utc(2028, 2, 29)
