"""Flow control: at most 2 syncs per customer at once, across all workers, and at most 5
calls to the partner API per second; jobs over a limit wait in their place while the
others run. Run as a script (module `__main__`), so the tasks are named explicitly.
"""

from __future__ import annotations

import asyncio
import time

import unbroken

app = unbroken.App()
app.limit("customer", concurrency=2)  # keys "customer:<anything>"
app.limit("partner", rate=5, per=1.0)


@app.task(name="limits.sync_customer", limit_key=lambda customer_id: f"customer:{customer_id}")
async def sync_customer(customer_id: int) -> list[float]:
    started = time.time()
    await asyncio.sleep(0.2)
    return [started, time.time()]


@app.task(name="limits.call_partner", limit_key=lambda _: "partner:api")
def call_partner(n: int) -> None:
    print(f"partner call {n}")


def most_at_once(spans: list[list[float]]) -> int:
    return max(sum(1 for s in spans if s[0] <= t < s[1]) for t, _ in spans)


def main() -> None:
    app.enqueue_many([sync_customer.job(c) for c in (1, 1, 1, 1, 1, 1, 2, 2)])
    app.enqueue_many([call_partner.job(n) for n in range(10)])
    app.worker(burst=True, handle_signals=False, concurrency=10).run()
    with app.database().pool("api").connection() as conn:
        rows = conn.execute(
            "SELECT limit_key, result FROM unbroken.jobs WHERE task = 'limits.sync_customer'"
        ).fetchall()
        windows = conn.execute(
            "SELECT count(*) FROM unbroken.jobs WHERE task = 'limits.call_partner'"
            " GROUP BY date_trunc('second', attempted_at)"
        ).fetchall()
    for key in ("customer:1", "customer:2"):
        spans = [result for k, result in rows if k == key]
        print(f"{key}: {len(spans)} syncs, at most {most_at_once(spans)} at once")
        assert most_at_once(spans) <= 2
    print(f"partner calls per second: {sorted(n for (n,) in windows)}")
    assert max(n for (n,) in windows) <= 5
    app.close()


if __name__ == "__main__":
    main()
