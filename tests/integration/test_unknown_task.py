"""A job whose task this worker does not know waits for a worker that does (issue 11, item 5).

Two apps share one database: the worker of the app that lacks the task gives the job back
without spending an attempt, with a growing delay and one `TaskNotFound` record on the job
(counting its repeats); the job never goes dead that way. A worker of the app that has the
task then runs it. Tasks named under `__main__` (a script run directly) are refused at
enqueue, since no worker importing that module by its name would find them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apps.harness import FAST_SETTINGS, Probe, running_worker, wait_until
from unbroken import App, EnqueueError


def test_an_unknown_task_waits_unspent_for_a_worker_that_knows_it(
    app: App, database_url: str, probe: Probe
) -> None:
    billing = App(database_url=database_url, **FAST_SETTINGS)

    @billing.task(name="billing.send_invoice", max_attempts=3)
    def send_invoice(number: int) -> str:
        return f"invoice {number} sent"

    @app.task(name="known")
    async def known(n: int) -> int:
        return n

    job_id = send_invoice.enqueue(7)
    before, after = known.enqueue(1), known.enqueue(2)

    # `app` has no billing.send_invoice: its worker keeps giving the job back.
    def given_back_three_times() -> bool:
        row = probe.job(job_id)
        assert row["state"] != "dead", f"the job went dead: {row['errors']}"
        return bool(row["errors"]) and row["errors"][-1].get("times", 0) >= 3

    with running_worker(app, unknown_task_delay=0.2):
        wait_until(given_back_three_times, timeout=30, what="the job given back three times")
        probe.wait_state(before, "succeeded", timeout=10)  # the worker kept going
        probe.wait_state(after, "succeeded", timeout=10)
    row = probe.job(job_id)
    assert row["state"] in ("scheduled", "available"), row["state"]
    assert row["attempt"] == 0  # no attempt spent
    assert row["finished_at"] is None
    [error] = row["errors"]  # one record for the whole run of repeats
    assert (error["type"], error["kind"]) == ("TaskNotFound", "unknown_task")
    assert error["times"] >= 3
    assert "billing.send_invoice" in error["message"]
    assert error["first_at"] <= error["at"]

    # The app that has the task runs it.
    try:
        with running_worker(billing):
            done = probe.wait_state(job_id, "succeeded", timeout=30)
    finally:
        billing.close()
    assert done["attempt"] == 1
    assert done["result"] == "invoice 7 sent"


def define_in_main(app: App, source: str) -> Any:
    """Run `source` as a script's top level (module `__main__`) and return what it defines."""
    namespace: dict[str, Any] = {"__name__": "__main__", "app": app}
    exec(compile(source, "<script>", "exec"), namespace)
    return namespace


SCRIPT = """
@app.task
def build_report(day: str) -> str:
    return day

@app.task(name="reports.build_summary")
def build_summary(day: str) -> str:
    return day
"""


def test_enqueue_refuses_a_task_named_under_main(app: App, probe: Probe) -> None:
    script = define_in_main(app, SCRIPT)
    report = script["build_report"]
    assert report.name == "__main__.build_report"
    assert report("monday") == "monday"  # registered, and callable in the script itself

    for enqueue in (
        lambda: report.enqueue("monday"),
        lambda: report.using(delay=5).enqueue("monday"),
        lambda: app.enqueue_many([report.job("monday")]),
        lambda: asyncio.run(report.aenqueue("monday")),
    ):
        with pytest.raises(EnqueueError) as refused:
            enqueue()
        message = str(refused.value)
        assert "__main__.build_report" in message
        assert "a worker that imports" in message  # why
        assert "name=" in message  # what to do
    assert probe.value("SELECT count(*) FROM unbroken.jobs") == 0

    # An explicit name is the way out.
    summary = script["build_summary"]
    job_id = summary.enqueue("monday")
    assert probe.job(job_id)["task"] == "reports.build_summary"
