"""Bad input at the public API, on a real server (issue 12).

Whatever a caller passes, `enqueue`, `aenqueue`, `job` + `enqueue_many` and the caller's own
connection either write the job or raise one `EnqueueError` line naming the task: never
psycopg's error, a TypeError, an OverflowError or a UnicodeEncodeError from deeper down, and
nothing is written. `@app.task` and `App.set_chunk_size` refuse what no worker could use
with a `ConfigError`.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from apps.harness import Probe
from unbroken import App, ConfigError, EnqueueError, JobSpec, Task

BAD_OPTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("queue-nul", {"queue": "mail\x00"}, "queue name"),
    ("queue-empty", {"queue": ""}, "queue name"),
    ("queue-surrogate", {"queue": "mail\udc80"}, "queue name"),
    ("unique-nul", {"unique_key": "order\x00"}, "unique key"),
    ("unique-surrogate", {"unique_key": "order\ud800"}, "unique key"),
    ("unique-int", {"unique_key": 42}, "unique_key must be a string"),
    # the unique index takes entries up to ~2,700 bytes (random text does not compress)
    ("unique-long", {"unique_key": "k" + "".join(f"{n:x}" for n in range(1200))}, "over the limit"),
    ("priority-bool", {"priority": True}, "priority must be an integer"),
    ("priority-str", {"priority": "5"}, "priority must be an integer"),
    ("priority-float", {"priority": 1.5}, "priority must be an integer"),
    ("priority-huge", {"priority": 2**40}, "outside -32768..32767"),
    ("attempts-bool", {"max_attempts": True}, "max_attempts must be an integer"),
    ("attempts-str", {"max_attempts": "3"}, "max_attempts must be an integer"),
    ("attempts-float", {"max_attempts": 2.5}, "max_attempts must be an integer"),
    ("attempts-huge", {"max_attempts": 2**31}, "max_attempts must be 1 to 2147483647"),
    ("delay-far", {"delay": 1e12}, "too far"),
    ("delay-max", {"delay": timedelta.max}, "too far"),
    ("delay-nan", {"delay": math.nan}, "delay must be"),
    ("delay-str", {"delay": "60"}, "delay must be seconds or a timedelta"),
    ("delay-bool", {"delay": True}, "delay must be seconds or a timedelta"),
    ("run-at-str", {"run_at": "2030-01-01T00:00:00+00:00"}, "run_at must be a datetime"),
    ("run-at-date", {"run_at": date(2030, 1, 1)}, "run_at must be a datetime"),
]

BAD_ARGS: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
    ("nul-in-string", ("a\x00b",), {}, "NUL character"),
    ("surrogate-in-string", ("caf\udce9",), {}, "lone surrogate"),
    ("nul-in-key", ({"k\x00": 1},), {}, "NUL character"),
    ("surrogate-in-key", ({"\udfff": 1},), {}, "lone surrogate"),
    ("nul-in-kwarg-name", (), {"a\x00": 1}, "NUL character"),
    ("nul-deep", ([[{"x": ["\x00"]}]],), {}, "NUL character"),
]


def make_app(database_url: str) -> tuple[App, Task[..., Any]]:
    app = App(database_url=database_url, max_payload_bytes=10_000)

    @app.task(name="sec.anything")
    def anything(*args: Any, **kwargs: Any) -> None: ...

    app.migrate()
    return app, anything


def every_path(
    task: Task[..., Any], app: App, url: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Callable[[], Any]]:
    """Every way a caller enqueues `task(*args, **kwargs)`, each as a thunk."""

    def caller_conn_one() -> Any:
        with psycopg.connect(url, autocommit=True) as conn:
            return task.using(conn=conn).enqueue(*args, **kwargs)

    def caller_conn_many() -> Any:
        with psycopg.connect(url, autocommit=True) as conn:
            return app.enqueue_many([task.job(*args, **kwargs)], conn=conn)

    return {
        "enqueue": lambda: task.enqueue(*args, **kwargs),
        "aenqueue": lambda: asyncio.run(task.aenqueue(*args, **kwargs)),
        "enqueue_many": lambda: app.enqueue_many([task.job(*args, **kwargs)] * 3),
        "aenqueue_many": lambda: asyncio.run(app.aenqueue_many([task.job(*args, **kwargs)])),
        "caller-conn": caller_conn_one,
        "caller-conn-many": caller_conn_many,
    }


def assert_refused_everywhere(
    paths: dict[str, Callable[[], Any]], reason: str, case: str, probe: Probe
) -> None:
    """Each path raises one EnqueueError line naming the task and `reason`; nothing written."""
    for how, thunk in paths.items():
        with pytest.raises(EnqueueError) as info:
            thunk()
        message = str(info.value)
        assert re.search(reason, message), f"{case} via {how}: {message}"
        assert message.startswith("task sec.anything: "), f"{case} via {how}: {message}"
        assert "\n" not in message
    assert probe.value("SELECT count(*) FROM unbroken.jobs") == 0


@pytest.mark.parametrize(
    ("case", "options", "reason"), BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS]
)
def test_bad_options_are_one_enqueue_error_on_every_path(
    database_url: str, probe: Probe, case: str, options: dict[str, Any], reason: str
) -> None:
    app, task = make_app(database_url)
    try:
        paths = every_path(task.using(**options), app, database_url, (1,), {})
        assert_refused_everywhere(paths, reason, case, probe)
    finally:
        app.close()


@pytest.mark.parametrize(
    ("case", "args", "kwargs", "reason"), BAD_ARGS, ids=[c[0] for c in BAD_ARGS]
)
def test_bad_arguments_are_one_enqueue_error_on_every_path(
    database_url: str,
    probe: Probe,
    case: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    reason: str,
) -> None:
    app, task = make_app(database_url)
    try:
        # COPY, and the multi-row insert that unique keys take
        for configured in (task, task.using(unique_key="k")):
            paths = every_path(configured, app, database_url, args, kwargs)
            assert_refused_everywhere(paths, reason, case, probe)
    finally:
        app.close()


def test_a_unique_key_function_returning_a_nul_is_refused(database_url: str) -> None:
    app = App(database_url=database_url)

    @app.task(name="sec.keyed", unique=lambda n: f"n\x00{n}")
    def keyed(n: int) -> None: ...

    try:
        with pytest.raises(EnqueueError, match=r"^task sec\.keyed: unique key"):
            keyed.enqueue(1)
    finally:
        app.close()


def test_a_unique_task_with_big_arguments_still_deduplicates(database_url: str) -> None:
    """unique=True keys on the task and its arguments: past what the unique index takes,
    on a digest of them."""
    app = App(database_url=database_url)

    @app.task(name="sec.report", unique=True)
    def report(rows: list[str]) -> None: ...

    @app.task(name="sec.keyed_long", unique=lambda n: "x" * 3000)
    def keyed_long(n: int) -> None: ...

    big = [f"{n:x}-{n * 7919 % 10007}" for n in range(1000)]
    try:
        first = report.enqueue(big)
        assert report.enqueue(big) == first
        assert report.enqueue(big[:-1]) != first
        with pytest.raises(EnqueueError, match="over the limit"):
            keyed_long.enqueue(1)
    finally:
        app.close()


def test_what_only_looks_like_a_bad_character_is_written_and_read_back(
    database_url: str, probe: Probe
) -> None:
    app, task = make_app(database_url)
    text = "\\u0000 \\ud800 caf\u00e9 \U0001f600"  # escapes as text, and a surrogate pair
    try:
        one = task.using(unique_key="\U0001f600", queue="caf\u00e9").enqueue(text, k={text: 1})
        many = app.enqueue_many([task.job(text), task.job(text)])
        later = datetime(9999, 12, 31, tzinfo=UTC)
        far = task.using(run_at=later, max_attempts=2**31 - 1, priority=-32768).enqueue(text)
        for job_id in (one, *many, far):
            row = probe.job(job_id)
            assert row["args"]["args"][0] == text
        assert probe.job(one)["args"]["kwargs"] == {"k": {text: 1}}
        assert probe.job(one)["unique_key"] == "\U0001f600"
        assert probe.job(far)["run_at"] == later
    finally:
        app.close()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"timeout": math.nan}, "timeout must be"),
        ({"timeout": math.inf}, "timeout must be"),
        ({"timeout": 1e300}, "timeout must be"),
        ({"timeout": "30"}, "timeout must be"),
        ({"timeout": True}, "timeout must be"),
        ({"max_attempts": 2**31}, "max_attempts must be 1 to 2147483647"),
        ({"max_attempts": 2.0}, "max_attempts must be an integer"),
        ({"max_attempts": True}, "max_attempts must be an integer"),
        ({"max_attempts": "5"}, "max_attempts must be an integer"),
        ({"priority": "high"}, "priority must be an integer"),
        ({"priority": 40_000}, "outside -32768..32767"),
        ({"queue": "mail\x00"}, "queue name"),
        ({"queue": ""}, "queue name"),
        ({"name": "a\x00b"}, "task name"),
        ({"name": "caf\udce9"}, "task name"),
        ({"chunk_size": 1.5}, "chunk_size must be"),
        ({"chunk_size": 2**31}, "chunk_size must be"),
    ],
)
def test_the_task_decorator_refuses_what_no_worker_could_use(
    options: dict[str, Any], reason: str
) -> None:
    app = App(database_url="postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigError, match=reason) as info:
        app.task(**options)(lambda: None)
    assert "\n" not in str(info.value)
    assert app.tasks == {}


def test_set_chunk_size_refuses_a_task_the_app_does_not_have(
    database_url: str, probe: Probe
) -> None:
    app = App(database_url=database_url)

    @app.task(name="sec.export", chunk_size=500)
    def export() -> None: ...

    try:
        with pytest.raises(
            ConfigError, match=r"no task named 'sec.exprot'.*did you mean sec.export"
        ):
            app.set_chunk_size("sec.exprot", 100)
        for bad in (True, 1.5, "100", 0, 2**31):
            with pytest.raises(ConfigError, match="chunk_size must be"):
                app.set_chunk_size("sec.export", bad)  # type: ignore[arg-type]
        app.set_chunk_size("sec.export", 100)
        rows = probe.rows("SELECT task, chunk_size FROM unbroken.task_settings")
        assert [(r["task"], r["chunk_size"]) for r in rows] == [("sec.export", 100)]
    finally:
        app.close()


def test_errors_say_what_was_refused_without_echoing_the_data(database_url: str) -> None:
    app, task = make_app(database_url)
    try:
        secret = "4111-1111-1111-1111\x00"
        with pytest.raises(EnqueueError) as info:
            task.enqueue(secret)
        assert "4111" not in str(info.value)
        assert json.dumps(str(info.value))  # one printable line
    finally:
        app.close()


@pytest.mark.parametrize("name", ["worker\x00a", "caf\udce9"])
def test_an_application_name_postgresql_cannot_take_is_one_config_error(
    database_url: str, name: str
) -> None:
    """libpq takes C strings: a NUL would cut the name short (a lone surrogate no encoding
    holds); refused where the settings are read, in one line."""
    with pytest.raises(ConfigError, match=r"^application_name: ") as info:
        App(database_url=database_url, application_name=name)
    assert "\n" not in str(info.value)


# A JobSpec built by hand (the public type enqueue_many takes) is checked as a task's call
# is: the bad options above, with what only a hand-built one can hold besides.
HAND_BUILT: list[tuple[str, dict[str, Any], str]] = [
    *[(case, opts, reason) for case, opts, reason in BAD_OPTIONS if "delay" not in opts],
    ("queue-tab", {"queue": "mail\tx"}, "queue name"),  # a column break in COPY's text
    ("task-newline", {"task": "sec\n2\tx"}, "task name"),  # a row break
    ("task-int", {"task": 7}, "task name"),
    ("attempts-zero", {"max_attempts": 0}, "max_attempts must be >= 1"),
    ("run-at-naive", {"run_at": datetime(2030, 1, 1)}, "timezone-aware"),
    ("args-nul", {"args": '{"args": ["\\u0000"], "kwargs": {}}'}, "NUL character"),
    ("args-surrogate", {"args": '{"args": [], "kwargs": {"k": "\\udc80"}}'}, "lone surrogate"),
    ("args-raw-nul", {"args": '{"args": ["\x00"]}'}, "not JSON"),
    ("args-not-json", {"args": "{oops"}, "not JSON"),
    ("args-nan", {"args": '{"args": [NaN]}'}, "not JSON"),
    ("args-list", {"args": "[1, 2]"}, 'not an object with "args"'),
    ("args-kwargs-list", {"args": '{"kwargs": [1]}'}, '"kwargs" is an array'),
    ("args-bytes", {"args": b'{"args": []}'}, "args must be JSON text"),
    ("args-deep", {"args": '{"args": ' + "[" * 70 + "]" * 70 + "}"}, "nested more than"),
]


def hand_built(**changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "queue": "default",
        "task": "sec.anything",
        "args": '{"args": [1], "kwargs": {}}',
        "priority": 0,
        "run_at": None,
        "max_attempts": 3,
        "unique_key": None,
    }
    return JobSpec(**{**fields, **changes})


@pytest.mark.parametrize(("case", "changes", "reason"), HAND_BUILT, ids=[c[0] for c in HAND_BUILT])
def test_a_hand_built_job_spec_is_checked_as_enqueue_checks_a_call(
    case: str, changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(EnqueueError) as info:
        hand_built(**changes)
    message = str(info.value)
    assert re.search(reason, message), message
    assert re.match(r"task (sec\.anything|'.*'|\d+): ", message, re.S), message
    assert "\n" not in message


def test_a_hand_built_job_spec_is_written_as_a_calls_would_be(
    database_url: str, probe: Probe
) -> None:
    """Its arguments are written as enqueue writes them (the JSON re-encoded, so layout
    between tokens never reaches COPY's text); enqueue_many checks it again, with the
    app's payload limit; a refused batch writes nothing."""
    app, task = make_app(database_url)
    try:
        spaced = hand_built(args='{"args": [1,\n\t"caf\\u00e9"],\r\n "kwargs": {}}')
        big = hand_built(args=json.dumps({"args": ["x" * 20_000], "kwargs": {}}))
        for enqueue in (
            lambda jobs: app.enqueue_many(jobs),
            lambda jobs: asyncio.run(app.aenqueue_many(jobs)),
        ):
            with pytest.raises(EnqueueError, match="over the limit of 10,000"):
                enqueue([spaced, big])
            assert probe.value("SELECT count(*) FROM unbroken.jobs") == 0
        changed = hand_built()
        changed.queue = "mail\tx"  # after its check: enqueue_many checks it again
        with pytest.raises(EnqueueError, match="queue name 'mail"):
            app.enqueue_many([changed])
        ids = app.enqueue_many([spaced, task.job(1, "caf\u00e9"), spaced])
        rows = [probe.job(i) for i in ids]
        assert [r["args"] for r in rows] == [{"args": [1, "caf\u00e9"], "kwargs": {}}] * 3
        assert probe.value("SELECT count(DISTINCT args::text) FROM unbroken.jobs") == 1
    finally:
        app.close()
