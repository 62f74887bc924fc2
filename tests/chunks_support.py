"""Shared set-up for the chunk runner's integration tests (this module holds no tests).

A `ChunkEnv` is one test database made ready for a chunked job: the unbroken schema, a sink
table, a job row in state 'running' held by worker "w1", the worker's pools (async and sync)
and a `JobContext` for it, as the executor would build one. A trigger records every change
of the job's progress, so a test can check that checkpoints never went backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ParamSpec

import psycopg
from psycopg.rows import dict_row

from proxy import Proxy
from unbroken.context import JobContext, reset_current_job, set_current_job
from unbroken.db._async.pool import AsyncDatabase
from unbroken.db._sync.pool import Database
from unbroken.migrations import migrate
from unbroken.settings import Settings, load_settings

_apps = itertools.count(1)
P = ParamSpec("P")


def arun(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh event loop (the suite needs no async plugin)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


SETUP = """
CREATE TABLE sink (id int NOT NULL, note text);
CREATE TABLE keyed (id int PRIMARY KEY, note text, version int NOT NULL DEFAULT 1);
CREATE TABLE progress_log (n bigserial PRIMARY KEY, attempt int, position bigint,
                           checkpoint jsonb, done boolean);
CREATE FUNCTION log_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO progress_log (attempt, position, checkpoint, done)
    VALUES (NEW.attempt, (NEW.progress ->> 'position')::bigint, NEW.checkpoint,
            (NEW.progress ->> 'done')::boolean);
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_progress_log AFTER UPDATE OF progress ON unbroken.jobs
    FOR EACH ROW EXECUTE FUNCTION log_progress();
"""


def chunk_settings(url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "database_url": url,
        "application_name": f"chunks-test-{next(_apps)}",
        "pool_min_size": 1,
        "pool_max_size": 2,
        "retry_backoff_base": 0.05,
        "retry_backoff_cap": 0.5,
        "pool_acquire_timeout": 10,
        "startup_wait": 20,
        "lease_seconds": 60,
    }
    return load_settings(**{**base, **overrides})


@dataclass
class ChunkEnv:
    url: str
    settings: Settings
    job_id: int
    claim: str  # the row's attempted_at as text, as a claim returns it
    adb: AsyncDatabase | None = None
    db: Database | None = None
    attempt: int = 1
    worker_id: str = "w1"
    _tokens: list[Any] = field(default_factory=list)

    @property
    def app(self) -> str:
        """application_name of the chunks pool's sessions (for faults.terminate_backends)."""
        return f"{self.settings.application_name}:chunks"

    def context(self, **changes: Any) -> JobContext:
        ctx = JobContext(
            job_id=self.job_id,
            attempt=self.attempt,
            max_attempts=20,
            worker_id=self.worker_id,
            task="etl",
            queue="default",
            args={},
            checkpoint=None,
            chunk_size=None,
            rescues=0,
            claim=self.claim,
            settings=self.settings,
            schema="unbroken",
            adb=self.adb,
            db=self.db,
        )
        return replace(ctx, **changes)

    def enter(self, ctx: JobContext | None = None) -> JobContext:
        """Make `ctx` (a fresh one by default) the current job, as the executor does."""
        ctx = ctx or self.context()
        self._tokens.append(set_current_job(ctx))
        return ctx

    def leave(self) -> None:
        while self._tokens:
            reset_current_job(self._tokens.pop())

    # --- the database, seen from outside the runner ------------------------------------------
    def sql(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        with psycopg.connect(self.url, autocommit=True, row_factory=dict_row) as conn:
            cur = conn.execute(query.encode(), params)
            return cur.fetchall() if cur.description else []

    def job(self) -> dict[str, Any]:
        return self.sql("SELECT * FROM unbroken.jobs WHERE id = %s", [self.job_id])[0]

    def ids(self, table: str = "sink") -> list[int]:
        return [r["id"] for r in self.sql(f"SELECT id FROM {table} ORDER BY id")]

    def positions(self) -> list[int]:
        """Every committed position, in commit order."""
        return [r["position"] for r in self.sql("SELECT position FROM progress_log ORDER BY n")]

    def new_attempt(self) -> None:
        """What a failure + retry + refetch does: the same worker runs the next attempt."""
        (row,) = self.sql(
            "UPDATE unbroken.jobs SET attempt = attempt + 1, attempted_at = now(),"
            " lease_expires_at = now() + interval '5 minutes' WHERE id = %s"
            " RETURNING attempted_at::text AS claim",
            [self.job_id],
        )
        self.attempt += 1
        self.claim = row["claim"]

    def new_job(self) -> None:
        """Start over in the same database: an empty sink and log, a fresh job held by w1."""
        self.sql("TRUNCATE sink, progress_log")
        (row,) = self.sql(_NEW_JOB)
        self.job_id, self.claim, self.attempt, self.worker_id = row["id"], row["claim"], 1, "w1"

    def steal(self, worker_id: str = "w2") -> None:
        """What a rescue + refetch by another worker does to the job row."""
        self.sql(
            "UPDATE unbroken.jobs SET attempt = attempt + 1, worker_id = %s, rescues = rescues + 1,"
            " attempted_at = now(), lease_expires_at = now() + interval '5 minutes' WHERE id = %s",
            [worker_id, self.job_id],
        )


_NEW_JOB = (
    "INSERT INTO unbroken.jobs (task, state, attempt, worker_id, lease_expires_at,"
    " attempted_at) VALUES ('etl', 'running', 1, 'w1', now() + interval '5 minutes',"
    " now()) RETURNING id, attempted_at::text AS claim"
)


def make_env(url: str, **overrides: Any) -> ChunkEnv:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute(SETUP.encode())
        row = conn.execute(_NEW_JOB.encode()).fetchone()
    assert row is not None
    return ChunkEnv(url, chunk_settings(url, **overrides), row[0], row[1])


@contextlib.asynccontextmanager
async def async_env(url: str, **overrides: Any) -> AsyncIterator[ChunkEnv]:
    """A ChunkEnv with the worker's async pools open and its JobContext current."""
    env = make_env(url, **overrides)
    env.adb = AsyncDatabase(url, env.settings)
    env.adb.pool("chunks")
    await env.adb.open()
    try:
        env.enter()
        yield env
    finally:
        env.leave()
        await env.adb.close()


@contextlib.contextmanager
def sync_env(url: str, **overrides: Any) -> Iterator[ChunkEnv]:
    """A ChunkEnv with the worker's sync pools open and its JobContext current."""
    env = make_env(url, **overrides)
    env.db = Database(url, env.settings)
    env.db.pool("chunks")
    env.db.open()
    try:
        env.enter()
        yield env
    finally:
        env.leave()
        env.db.close()


class CommitCutter(Proxy):
    """A TCP proxy that lets a COMMIT through to the server, then drops the connection
    before the client hears the answer: the commit happened, the client cannot know it.

    Arm it with `cut_next_commit()`; `cuts` counts the commits whose answers were lost.
    """

    _COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-protocol message psycopg sends

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.cuts = 0
        self._armed = threading.Event()

    def __enter__(self) -> CommitCutter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut_next_commit(self) -> None:
        self._armed.set()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self.target)
        commit_sent = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self._COMMIT in data and self._armed.is_set():
                    self._armed.clear()
                    commit_sent.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if commit_sent.is_set():  # the server's answer to COMMIT: lose it
                    self.cuts += 1
                    break
                client_w.write(data)
                await client_w.drain()

        with contextlib.suppress(OSError, asyncio.CancelledError):
            tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
        for writer in (client_w, server_w):
            writer.transport.abort()  # a reset, not a goodbye: the client learns nothing
