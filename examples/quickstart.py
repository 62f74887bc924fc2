"""Enqueue a few jobs and run a worker until the queue is empty.

python examples/quickstart.py        # uses UNBROKEN_DATABASE_URL, else the embedded server

Run as a script, this module is `__main__`, so its tasks carry explicit names: a worker
started with `--app quickstart:app` knows them by the same ones (README, "Task names").
"""

from __future__ import annotations

import unbroken

app = unbroken.App()


@app.task(name="quickstart.greet", max_attempts=3, retry=unbroken.Retry(base=0.2, cap=1))
async def greet(name: str) -> str:
    return f"hello {name}"


@app.task(name="quickstart.flaky", max_attempts=2, retry=unbroken.Retry(base=0.1, cap=0.2))
def flaky(n: int) -> None:
    if n % 2:
        raise ValueError(f"{n} is odd")  # retried, then dead (the dead-letter state)


def main() -> None:
    ids = [greet.enqueue("world"), *app.enqueue_many([flaky.job(n) for n in range(4)])]
    app.worker(burst=True, handle_signals=False).run()
    for job_id in ids:
        job = app.get_job(job_id)
        assert job is not None
        print(f"job {job_id} {job['task'].rsplit('.', 1)[-1]}: {job['state']}")
    app.close()


if __name__ == "__main__":
    main()
