"""A periodic task for tests that run real worker processes:
`--app tests.apps.periodic_app:app`.

`every_second` fires each second (croniter's sixth field) and catches up every missed
tick (up to 10,000), so a test can check that each second from the first tick to the last
has exactly one job, whatever workers were killed or servers restarted between them.
"""

from __future__ import annotations

from datetime import datetime

import unbroken

app = unbroken.App()
NAME = "periodic_app.every_second"


@app.periodic("* * * * * *", name=NAME, catch_up=10_000, max_attempts=3)
def every_second(tick: datetime) -> str:
    return tick.isoformat()
