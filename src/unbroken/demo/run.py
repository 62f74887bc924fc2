"""`unbroken demo`: run the Jira sync with live progress, optionally under chaos, and check it.

With `--chaos` the database is restarted twice (a fast and an immediate stop) and the
worker is SIGKILLed once while the jobs run; a second worker takes over the killed one's
jobs when their leases expire. At the end every record must be in the sink exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from unbroken.db._sync.pool import RolePool
from unbroken.demo.app import SINK_DDL, SINK_SCHEMA, app, sync_changelogs, sync_issues
from unbroken.demo.jira import CHANGELOGS, ISSUES
from unbroken.embedded import LocalServer
from unbroken.errors import ConfigError

console = Console()
FINAL = ("succeeded", "dead", "cancelled")
DEMO_ENV = {
    # Short leases so a killed worker's jobs move on within seconds (the defaults suit
    # production, where a 30 s lease costs nothing).
    "UNBROKEN_LEASE_SECONDS": "4",
    "UNBROKEN_HEARTBEAT_INTERVAL": "1",
    "UNBROKEN_RESCUE_INTERVAL": "1",
    "UNBROKEN_CONCURRENCY": "4",
    "UNBROKEN_QUEUES": "etl",
}


@dataclass
class Chaos:
    """What to break, at which fraction of the whole sync; each step runs once."""

    steps: list[tuple[float, str]] = field(
        default_factory=lambda: [
            (0.25, "restart-fast"),
            (0.45, "kill-worker"),
            (0.65, "restart-immediate"),
        ]
    )
    done: list[str] = field(default_factory=list)

    def due(self, fraction: float) -> list[str]:
        ready = [name for at, name in self.steps if fraction >= at and name not in self.done]
        self.done.extend(ready)
        return ready


class Workers:
    """Worker processes of the demo, logging to one file."""

    def __init__(
        self,
        url: str,
        log: Path,
        *,
        app_ref: str = "unbroken.demo.app:app",
        env: dict[str, str] | None = None,
    ) -> None:
        self._env = {**os.environ, **(env or DEMO_ENV), "UNBROKEN_DATABASE_URL": url}
        self._app_ref = app_ref
        self._log = log.open("ab")
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "unbroken", "worker", "--app", self._app_ref]
        proc = subprocess.Popen(cmd, env=self._env, stdout=self._log, stderr=self._log)
        self.procs.append(proc)
        return proc

    def kill_first_alive(self) -> int | None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return proc.pid
        return None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._log.close()


def run_demo(*, chaos: bool, timeout: float = 600.0) -> int:
    """Run the demo; return the process exit code (0 when every check passed)."""
    target = app.target()
    if chaos and not target.embedded:
        raise ConfigError(
            "--chaos restarts the database: it needs the embedded server (unset "
            "UNBROKEN_DATABASE_URL / DATABASE_URL)"
        )
    console.print(f"[bold]database[/bold]: {target.describe()}", highlight=False)
    try:
        app.migrate()
        pool = RolePool("demo", target.conninfo, app.settings, min_size=1, max_size=2)
        pool.open()
        try:
            return _run(pool, target.conninfo, chaos, timeout, worker_log(target.embedded))
        finally:
            pool.close()
            app.close()
    finally:
        if target.embedded:
            say_left_running(LocalServer(app.settings.data_dir))


def worker_log(embedded: bool) -> Path:
    """Where the demo's workers log: beside the embedded server's own log in its data dir
    (with a configured database, in the folder the data dir would be in); never a fixed
    path in /tmp, which a second demo on another data dir would overwrite."""
    data_dir = LocalServer(app.settings.data_dir).data_dir
    folder = data_dir if embedded else data_dir.parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "unbroken-demo-workers.log"


def say_left_running(server: LocalServer) -> None:
    if server.is_running():
        console.print(
            f"embedded PostgreSQL left running on 127.0.0.1:{server.port} (data in "
            f"{server.data_dir}); stop it with `unbroken db stop`",
            highlight=False,
            soft_wrap=True,
        )


def _run(pool: RolePool, url: str, chaos: bool, timeout: float, log: Path) -> int:
    pool.run(lambda c: c.execute(SINK_DDL.encode()))
    demo_tasks = [sync_issues.name, sync_changelogs.name]
    pool.run(lambda c: c.execute(b"DELETE FROM unbroken.jobs WHERE task = ANY(%s)", [demo_tasks]))
    ids = {
        "issues": sync_issues.enqueue("DEMO"),
        "changelogs": sync_changelogs.enqueue("DEMO"),
    }
    log.write_text("")
    workers = Workers(url, log)
    workers.start()
    plan = Chaos() if chaos else None
    started = time.monotonic()
    states: dict[str, str] = {}
    with Progress(
        TextColumn("{task.description:<11}"),
        BarColumn(bar_width=36),
        TextColumn("{task.completed:>6,.0f}/{task.total:,.0f}"),
        TextColumn("{task.fields[rate]:>7} rows/s"),
        TextColumn("{task.fields[state]:<10}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bars:
        bar_ids: dict[str, TaskID] = {
            name: bars.add_task(name, total=total, rate="-", state="available")
            for name, total in (("issues", ISSUES), ("changelogs", CHANGELOGS))
        }
        while time.monotonic() - started < timeout:
            rows = pool.run(lambda c: c.execute(_POLL, [list(ids.values())]).fetchall())
            done_items = 0
            for job_id, state, progress in rows:
                name = next(k for k, v in ids.items() if v == job_id)
                states[name] = state
                p = progress or {}
                done_items += int(p.get("position", 0))
                rate = p.get("rate")
                bars.update(
                    bar_ids[name],
                    completed=int(p.get("position", 0)),
                    rate=f"{rate:,.0f}" if rate else "-",
                    state=state,
                )
            if states and all(s in FINAL for s in states.values()):
                break
            if plan is not None:
                for step in plan.due(done_items / (ISSUES + CHANGELOGS)):
                    _break_something(step, workers, bars.console.log)
            time.sleep(0.25)
    elapsed = time.monotonic() - started
    workers.stop()
    return _report(pool, ids, states, elapsed, plan, log)


_POLL = b"SELECT id, state::text, progress FROM unbroken.jobs WHERE id = ANY(%s)"


def _break_something(step: str, workers: Workers, say: Callable[..., None]) -> None:
    server = LocalServer(app.settings.data_dir)
    if step == "restart-fast":
        say("[yellow]chaos[/yellow]: restarting PostgreSQL (fast stop)")
        server.restart("fast")
    elif step == "restart-immediate":
        say("[yellow]chaos[/yellow]: crashing PostgreSQL (immediate stop) and starting it")
        server.restart("immediate")
    elif step == "kill-worker":
        pid = workers.kill_first_alive()
        workers.start()
        say(f"[yellow]chaos[/yellow]: SIGKILLed worker {pid}; a second worker takes over")


def _report(
    pool: RolePool,
    ids: dict[str, int],
    states: dict[str, str],
    elapsed: float,
    plan: Chaos | None,
    log: Path,
) -> int:
    def counts(conn: Any) -> tuple[Any, ...]:
        row = conn.execute(
            f"""SELECT (SELECT count(*) FROM {SINK_SCHEMA}.issues),
                       (SELECT count(DISTINCT id) FROM {SINK_SCHEMA}.issues),
                       (SELECT coalesce(max(writes), 0) FROM {SINK_SCHEMA}.issues),
                       (SELECT count(*) FROM {SINK_SCHEMA}.changelogs),
                       (SELECT count(DISTINCT id) FROM {SINK_SCHEMA}.changelogs)""".encode()
        ).fetchone()
        assert row is not None
        return tuple(row)

    issues, issue_ids, max_writes, changelogs, changelog_ids = pool.run(counts)
    jobs = pool.run(
        lambda c: c.execute(
            b"SELECT id, state::text, attempt, rescues FROM unbroken.jobs WHERE id = ANY(%s)",
            [list(ids.values())],
        ).fetchall()
    )
    table = Table(title="unbroken demo: Jira sync", show_lines=False)
    for col in ("", "source", "sink", "distinct", "check"):
        table.add_column(col, justify="right" if col else "left")
    ok_issues = issues == issue_ids == ISSUES and max_writes == 1
    ok_changelogs = changelogs == changelog_ids == CHANGELOGS
    table.add_row("issues", f"{ISSUES:,}", f"{issues:,}", f"{issue_ids:,}", _mark(ok_issues))
    table.add_row(
        "changelogs",
        f"{CHANGELOGS:,}",
        f"{changelogs:,}",
        f"{changelog_ids:,}",
        _mark(ok_changelogs),
    )
    console.print(table)
    for job_id, state, attempt, rescues in jobs:
        console.print(
            f"job {job_id}: {state}, attempt {attempt}, rescued {rescues} time(s)", highlight=False
        )
    if plan is not None:
        console.print(f"chaos: {', '.join(plan.done) or 'nothing (the run was too short)'}")
    all_ok = ok_issues and ok_changelogs and all(s == "succeeded" for _, s, _, _ in jobs)
    verdict = "every record written exactly once" if all_ok else "CHECK FAILED"
    console.print(
        f"[bold]{verdict}[/bold] in {elapsed:.1f} s (max writes of one issue: {max_writes}); "
        f"worker log: {log}",
        highlight=False,
        soft_wrap=True,
    )
    return 0 if all_ok else 1


def _mark(ok: bool) -> str:
    return "[green]exactly once[/green]" if ok else "[red]MISMATCH[/red]"
