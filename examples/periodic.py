"""A periodic task: a worker enqueues one job per tick of its cron expression.

python examples/periodic.py        # uses UNBROKEN_DATABASE_URL, else the embedded server

"* * * * * *" fires every second (croniter's sixth field is seconds), so the example ends
within seconds: the third tick's job stops the worker. Any number of workers running this
app enqueue each tick once. As in quickstart.py, the task carries an explicit name.
"""

from __future__ import annotations

from datetime import datetime

import unbroken

app = unbroken.App()
worker = app.worker(handle_signals=False)
seen: list[datetime] = []


@app.periodic("* * * * * *", name="periodic.heartbeat", tz="Europe/Paris", catch_up="none")
def heartbeat(tick: datetime) -> None:
    seen.append(tick)  # an aware datetime in the schedule's time zone
    print(f"tick {tick.isoformat()}")
    if len(seen) == 3:
        worker.stop()  # jobs that are running finish first


def main() -> None:
    worker.run()
    assert len(seen) >= 3, seen
    assert len(set(seen)) == len(seen), "a tick ran twice"
    app.close()


if __name__ == "__main__":
    main()
