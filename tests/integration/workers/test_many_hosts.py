"""Many hosts: three worker processes, each its own App, each reaching the one server
through its own TCP proxy, its "host's network". Cutting one proxy (blackhole: sockets
stay open, nothing is forwarded, as behind a dead switch) partitions that host alone.

Jobs are enqueued and run all along; `record` writes one row per (job, attempt) into
`executions`. The leader's host is cut while it runs jobs: another worker takes the
leadership (the leaders row is sampled all along and never goes back to the cut host),
rescues the cut host's jobs once their lease runs out, and the others go on running new
jobs. When the network comes back, what the cut worker still had to say (the outcomes of
attempts that were rescued meanwhile) is fenced. At the end every job succeeded, and no
(job, attempt) ran twice.

Network namespaces would do the same with root and iproute2; a proxy per host needs
neither, and its blackhole holds data back rather than dropping it, so the cut worker's
stale writes really arrive after the heal.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.harness import Probe, WorkerProcess, insert_jobs, wait_until, worker_processes
from pg import SessionPostgres
from proxy import Proxy

LEASE = 6.0
TERM = 6.0  # runtime.elector.term_for(LEASE): a cut leader's session lives on the server
TRY = 2.0  # a candidate's try interval (runtime.elector.TRY_EVERY)
MARGIN = 10.0  # a poll, a fetch, a rescue tick, a loaded 2-core machine
SETTINGS: dict[str, Any] = {
    "lease_seconds": LEASE,
    "rescue_interval": 1.0,
    "promote_interval": 0.2,
    "poll_interval": 0.3,
    "shutdown_timeout": 2.0,
    "concurrency": 4,
}
HOSTS = ("a", "b", "c")
LONG_SECONDS = 4.0  # shorter than a takeover (>= TERM - 1 s): done before any rescue


class Feeder:
    """Enqueues a few short jobs every 0.2 s from the test's own connection until stopped."""

    def __init__(self, url: str) -> None:
        self.ids: list[int] = []
        self.errors: list[BaseException] = []
        self._probe = Probe(url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.2):
                self.ids += insert_jobs(self._probe, "record", 3, kwargs={"seconds": 0.05})
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(30)
        self._probe.close()
        assert not self.errors, self.errors
        return list(self.ids)


class LeaderSampler:
    """The leaders row's holder every 0.1 s, each change kept in order."""

    def __init__(self, url: str) -> None:
        self.holders: list[str | None] = []
        self._probe = Probe(url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            holder = self._probe.value("SELECT holder FROM unbroken.leaders")
            if not self.holders or self.holders[-1] != holder:
                self.holders.append(holder)

    def __enter__(self) -> LeaderSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._probe.close()


@pytest.fixture
def proxies(pg_server: SessionPostgres) -> Iterator[dict[str, Proxy]]:
    """One proxy per host, each its own network path to the server."""
    started = {name: Proxy("127.0.0.1", pg_server.server.port).start() for name in HOSTS}
    try:
        yield started
    finally:
        for proxy in started.values():
            proxy.stop()


def leader_of(probe: Probe, hosts: dict[str, WorkerProcess]) -> str | None:
    holder = probe.value("SELECT holder FROM unbroken.leaders")
    return next((name for name, w in hosts.items() if w.worker_id == holder), None)


def started_on(probe: Probe, jobs: list[int], worker: WorkerProcess) -> list[int]:
    rows = probe.rows(
        "SELECT DISTINCT job_id FROM executions WHERE job_id = ANY(%s) AND pid = %s",
        [jobs, worker.pid],
    )
    return [int(r["job_id"]) for r in rows]


def test_cutting_the_leaders_host_loses_nothing_and_another_leads_and_rescues(
    probe: Probe, database_url: str, tmp_path: Path, proxies: dict[str, Proxy]
) -> None:
    dbname = database_url.rsplit("/", 1)[1]
    with worker_processes(database_url, tmp_path, **SETTINGS) as start:
        hosts = {name: start(name, database_url=proxies[name].url(dbname)) for name in HOSTS}
        for worker in hosts.values():
            worker.wait_registered(probe)
        cut = wait_until(lambda: leader_of(probe, hosts), timeout=30, what="a leader")
        others = [name for name in HOSTS if name != cut]

        with LeaderSampler(database_url) as sampler, Feeder(database_url) as feeder:
            # Long jobs fill every slot, so the leader runs some of them when its host is cut.
            long_jobs = insert_jobs(
                probe, "record", 3 * SETTINGS["concurrency"],
                kwargs={"seconds": LONG_SECONDS, "once": True},
            )  # fmt: skip
            stranded = wait_until(
                lambda: started_on(probe, long_jobs, hosts[cut]),
                timeout=30,
                what=f"the leader ({cut}) to start long jobs",
            )
            before_cut = len(feeder.ids)
            proxies[cut].blackhole()

            new = wait_until(
                lambda: leader_of(probe, hosts) in others and leader_of(probe, hosts),
                timeout=TERM + TRY + MARGIN,
                what=f"one of {others} to take the leadership from the cut {cut}",
            )
            for job in stranded:  # rescued once the lease ran out, run again elsewhere
                done = probe.wait_state(job, "succeeded", timeout=LEASE + TRY + MARGIN)
                assert done["rescues"] == 1, done
                assert done["result"]["pid"] != hosts[cut].pid
            # The others go on with jobs enqueued after the cut.
            after_cut = wait_until(
                lambda: feeder.ids[before_cut + 3 :], timeout=10, what="jobs enqueued after the cut"
            )
            probe.wait_state(after_cut[0], "succeeded", timeout=MARGIN)
            assert leader_of(probe, hosts) == new

            proxies[cut].heal()
            wait_until(
                lambda: "not recorded" in hosts[cut].log_flat(),
                timeout=LEASE + MARGIN,
                what=f"the healed {cut} to send its stale outcomes",
            )
            fed = feeder.stop()

        jobs = long_jobs + fed
        wait_until(
            lambda: (
                probe.value(
                    "SELECT count(*) FROM unbroken.jobs WHERE id = ANY(%s) AND state = 'succeeded'",
                    [jobs],
                )
                == len(jobs)
            ),
            timeout=60,
            what=f"all {len(jobs)} jobs to succeed",
        )
        twice = probe.rows(
            "SELECT job_id, attempt, count(*) AS runs FROM executions"
            " GROUP BY job_id, attempt HAVING count(*) > 1"
        )
        assert twice == [], f"attempts run more than once: {twice}"
        assert not probe.rows(
            "SELECT e.job_id FROM executions AS e LEFT JOIN unbroken.jobs AS j ON j.id = e.job_id"
            " WHERE j.id IS NULL"
        )

        # One holder at a time, and once the cut leader lost it, it never held it again.
        holders = [h for h in sampler.holders if h is not None]
        assert holders[0] == hosts[cut].worker_id, sampler.holders
        assert hosts[cut].worker_id not in holders[1:], sampler.holders
        assert holders[1] == hosts[new].worker_id, sampler.holders

        for worker in hosts.values():
            worker.signal(signal.SIGTERM)
        for worker in hosts.values():
            assert worker.wait_exit(30) == 0, worker.log()[-3000:]
        fenced = re.search(r"(\d+) fenced", hosts[cut].log_flat())
        assert fenced is not None, hosts[cut].log()[-3000:]
        assert int(fenced[1]) >= len(stranded), hosts[cut].log()[-3000:]
