"""A workflow: extract, then three transforms at once (fan-out), then one load of them all
(fan-in), each step reading its upstream results; a worker runs it to the end.

python examples/workflow.py        # uses UNBROKEN_DATABASE_URL, else the embedded server

The whole workflow is written in one transaction; a step waits (pending) until its
upstream jobs succeeded, and is released in the same transaction as the last of them. As
in quickstart.py, the tasks carry explicit names.
"""

from __future__ import annotations

import unbroken
from unbroken import current_job

app = unbroken.App()
worker = app.worker(handle_signals=False)


@app.task(name="workflow.extract")
def extract(day: str) -> list[int]:
    return [3, 1, 4, 1, 5, 9, 2, 6]  # the day's rows


@app.task(name="workflow.transform")
def transform(part: int, parts: int) -> int:
    (rows,) = current_job().upstream_results()  # extract's return value
    return sum(rows[part::parts])


@app.task(name="workflow.load")
def load() -> int:
    total = sum(current_job().upstream_results())  # the transforms', in declared order
    print(f"loaded {total}")
    worker.stop()  # the example is done
    return total


def main() -> None:
    wf = app.workflow("nightly")
    raw = wf.step(extract.job("2025-06-01"))
    parts = wf.group([transform.job(i, 3) for i in range(3)], after=raw)  # fan-out
    last = wf.step(load.job(), after=parts)  # fan-in: runs once all three succeeded
    workflow_id = wf.enqueue()
    print(f"workflow {workflow_id}: jobs {[s.job_id for s in wf.steps]}")
    worker.run()
    job = app.get_job(last.job_id or 0)
    assert job is not None
    assert job["state"] == "succeeded", job
    assert job["result"] == 31, job["result"]
    app.close()


if __name__ == "__main__":
    main()
