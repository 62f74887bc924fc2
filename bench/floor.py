"""The SQL floor: unbroken's own dequeue and complete statements with no runtime around them.

The same 20,000 jobs, the same named statements (`job_get_available` with a LIMIT, then
`job_finish_many` marking the claimed jobs succeeded), from one Python process with psycopg
and no pool, no executor, no buffers, sent as the runtime sends them (unprepared, as its
producer and completer do now). Two shapes:

- sequential: one connection, claim a batch, finish it, repeat (every statement waits for
  the one before);
- pipelined: two connections in one asyncio loop, one claiming while the other finishes
  the previous batch (as a worker's producer and completer overlap).

The best of them is "the floor": what the statements cost the server and the driver. The
runtime's figure as a fraction of it is what the runtime itself costs.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import psycopg

from bench import server as pg
from bench.common import Repeated, fmt, progress, say, table
from bench.cpu import CpuWindow, quietest, wait_for_quiet
from bench.throughput import Bench, cpu_text

DB = "bench_floor"
WORKER_ID = "floor"


_PARAM = re.compile(rb"%\((\w+)\)s")


def _finish_params(sql: bytes, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """job_finish_many's parameters for "these rows succeeded", by the names the SQL uses."""
    n = len(rows)
    values: dict[str, Any] = {
        "ids": [r[0] for r in rows],
        "attempts": [r[4] for r in rows],
        "states": ["succeeded"] * n,
        "kinds": ["succeeded"] * n,
        "delays": [None] * n,
        "errors": [None] * n,
        "results": [None] * n,
        "runtimes": [0] * n,
        "claims": [r[12] for r in rows],
        "progress": None,
        "worker_id": WORKER_ID,
    }
    names = {m.decode() for m in _PARAM.findall(sql)}
    unknown = names - values.keys()
    if unknown:
        raise RuntimeError(f"job_finish_many takes parameters the floor does not know: {unknown}")
    return {name: values[name] for name in names}


def sequential(bench: Bench, batch: int) -> None:
    q = bench.app.app.queries
    fetch = {"queues": ["default"], "limit": batch, "worker_id": WORKER_ID, "lease": 30.0}
    with psycopg.connect(bench.url, autocommit=True) as conn:
        while rows := conn.execute(q["job_get_available"], fetch, prepare=False).fetchall():
            finish = _finish_params(q["job_finish_many"], rows)
            conn.execute(q["job_finish_many"], finish, prepare=False).fetchall()


async def pipelined(bench: Bench, batch: int) -> None:
    q = bench.app.app.queries
    fetch = {"queues": ["default"], "limit": batch, "worker_id": WORKER_ID, "lease": 30.0}
    queue: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=2)

    async def claimer() -> None:
        async with await psycopg.AsyncConnection.connect(bench.url, autocommit=True) as conn:
            while True:
                cur = await conn.execute(q["job_get_available"], fetch, prepare=False)
                rows = await cur.fetchall()
                await queue.put(rows or None)
                if not rows:
                    return

    async def finisher() -> None:
        async with await psycopg.AsyncConnection.connect(bench.url, autocommit=True) as conn:
            while (rows := await queue.get()) is not None:
                finish = _finish_params(q["job_finish_many"], rows)
                await (await conn.execute(q["job_finish_many"], finish, prepare=False)).fetchall()

    await asyncio.gather(claimer(), finisher())


def run_once(bench: Bench, shape: str, batch: int, jobs: int) -> tuple[float, dict[str, float]]:
    """jobs/s of one drain, and the machine's CPU meanwhile."""
    bench.refill("async", jobs)
    wait_for_quiet()
    window = CpuWindow(bench.server.local.pid()).start()
    if shape == "sequential":
        sequential(bench, batch)
    else:
        asyncio.run(pipelined(bench, batch))
    window.stop()
    pg.wait_no_backends(bench.server.admin_url, bench.db)
    seconds, _ = bench.elapsed(jobs)
    return jobs / seconds, window.as_json()


def measure(bench: Bench, shape: str, batch: int, jobs: int) -> tuple[float, dict[str, float]]:
    return quietest(lambda: run_once(bench, shape, batch, jobs), lambda r: r[1]["others_cpu_pct"])


def run_section(
    server: pg.BenchServer, *, jobs: int, batches: list[int], repeat: int
) -> dict[str, Any]:
    bench = Bench.open(server, DB)
    try:
        rates: dict[tuple[str, int], Repeated] = {}
        cpus: dict[tuple[str, int], dict[str, float]] = {}
        for rep in range(repeat):
            for shape in ("sequential", "pipelined"):
                for b in batches:
                    progress(f"SQL floor, {shape}, batch {b} (run {rep + 1})")
                    rate, cpu = measure(bench, shape, b, jobs)
                    rates.setdefault((shape, b), Repeated()).add(rate)
                    cpus[(shape, b)] = cpu
    finally:
        bench.close()
    best = max(rates, key=lambda k: rates[k].median)
    rows = [
        [
            shape,
            f"{b}{' *' if (shape, b) == best else ''}",
            fmt(r.best),
            fmt(r.median),
            cpu_text({**cpus[(shape, b)], "workers_cpu_pct": cpus[(shape, b)]["bench_cpu_pct"]}),
        ]
        for (shape, b), r in rates.items()
    ]
    say(
        table(
            f"SQL floor: job_get_available + job_finish_many, no runtime, one process "
            f"({jobs:,} jobs; * = the floor)",
            ["shape", "batch", "jobs/s best", "jobs/s median", "CPU % server/client/others (last)"],
            rows,
        )
    )
    return {
        "jobs": jobs,
        "by_shape": {f"{s}/{b}": r.as_json() for (s, b), r in rates.items()},
        "floor": {"shape": best[0], "batch": best[1], "rate": rates[best].as_json()},
    }


def fraction_table(throughput: dict[str, Any], floor: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rows = []
    data: dict[str, Any] = {}
    f = floor["floor"]["rate"]
    for kind, one in throughput["one_worker"].items():
        c = one["best_concurrency"]
        ub = one["by_concurrency"][str(c)]
        data[kind] = {"best": ub["best"] / f["best"], "median": ub["median"] / f["median"]}
        rows.append(
            [
                f"{kind}, 1 worker, c={c}",
                fmt(ub["best"]),
                fmt(f["best"]),
                f"{data[kind]['best']:.0%}",
                f"{data[kind]['median']:.0%}",
            ]
        )
    text = table(
        f"unbroken as a fraction of the SQL floor ({floor['floor']['shape']}, batch "
        f"{floor['floor']['batch']})",
        [
            "configuration",
            "unbroken jobs/s",
            "floor jobs/s",
            "fraction (best)",
            "fraction (median)",
        ],
        rows,
    )
    return text, data
