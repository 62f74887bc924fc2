"""Workflows on a real server: results passed downstream, cancellation of dependents,
cancelling a whole workflow through leases, pruning, and a workflow run by worker processes
that are SIGKILLed (and a server restarted) ending with every step run to success once.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # Starlette 1.x asks for `httpx2` under its TestClient; plain httpx is what dev installs.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from apps.harness import FAST_SETTINGS, Probe, running_worker, wait_until, worker_processes
from apps.workflow_app import RUNS_DDL
from apps.workflow_app import step as wf_step
from cli_support import cli, cli_json
from pg import Faults
from unbroken import App, EnqueueError, Permanent, Step, current_job
from unbroken.dashboard import create_app
from unbroken.ops.store import OperatorStore
from unbroken.settings import load_settings
from unbroken.sql import queries
from unbroken.states import JobState

Q = queries()


def states(probe: Probe, workflow_id: int) -> dict[int, str]:
    rows = probe.rows(
        "SELECT id, state::text FROM unbroken.jobs WHERE workflow_id = %s", [workflow_id]
    )
    return {r["id"]: r["state"] for r in rows}


def wait_all_final(probe: Probe, workflow_id: int, timeout: float = 60) -> dict[int, str]:
    def done() -> dict[int, str] | None:
        found = states(probe, workflow_id)
        return (
            found if all(s in ("succeeded", "dead", "cancelled") for s in found.values()) else None
        )

    return wait_until(done, timeout=timeout, what=f"workflow {workflow_id} to end")


def test_fan_out_and_fan_in_pass_results_downstream(app: App, probe: Probe) -> None:
    @app.task(name="wf.extract")
    def extract(n: int) -> int:
        return n

    @app.task(name="wf.square")
    def square(i: int) -> int:
        (base,) = current_job().upstream_results()
        return int(base) * i * i

    @app.task(name="wf.total")
    async def total() -> dict[str, Any]:
        job = current_job()
        return {"sum": sum(job.upstream_results()), "from": [u.task for u in job.upstream]}

    wf = app.workflow("fan")
    first = wf.step(extract.job(10))
    parts = wf.group([square.job(i) for i in (1, 2, 3)], after=first)
    last = wf.step(total.job()).after(parts)
    workflow_id = wf.enqueue()
    assert probe.state(first.job_id or 0) == "available"
    assert {probe.state(p.job_id or 0) for p in parts} | {probe.state(last.job_id or 0)} == {
        "pending"
    }
    with running_worker(app):
        assert set(wait_all_final(probe, workflow_id).values()) == {"succeeded"}
    assert probe.job(last.job_id or 0)["result"] == {"sum": 140, "from": ["wf.square"] * 3}
    # The join ran only after each part had finished.
    finished = probe.value(
        "SELECT max(finished_at) FROM unbroken.jobs WHERE id = ANY(%s)", [[p.job_id for p in parts]]
    )
    assert probe.job(last.job_id or 0)["attempted_at"] > finished


def test_an_upstream_that_dies_cancels_its_dependents_unless_they_run_anyway(
    app: App, probe: Probe
) -> None:
    @app.task(name="wf.fail")
    def fail() -> None:
        raise Permanent("source unreachable")

    @app.task(name="wf.echo")
    def echo(tag: str) -> dict[str, Any]:
        return {"tag": tag, "upstream": [[u.state, u.result] for u in current_job().upstream]}

    wf = app.workflow("failing")
    ok = wf.step(echo.job("ok"))
    bad = wf.step(fail.job())
    child = wf.step(echo.job("child"), after=[ok, bad])
    grandchild = wf.step(echo.job("grandchild"), after=child)
    cleanup = wf.step(echo.job("cleanup"), after=[ok, bad], run_anyway=True)
    workflow_id = wf.enqueue()
    with running_worker(app):
        wait_all_final(probe, workflow_id)
    assert probe.state(bad.job_id or 0) == "dead"
    for step in (child, grandchild):
        job = probe.job(step.job_id or 0)
        assert job["state"] == "cancelled"
        assert job["attempt"] == 0  # never ran
        assert job["errors"][-1]["type"] == "UpstreamFailed"
    assert probe.job(cleanup.job_id or 0)["result"] == {
        "tag": "cleanup",
        "upstream": [["succeeded", {"tag": "ok", "upstream": []}], ["dead", None]],
    }


def test_cancelling_a_workflow_reaches_its_running_job_and_its_scheduled_retry(
    app: App, probe: Probe
) -> None:
    started = threading.Event()

    @app.task(name="wf.long")
    def long() -> None:
        started.set()
        while True:  # stops only when told, at a check
            current_job().check()
            threading.Event().wait(0.05)

    @app.task(name="wf.flaky", retry=__import__("unbroken").Retry(base=3600, cap=3600))
    def flaky() -> None:
        raise RuntimeError("try again in an hour")

    @app.task(name="wf.after")
    def after() -> None: ...

    wf = app.workflow("to cancel")
    running = wf.step(long.job())
    retry = wf.step(flaky.job())
    waiting = wf.step(after.job(), after=[running, retry], run_anyway=True)
    workflow_id = wf.enqueue()
    with running_worker(app):
        probe.wait_state(retry.job_id or 0, "retryable", timeout=30)
        wait_until(started.is_set, timeout=30, what="the long step to start")
        changed = app.cancel_workflow(workflow_id)
        assert changed == {
            running.job_id: "running",  # asked to stop, through its lease
            retry.job_id: "cancelled",
            waiting.job_id: "cancelled",
        }
        probe.wait_state(running.job_id or 0, "cancelled", timeout=30)
    job = probe.job(running.job_id or 0)
    assert job["errors"][-1]["type"] == "JobCancelled"
    assert app.cancel_workflow(workflow_id) == {}


def test_pruning_keeps_the_finished_jobs_of_a_workflow_that_still_runs(
    app: App, probe: Probe, database_url: str
) -> None:
    release = threading.Event()

    @app.task(name="wf.quick")
    def quick() -> str:
        return "upstream result"

    @app.task(name="wf.blocked")
    def blocked() -> None:
        release.wait(60)

    @app.task(name="wf.reader")
    def reader() -> list[Any]:
        return current_job().upstream_results()

    wf = app.workflow("kept")
    first = wf.step(quick.job())
    middle = wf.step(blocked.job(), after=first)
    last = wf.step(reader.job(), after=[first, middle])
    workflow_id = wf.enqueue()
    lone = quick.enqueue()

    def prune() -> int:
        with psycopg.connect(database_url, autocommit=True) as conn:
            params = {"older_than": 0, "states": ["succeeded", "dead", "cancelled"], "limit": 1000}
            rows = conn.execute(Q["job_prune_finished"], params).fetchall()
            conn.execute(Q["workflow_prune_empty"], {"limit": 1000})
        return sum(int(jobs) for _, jobs in rows)

    with running_worker(app):
        probe.wait_state(middle.job_id or 0, "running", timeout=30)
        probe.wait_state(lone, "succeeded", timeout=30)
        assert prune() == 1  # the lone job; not the workflow's finished first step
        assert probe.state(first.job_id or 0) == "succeeded"
        release.set()
        probe.wait_state(last.job_id or 0, "succeeded", timeout=30)
    assert probe.job(last.job_id or 0)["result"] == ["upstream result", None]
    assert prune() == 3
    assert probe.value("SELECT count(*) FROM unbroken.job_deps") == 0
    assert probe.value("SELECT count(*) FROM unbroken.workflows WHERE id = %s", [workflow_id]) == 0


def test_a_workflow_is_written_whole_in_the_callers_transaction(
    app: App, probe: Probe, database_url: str
) -> None:
    @app.task(name="wf.noop")
    def noop() -> None: ...

    wf = app.workflow("rolled back")
    wf.step(noop.job(), after=wf.step(noop.job()))
    with psycopg.connect(database_url) as conn:
        workflow_id = wf.enqueue(conn=conn)
        conn.rollback()
    assert probe.value("SELECT count(*) FROM unbroken.jobs") == 0
    assert probe.value("SELECT count(*) FROM unbroken.workflows") == 0
    assert workflow_id >= 1
    with pytest.raises(EnqueueError, match="enqueued already"):
        wf.enqueue()


def test_steps_are_refused_with_a_clear_line(app: App) -> None:
    @app.task(name="wf.keyed", unique=True)
    def keyed() -> None: ...

    @app.task(name="wf.plain")
    def plain() -> None: ...

    wf = app.workflow("refused")
    with pytest.raises(EnqueueError, match="has a unique key; a workflow's steps take none"):
        wf.step(keyed.job())
    a = wf.step(plain.job())
    b = wf.step(plain.job())
    with pytest.raises(EnqueueError, match="can only follow steps added before it"):
        a.after(b)
    with pytest.raises(EnqueueError, match="another workflow"):
        app.workflow("other").step(plain.job(), after=a)
    with pytest.raises(EnqueueError, match="has no steps"):
        app.workflow("empty").enqueue()


# --- worker processes killed, server restarted --------------------------------------------
def layered_steps(count: int, rng: random.Random) -> list[list[int]]:
    """Each step's upstream steps (1-based), drawn among the steps before it: chains,
    fan-outs and joins."""
    after: list[list[int]] = []
    for n in range(1, count + 1):
        before = list(range(1, n))
        after.append(sorted(rng.sample(before, min(len(before), rng.choice((0, 1, 1, 2, 3))))))
    return after


def test_a_workflow_under_worker_sigkills_runs_each_step_to_success_once(
    app: App, database_url: str, probe: Probe, faults: Faults, tmp_path: Path
) -> None:
    rng = random.Random(14)
    graph = layered_steps(20, rng)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(RUNS_DDL)
        # Every release of a pending step, as the server makes it: one row per transition.
        conn.execute(
            "CREATE TABLE public.wf_releases (job_id bigint, state text, upstream_left int)"
        )
        conn.execute(
            "CREATE FUNCTION public.wf_note_release() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO public.wf_releases VALUES (NEW.id, NEW.state::text,"
            " NEW.upstream_left); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER wf_note_release AFTER UPDATE OF state ON unbroken.jobs FOR EACH ROW"
            " WHEN (OLD.state::text = 'pending' AND NEW.state::text <> 'pending')"
            " EXECUTE FUNCTION public.wf_note_release()"
        )
    steps: list[Step] = []
    wf = app.workflow("killed")
    for n, upstream in enumerate(graph, start=1):
        steps.append(wf.step(wf_step.job(n), after=[steps[u - 1] for u in upstream]))
    workflow_id = wf.enqueue()
    ids = [s.job_id for s in steps]

    settings = {k: v for k, v in FAST_SETTINGS.items() if k != "concurrency"}
    with worker_processes(
        database_url, tmp_path, "tests.apps.workflow_app:app", **settings
    ) as start:
        workers = [start(f"w{i}", concurrency=2) for i in range(3)]
        kills, restarted, round_ = 0, False, 0

        def ended() -> bool:
            return all(
                s in ("succeeded", "dead", "cancelled") for s in states(probe, workflow_id).values()
            )

        while not ended():
            round_ += 1
            # Kill a worker once some step of it is running, then start a new one.
            victim = rng.randrange(len(workers))
            runs_before: int = probe.value("SELECT count(*) FROM public.wf_runs")

            def started(before: int = runs_before) -> bool:
                return ended() or probe.value("SELECT count(*) FROM public.wf_runs") > before

            wait_until(
                started,
                timeout=60,
                what="a step to start",
            )
            if workers[victim].alive():
                workers[victim].signal(signal.SIGKILL)
                workers[victim].wait_exit(30)
                kills += 1
            workers[victim] = start(f"w{victim}-{round_}", concurrency=2)
            if round_ == 5 and not restarted:
                faults.restart()
                restarted = True
            assert round_ < 200, "the workflow did not end"
        final = wait_all_final(probe, workflow_id, timeout=120)
    assert kills >= 3
    assert set(final.values()) == {"succeeded"}, final
    for n, (job_id, upstream) in enumerate(zip(ids, graph, strict=True), start=1):
        job = probe.job(job_id or 0)
        assert job["result"] == n
        # Every run of the step, including runs a kill cut short, saw all of its upstream
        # steps succeeded with their results: a step released early (an upstream counted
        # twice) would have run with one still unfinished.
        runs = probe.rows(
            "SELECT attempt, upstream FROM public.wf_runs WHERE job_id = %s", [job_id]
        )
        assert runs, f"step {n} never ran"
        for run in runs:
            assert run["upstream"] == [{"state": "succeeded", "result": u} for u in upstream]
        # Attempts are never repeated: no run was given a claim twice.
        attempts = [r["attempt"] for r in runs]
        assert len(attempts) == len(set(attempts)), (n, attempts)
        # A step with upstream steps was released exactly once, when its count reached 0.
        releases = probe.rows(
            "SELECT state, upstream_left FROM public.wf_releases WHERE job_id = %s", [job_id]
        )
        if upstream:
            assert releases == [{"state": "available", "upstream_left": 0}], (n, releases)
        else:
            assert releases == []
    assert probe.value("SELECT count(*) FROM unbroken.job_deps WHERE NOT resolved") == 0
    print(
        f"kills={kills} rounds={round_} runs={probe.value('SELECT count(*) FROM public.wf_runs')}"
    )


def test_the_cli_lists_shows_and_cancels_a_workflow(app: App, database_url: str) -> None:
    @app.task(name="wf.cli_step")
    def cli_step() -> None: ...

    wf = app.workflow("nightly")
    first = wf.step(cli_step.job())
    wf.group([cli_step.job(), cli_step.job()], after=first, run_anyway=True)
    workflow_id = wf.enqueue()

    listed = json.loads(cli(database_url, "workflows", "ls", "--json").stdout)["workflows"]
    assert [(w["id"], w["name"], w["state"], w["live"]) for w in listed] == [
        (workflow_id, "nightly", "running", 3)
    ]
    shown = cli(database_url, "workflows", "show", str(workflow_id))
    assert shown.returncode == 0, shown.stderr
    assert "nightly" in shown.stdout
    assert f"{first.job_id} (run anyway)" in shown.stdout
    refused = cli(database_url, "workflows", "cancel", str(workflow_id))
    assert refused.returncode != 0
    assert "pass --yes" in refused.stderr
    done = cli(database_url, "workflows", "cancel", str(workflow_id), "--yes")
    assert done.returncode == 0, done.stderr
    assert f"workflow {workflow_id}: 3 jobs cancelled, 0 running asked to stop" in done.stdout
    missing = cli(database_url, "workflows", "show", "999999")
    assert missing.returncode != 0
    assert "no workflow 999999" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_dashboard_draws_a_workflow_by_level_with_states(app: App, database_url: str) -> None:
    @app.task(name="wf.page_step")
    def page_step() -> None: ...

    wf = app.workflow("drawn")
    first = wf.step(page_step.job())
    parts = wf.group([page_step.job(), page_step.job()], after=first)
    last = wf.step(page_step.job(), after=parts, run_anyway=True)
    workflow_id = wf.enqueue()
    with TestClient(
        create_app(load_settings(database_url=database_url), credentials=None),
        base_url="http://localhost",
    ) as c:
        page = c.get(f"/workflows/{workflow_id}")
        missing = c.get("/workflows/999999")
    assert page.status_code == 200
    text = page.text
    assert "drawn" in text
    assert text.count('class="wf-level"') == 3
    assert text.count('class="state s-pending"') == 3
    assert 'class="state s-available"' in text
    assert f'<a href="#step-{parts[1].job_id}">' in text
    assert "(runs anyway)" in text
    assert text.index(f'id="step-{first.job_id}"') < text.index(f'id="step-{last.job_id}"')
    assert "<script>" not in text
    assert "style=" not in text
    assert missing.status_code == 404


def test_jobs_ls_lists_a_workflows_pending_steps(app: App, database_url: str) -> None:
    # Each state has its own branch in the operators' list (one index scan per state): a
    # state without one would be missing from every `jobs ls` and dashboard page.
    @app.task(name="wf.first")
    def first() -> None: ...

    @app.task(name="wf.then")
    def then() -> None: ...

    wf = app.workflow("listed")
    a = wf.step(first.job())
    b = wf.step(then.job(), after=a)
    wf.enqueue()
    pending = cli_json(database_url, "jobs", "ls", "--state", "pending")
    assert [j["id"] for j in pending["jobs"]] == [b.job_id]
    every = cli_json(database_url, "jobs", "ls")
    assert {j["id"] for j in every["jobs"]} == {a.job_id, b.job_id}
    assert every["matching"] == 2


def test_a_retried_step_waits_again_for_its_retried_upstream(app: App, probe: Probe) -> None:
    failing = {"up": True}

    @app.task(name="wf.up")
    def up() -> str:
        if failing["up"]:
            raise Permanent("first time")
        return "fresh"

    @app.task(name="wf.down")
    def down() -> list[list[Any]]:
        return [[u.state, u.result] for u in current_job().upstream]

    wf = app.workflow("retried")
    first = wf.step(up.job())
    second = wf.step(down.job(), after=first)
    workflow_id = wf.enqueue()
    u, d = first.job_id or 0, second.job_id or 0
    with running_worker(app):
        assert wait_all_final(probe, workflow_id) == {u: "dead", d: "cancelled"}
    failing["up"] = False
    # Retried together, in one statement: the step waits for its upstream's new run.
    assert sorted(app.retry(u, d)) == [u, d]
    assert probe.job(d)["state"] == "pending"
    assert probe.value("SELECT upstream_left FROM unbroken.jobs WHERE id = %s", [d]) == 1
    with running_worker(app):
        assert wait_all_final(probe, workflow_id) == {u: "succeeded", d: "succeeded"}
    assert probe.job(d)["result"] == [["succeeded", "fresh"]]


def test_a_pending_step_cancelled_then_retried_waits_for_its_upstream(
    app: App, probe: Probe
) -> None:
    @app.task(name="wf.src")
    def src() -> str:
        return "src"

    @app.task(name="wf.sink")
    def sink() -> list[Any]:
        return current_job().upstream_results()

    wf = app.workflow("operator")
    first = wf.step(src.job())
    second = wf.step(sink.job(), after=first)
    workflow_id = wf.enqueue()
    u, d = first.job_id or 0, second.job_id or 0
    assert app.cancel(d) == {d: "cancelled"}
    assert app.retry(d) == [d]
    assert probe.state(d) == "pending"  # its upstream has not run yet
    with running_worker(app):
        assert wait_all_final(probe, workflow_id) == {u: "succeeded", d: "succeeded"}
    assert probe.job(d)["result"] == ["src"]


def test_a_pruned_upstream_keeps_its_place_in_a_retried_steps_upstream(
    app: App, probe: Probe, database_url: str
) -> None:
    failing = {"second": True}

    @app.task(name="wf.one")
    def one() -> str:
        return "one"

    @app.task(name="wf.two")
    def two() -> str:
        if failing["second"]:
            raise Permanent("first time")
        return "two"

    @app.task(name="wf.both")
    def both() -> list[list[Any]]:
        return [[u.task, u.state, u.result] for u in current_job().upstream]

    wf = app.workflow("pruned upstream")
    first, second = wf.step(one.job()), wf.step(two.job())
    last = wf.step(both.job(), after=[first, second])
    workflow_id = wf.enqueue()
    with running_worker(app):
        wait_all_final(probe, workflow_id)
    with psycopg.connect(database_url, autocommit=True) as conn:
        OperatorStore(conn).prune(0, [JobState.SUCCEEDED], 100)  # the first step goes
    assert probe.value("SELECT count(*) FROM unbroken.jobs WHERE id = %s", [first.job_id]) == 0
    failing["second"] = False
    assert sorted(app.retry(second.job_id or 0, last.job_id or 0)) == [
        second.job_id,
        last.job_id,
    ]
    with running_worker(app):
        wait_all_final(probe, workflow_id)
    assert probe.job(last.job_id or 0)["result"] == [
        [None, "pruned", None],
        ["wf.two", "succeeded", "two"],
    ]


def test_purging_dead_letters_keeps_a_live_workflows_jobs_and_drops_their_edges(
    app: App, probe: Probe, database_url: str
) -> None:
    release = threading.Event()

    @app.task(name="wf.broken")
    def broken() -> None:
        raise Permanent("broken")

    @app.task(name="wf.hold")
    def hold() -> None:
        release.wait(60)

    wf = app.workflow("purged")
    dead = wf.step(broken.job())
    after_dead = wf.step(broken.job(), after=dead, run_anyway=True)
    held = wf.step(hold.job())
    workflow_id = wf.enqueue()
    ends = [dead.job_id or 0, after_dead.job_id or 0]

    def purge() -> int:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return OperatorStore(conn).dead_letter_purge().changed

    with running_worker(app):
        probe.wait_state(held.job_id or 0, "running", timeout=30)
        probe.wait_state(after_dead.job_id or 0, "dead", timeout=30)
        assert purge() == 0  # the workflow still runs: its steps may read these
        release.set()
        wait_all_final(probe, workflow_id)
    assert purge() == 2
    assert probe.value("SELECT count(*) FROM unbroken.jobs WHERE id = ANY(%s)", [ends]) == 0
    assert probe.value("SELECT count(*) FROM unbroken.job_deps WHERE job_id = ANY(%s)", [ends]) == 0


def _workflow_rows(probe: Probe, workflow_id: int) -> int:
    return int(probe.value("SELECT count(*) FROM unbroken.workflows WHERE id = %s", [workflow_id]))


def test_the_prune_command_forgets_a_workflow_whose_jobs_it_deleted(
    app: App, probe: Probe, database_url: str
) -> None:
    @app.task(name="wf.done")
    def done() -> None: ...

    wf = app.workflow("pruned whole")
    wf.step(done.job(), after=wf.step(done.job()))
    workflow_id = wf.enqueue()
    with running_worker(app):
        wait_all_final(probe, workflow_id)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert OperatorStore(conn).prune(0, [JobState.SUCCEEDED], 100).total == 2
    assert _workflow_rows(probe, workflow_id) == 0


def test_the_leader_forgets_a_workflow_whose_jobs_someone_else_deleted(
    app: App, probe: Probe, database_url: str
) -> None:
    @app.task(name="wf.fails")
    def fails() -> None:
        raise Permanent("no")

    wf = app.workflow("purged by hand")
    wf.step(fails.job())
    workflow_id = wf.enqueue()
    with running_worker(app):
        wait_all_final(probe, workflow_id)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert OperatorStore(conn).dead_letter_purge().changed == 1
    assert _workflow_rows(probe, workflow_id) == 1
    # The leader's pruner finds nothing to delete, and still forgets the empty workflow.
    with running_worker(app, prune_interval=0.1):
        wait_until(
            lambda: _workflow_rows(probe, workflow_id) == 0,
            timeout=15,
            what="the leader to forget the empty workflow",
        )


def test_a_step_whose_result_the_database_refuses_ends_dead(
    app: App, probe: Probe, database_url: str
) -> None:
    @app.task(name="wf.refused")
    def refused() -> dict[str, str]:
        return {"refuse": "me"}

    @app.task(name="wf.reads")
    def reads() -> list[Any]:
        return current_job().upstream_results()

    with psycopg.connect(database_url, autocommit=True) as conn:
        # A rule of the database's own that the worker cannot check before writing.
        conn.execute(
            "ALTER TABLE unbroken.jobs ADD CONSTRAINT test_refuse"
            " CHECK (result IS NULL OR NOT result ? 'refuse')"
        )
    wf = app.workflow("refused result")
    first = wf.step(refused.job())
    second = wf.step(reads.job(), after=first)
    workflow_id = wf.enqueue()
    lone = refused.enqueue()
    with running_worker(app):
        found = wait_all_final(probe, workflow_id)
        probe.wait_state(lone, "succeeded", timeout=30)  # not a step: only the result goes
    assert found == {first.job_id: "dead", second.job_id: "cancelled"}
    assert probe.job(first.job_id or 0)["errors"][-1]["type"] == "ResultNotStorable"
