"""A poison job (issue 11 item 4): arguments no decoder can read must not take anything
else down.

Enqueue refuses arguments nested deeper than the limit. A row that gets in anyway (another
client's SQL, an older version) goes dead alone at fetch, with its reason, while the other
jobs of its batch run; the operator views (CLI, dashboard, JSON API) show it as text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from apps.harness import FAST_SETTINGS, Probe, running_worker, wait_until
from cli_support import cli
from unbroken import App, EnqueueError
from unbroken.enqueue import MAX_ARGS_DEPTH
from unbroken.ops.format import Undecodable
from unbroken.settings import load_settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from unbroken.dashboard import create_app

T = TypeVar("T")
# Deeper than any Python JSON decoder goes (its recursion limit is 1,000), as another
# client's SQL can write it: PostgreSQL's jsonb takes it.
TOO_DEEP = 2000


def nested(depth: int) -> list[Any]:
    """A list nested `depth` levels deep: [[[...]]]."""
    outer: list[Any] = []
    inner = outer
    for _ in range(depth - 1):
        inner.append([])
        inner = inner[0]
    return outer


def deep_args_text(depth: int) -> str:
    return '{"args":[' + "[" * depth + "]" * depth + '],"kwargs":{}}'


def insert_raw(probe: Probe, task: str, args: str, **cols: Any) -> int:
    """A job row as another client could write it: args is any jsonb text."""
    extra = "".join(f", {name}" for name in cols)
    slots = "".join(", %s" for _ in cols)
    query = (
        f"INSERT INTO unbroken.jobs (queue, task, args{extra}) "
        f"VALUES ('default', %s, %s::jsonb{slots}) RETURNING id"
    )
    return int(probe.value(query.encode(), [task, args, *cols.values()]))


def in_fresh_thread(fn: Callable[[], T]) -> T:
    """Call `fn` on a new thread's nearly empty stack: what a short script's top level has,
    where the JSON encoder's recursion limit lets the most levels through."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


def job_rows(probe: Probe, ids: list[int]) -> dict[int, dict[str, Any]]:
    """State, attempt, rescues and errors, without reading args (a poison row's args
    are what this file is about)."""
    rows = probe.rows(
        "SELECT id, state::text AS state, attempt, rescues, errors FROM unbroken.jobs "
        "WHERE id = ANY(%s)",
        [ids],
    )
    return {r["id"]: r for r in rows}


# --- enqueue ---------------------------------------------------------------------------------
@pytest.fixture
def roomy_app(database_url: str) -> Iterator[App]:
    """The test app with room for deep arguments under the size limit."""
    app = App(database_url=database_url, **{**FAST_SETTINGS, "max_payload_bytes": 100_000})
    app.migrate()
    yield app
    app.close()


def test_enqueue_refuses_arguments_nested_deeper_than_the_limit(
    roomy_app: App, probe: Probe
) -> None:
    app = roomy_app

    @app.task(name="takes_data")
    async def takes_data(data: Any, extra: Any = None) -> None:
        return None

    limit = f"more than {MAX_ARGS_DEPTH} levels deep"
    # The report: from a shallow stack, ~1,000 levels got through the JSON encoder, more
    # than a worker's deeper stack could decode.
    with pytest.raises(EnqueueError, match=f"task takes_data: arguments are nested {limit}"):
        in_fresh_thread(lambda: takes_data.enqueue(nested(900)))
    with pytest.raises(EnqueueError, match=limit):
        takes_data.enqueue(nested(MAX_ARGS_DEPTH + 1))
    with pytest.raises(EnqueueError, match=limit):
        takes_data.enqueue(1, extra={"deep": nested(MAX_ARGS_DEPTH)})  # 65 with the dict
    with pytest.raises(EnqueueError, match=limit):
        asyncio.run(takes_data.aenqueue([{"a": nested(MAX_ARGS_DEPTH)}]))
    with pytest.raises(EnqueueError, match=limit):
        # A batch with one such job is refused whole, before anything is written.
        app.enqueue_many([takes_data.job(1), takes_data.job(nested(5000)), takes_data.job(3)])
    with pytest.raises(EnqueueError, match=r"over the limit of 100,000 .*MAX_PAYLOAD_BYTES"):
        app.enqueue_many([takes_data.job(1), takes_data.job("x" * 100_000)])
    assert int(probe.value("SELECT count(*) FROM unbroken.jobs")) == 0
    # Exactly at the limit is fine, and so are wide arguments with brackets in strings.
    fits = [
        takes_data.enqueue(nested(MAX_ARGS_DEPTH)),
        takes_data.enqueue(1, extra={"deep": nested(MAX_ARGS_DEPTH - 1)}),
        takes_data.enqueue(["[[[[" * 20, {"a": [[1]]}, "]]}}" * 20, *[[[]]] * 30]),
    ]
    assert int(probe.value("SELECT count(*) FROM unbroken.jobs")) == len(fits)


# --- fetch -----------------------------------------------------------------------------------
POISON = {
    # name: (args as jsonb text, what the dead job's error says)
    "too deep": (deep_args_text(TOO_DEEP), "nested too deeply for the JSON decoder"),
    "an array": ("[1, 2]", 'an array, not an object with "args" and "kwargs"'),
    "a string": ('"hello"', "a string, not an object"),
    "args not a list": ('{"args": 5}', '"args" is a number, not a list'),
    "kwargs not an object": ('{"args": [], "kwargs": [1]}', '"kwargs" is an array, not an object'),
}


def test_a_row_that_cannot_be_decoded_goes_dead_alone_and_its_batch_runs(
    app: App, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    @app.task(name="innocent")
    async def innocent(n: int) -> None:
        ran.append(n)

    @app.task(name="anything")
    async def anything(*args: Any, **kwargs: Any) -> None:
        ran.append(-1)

    caplog.set_level(logging.INFO, logger="unbroken")
    innocents = [innocent.enqueue(n) for n in range(4)]
    poison = {name: insert_raw(probe, "anything", text) for name, (text, _) in POISON.items()}
    innocents += [innocent.enqueue(n) for n in range(4, 8)]
    everyone = innocents + list(poison.values())

    def settled() -> bool:
        rows = job_rows(probe, everyone).values()
        final = all(r["state"] in ("succeeded", "dead") for r in rows)
        return final or any(r["rescues"] for r in rows)  # stuck until its lease ran out

    # One fetch claims them all: every slot is free and they are all available.
    with running_worker(app, concurrency=len(everyone) + 4):
        wait_until(settled, timeout=30, what="every job to finish (or a rescue)")
    rows = job_rows(probe, everyone)
    for job_id in innocents:
        assert (rows[job_id]["state"], rows[job_id]["attempt"], rows[job_id]["rescues"]) == (
            "succeeded",
            1,
            0,
        )
    assert sorted(ran) == list(range(8))  # no poison job reached its task
    fetch_errors = [r.getMessage() for r in caplog.records if "fetch failed" in r.getMessage()]
    assert fetch_errors == []
    messages = {r.getMessage() for r in caplog.records if r.name == "unbroken.producer"}
    for name, job_id in poison.items():
        row = rows[job_id]
        assert (row["state"], row["attempt"], row["rescues"]) == ("dead", 1, 0), name
        (error,) = row["errors"]
        assert (error["type"], error["kind"]) == ("UndecodableArgs", "undecodable"), name
        assert POISON[name][1] in error["message"], (name, error["message"])
        logged = [m for m in messages if f"job {job_id}" in m and POISON[name][1] in m]
        assert len(logged) == 1, (name, messages)
    # The dead-letter groups read them like any dead job.
    groups = probe.rows(
        "SELECT errors -> -1 ->> 'type' AS type, count(*) AS n FROM unbroken.jobs "
        "WHERE state = 'dead' GROUP BY 1"
    )
    assert groups == [{"type": "UndecodableArgs", "n": len(POISON)}]


# --- the operator views ----------------------------------------------------------------------
@pytest.fixture
def poisoned(app: App, probe: Probe) -> dict[str, int]:
    """Rows no decoder takes, in the states an operator meets them in."""
    dead_error = json.dumps(
        [
            {
                "attempt": 1,
                "at": "2025-01-01T00:00:00+00:00",
                "worker": "w",
                "type": "UndecodableArgs",
                "message": "arguments cannot be decoded: nested too deeply for the JSON decoder",
                "traceback": None,
                "kind": "undecodable",
            }
        ]
    )
    deep = deep_args_text(TOO_DEEP)
    return {
        "available": insert_raw(probe, "anything", deep),
        "dead": insert_raw(
            probe,
            "anything",
            deep,
            state="dead",
            attempt=1,
            finished_at="now",
            errors=dead_error,
        ),
        # Any jsonb column may hold such a value: a task's result, its progress.
        "succeeded": insert_raw(
            probe,
            "anything",
            '{"args": [], "kwargs": {}}',
            state="succeeded",
            attempt=1,
            finished_at="now",
            result="[" * TOO_DEEP + "]" * TOO_DEEP,
            progress='{"total": 10, "extra": ' + "[" * TOO_DEEP + "]" * TOO_DEEP + "}",
        ),
        "array": insert_raw(probe, "anything", "[1, 2]"),
    }


def test_the_cli_shows_an_undecodable_row(database_url: str, poisoned: dict[str, int]) -> None:
    for command in (["jobs", "ls"], ["dlq", "ls"], ["jobs", "ls", "--args", "[[[["]):
        result = cli(database_url, *command)
        assert result.returncode == 0, (command, result.stderr[-2000:])
    listing = cli(database_url, "jobs", "ls", "--json")
    assert listing.returncode == 0, listing.stderr[-2000:]
    by_id = {j["id"]: j for j in json.loads(listing.stdout)["jobs"]}
    assert by_id[poisoned["available"]]["args"].startswith(
        "<undecodable: nested too deeply to show"
    )
    assert by_id[poisoned["array"]]["args"] == [1, 2]  # decodable, shown as it is
    for job_id in poisoned.values():
        shown = cli(database_url, "jobs", "show", str(job_id))
        assert shown.returncode == 0, (job_id, shown.stderr[-2000:])
        as_json = cli(database_url, "jobs", "show", str(job_id), "--json")
        assert as_json.returncode == 0, (job_id, as_json.stderr[-2000:])
    detail = json.loads(
        cli(database_url, "jobs", "show", str(poisoned["succeeded"]), "--json").stdout
    )
    assert detail["result"].startswith("<undecodable: nested too deeply to show")
    assert "<undecodable" in cli(database_url, "jobs", "show", str(poisoned["dead"])).stdout


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    app = create_app(load_settings(database_url=database_url), credentials=None)
    with TestClient(app, base_url="http://localhost") as c:  # a Host the dashboard answers
        yield c


def test_the_dashboard_shows_an_undecodable_row(
    client: TestClient, poisoned: dict[str, int]
) -> None:
    pages = [
        "/",
        "/jobs",
        "/jobs?state=dead",
        "/jobs?args=%5B%5B%5B",
        "/jobs/confirm?action=retry&state=dead",
        "/dead",
        "/dead/confirm?action=retry",
        "/long",
        *(f"/jobs/{job_id}" for job_id in poisoned.values()),
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, (page, response.text[-2000:])
    assert "&lt;undecodable: nested too deeply to show" in client.get("/jobs").text
    assert (
        "&lt;undecodable: nested too deeply to show" in client.get(f"/jobs/{poisoned['dead']}").text
    )
    assert "UndecodableArgs" in client.get("/dead").text
    api = client.get("/api/jobs")
    assert api.status_code == 200
    by_id = {j["id"]: j for j in api.json()["jobs"]}
    assert by_id[poisoned["available"]]["args"].startswith(
        "<undecodable: nested too deeply to show"
    )
    for job_id in poisoned.values():
        one = client.get(f"/api/jobs/{job_id}")
        assert one.status_code == 200, (job_id, one.text[-2000:])
    assert client.get("/api/dead").status_code == 200


def test_the_store_decodes_defensively_in_one_place(
    database_url: str, poisoned: dict[str, int]
) -> None:
    from unbroken.ops.filters import JobFilter
    from unbroken.ops.store import OperatorStore

    with psycopg.connect(database_url, autocommit=True) as conn:
        store = OperatorStore(conn)
        listed = {j.id: j for j in store.job_list(JobFilter())}
        deep = listed[poisoned["available"]].args
        assert isinstance(deep, Undecodable)
        assert deep.reason == "nested too deeply to show"
        assert len(deep) < 1000  # the text is cut short, not 4,000 brackets
        detail = store.job_get(poisoned["succeeded"])
        assert detail is not None
        assert isinstance(detail.result, Undecodable)
        assert detail.progress_view() is None  # its progress is not an object it can read
        # The caller's own connection is left as it was: it still decodes jsonb itself.
        assert conn.execute("SELECT '[[1]]'::jsonb").fetchone() == ([[1]],)


def test_app_get_job_returns_an_undecodable_row_without_raising(
    app: App, poisoned: dict[str, int]
) -> None:
    job = app.get_job(poisoned["available"])
    assert job is not None
    assert isinstance(job["args"], Undecodable)
    assert job["args"].reason == "nested too deeply to show"
