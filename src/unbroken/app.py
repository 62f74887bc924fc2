"""`App` and `Task`: the user's surface.

app = unbroken.App()

@app.task(queue="mail", max_attempts=5, timeout=30)
async def send_welcome(user_id: int) -> None: ...

job_id = send_welcome.enqueue(42)                       # typed: a checker sees the args
send_welcome.using(delay=60, priority=5).enqueue(43)
app.enqueue_many([send_welcome.job(i) for i in range(1000)])   # one statement
with psycopg.connect(...) as conn:                       # in the caller's transaction
    send_welcome.using(conn=conn).enqueue(44)
wf = app.workflow("signup")                              # jobs after jobs: unbroken.workflow
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from psycopg import AsyncConnection, Connection

from unbroken import migrations
from unbroken.db._async import inserts as ainserts
from unbroken.db._async.pool import AsyncDatabase
from unbroken.db._sync.inserts import insert_many, insert_one
from unbroken.db._sync.pool import Database, wait_until_reachable
from unbroken.db.backoff import BackoffPolicy
from unbroken.db.conninfo import connection_kwargs
from unbroken.db.target import Target, resolve_target
from unbroken.enqueue import (
    INT4_MAX,
    EnqueueOptions,
    JobMaker,
    JobSpec,
    argument_checker,
    as_int,
    checked_rows,
    name_problem,
)
from unbroken.errors import ConfigError, EnqueueError, Permanent
from unbroken.limits import KeyFunction, Limit, key_problem, make_limit
from unbroken.periodic import CatchUp, Schedule, schedule, with_tick
from unbroken.settings import MAX_SECONDS, Settings, load_settings
from unbroken.sql import Queries, queries
from unbroken.workflow import Workflow

if TYPE_CHECKING:
    from unbroken.runtime.worker import Worker

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("unbroken")

# Job retries: first retry after ~2 s, doubling up to an hour, spread by jitter so a
# failing dependency is not hit by every job at the same instant.
DEFAULT_RETRY = BackoffPolicy(base=2.0, cap=3600.0, multiplier=2.0, jitter=0.5)


@dataclass(frozen=True)
class TaskOptions:
    name: str
    queue: str = "default"
    priority: int | Callable[..., int] = 0
    max_attempts: int = 20
    retry: BackoffPolicy = DEFAULT_RETRY
    timeout: float | None = None
    unique: bool | Callable[..., str] | None = None
    permanent: Callable[[BaseException], bool] = lambda exc: isinstance(exc, Permanent)
    chunk_size: int | None = None  # default chunk size for the chunked runner
    limit_key: KeyFunction | None = None  # flow control: the job's key (unbroken.limits)


class Task(Generic[P, R]):
    """A registered task. Call it to run it inline; `enqueue` it to run it on a worker."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        options: TaskOptions,
        enqueue_options: EnqueueOptions | None = None,
        conn: Connection[Any] | AsyncConnection[Any] | None = None,
        check_args: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        self._enqueue_options = enqueue_options or EnqueueOptions()
        self._conn = conn
        # Reading the signature is the slow part of making a Task: using() passes it on.
        self._check_args = check_args or argument_checker(_signature_of(fn))
        self._make = JobMaker(
            task=options.name,
            check=_refuse_main(options.name) or self._check_args,
            queue=options.queue,
            priority=options.priority,
            max_attempts=options.max_attempts,
            unique=options.unique,
            options=self._enqueue_options,
            max_payload_bytes=app.settings.max_payload_bytes,
            now=_utcnow,
            limit_key=options.limit_key,
            key_problem=lambda key: key_problem(key, app.limits),
        )
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def using(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        unique_key: str | None = None,
        max_attempts: int | None = None,
        limit_key: str | None = None,
        conn: Connection[Any] | AsyncConnection[Any] | None = None,
    ) -> Task[P, R]:
        """This task with per-call options; `conn` enqueues in the caller's transaction."""
        current = self._enqueue_options
        opts = EnqueueOptions(
            queue=queue if queue is not None else current.queue,
            priority=priority if priority is not None else current.priority,
            run_at=run_at if run_at is not None else current.run_at,
            delay=delay if delay is not None else current.delay,
            unique_key=unique_key if unique_key is not None else current.unique_key,
            max_attempts=max_attempts if max_attempts is not None else current.max_attempts,
            limit_key=limit_key if limit_key is not None else current.limit_key,
        )
        return Task(
            self.app,
            self.fn,
            self.options,
            opts,
            conn if conn is not None else self._conn,
            self._check_args,
        )

    def job(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        """A validated job for `App.enqueue_many` (nothing is written yet)."""
        return self._make(args, kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Write the job and return its id (the existing job's id for a live unique key)."""
        row = self._make(args, kwargs)
        if self._conn is not None:
            if not isinstance(self._conn, Connection):
                raise EnqueueError(f"task {self.name}: use aenqueue() with an async connection")
            return insert_one(self._conn, self.app.queries, row)
        pool = self.app.database().pool("api")
        return pool.run(lambda conn: insert_one(conn, self.app.queries, row), transaction=False)

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """`enqueue` for async code."""
        row = self._make(args, kwargs)
        if self._conn is not None:
            if not isinstance(self._conn, AsyncConnection):
                raise EnqueueError(f"task {self.name}: use enqueue() with a sync connection")
            return await ainserts.insert_one(self._conn, self.app.queries, row)
        adb = await self.app.adatabase()

        async def insert(conn: AsyncConnection[Any]) -> int:
            return await ainserts.insert_one(conn, self.app.queries, row)

        return await adb.pool("api").run(insert, transaction=False)


def _permanent_classifier(
    permanent: Sequence[type[BaseException]] | Callable[[BaseException], bool],
) -> Callable[[BaseException], bool]:
    """`Permanent` always; plus the task's exception types, or its own classifier."""
    if isinstance(permanent, Sequence):
        types: tuple[type[BaseException], ...] = (Permanent, *permanent)
        return lambda exc: isinstance(exc, types)
    user = permanent
    return lambda exc: isinstance(exc, Permanent) or bool(user(exc))


def _refuse_main(name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], None] | None:
    """For a task named under `__main__` (defined in a script run directly), a check that
    refuses every enqueue; None for any other task.

    A worker imports the app's modules by their names, so it would know this task under
    another name (`report.build`, not `__main__.build`) and never run the job. Calling the
    task inline still works; only enqueueing is refused.
    """
    if not name.startswith("__main__."):
        return None
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    module = Path(main_file).stem if main_file else "your_module"
    qualname = name.removeprefix("__main__.")
    message = (
        f"task {name}: it was defined in a script run directly, so its name starts with "
        f"'__main__.'; a worker that imports that module knows it as '{module}.{qualname}' "
        "and would never run this job. Move the task into a module the worker imports "
        f'(--app {module}:app), or give it a name: @app.task(name="{module}.{qualname}")'
    )

    def refuse(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise EnqueueError(message)

    return refuse


def _option_problem(
    queue: object, priority: object, max_attempts: object, timeout: object, chunk_size: object
) -> str | None:
    """What is wrong with a task's declared options (None: nothing), checked at `@app.task`
    so that no worker meets a value it cannot use."""
    problem = name_problem("queue name", queue, 128)
    if problem is not None:
        return problem
    if not callable(priority):
        value = as_int(priority)
        if value is None:
            return f"priority must be an integer or a function, got {priority!r}"
        if not -32768 <= value <= 32767:
            return f"priority {value} is outside -32768..32767"
    attempts = as_int(max_attempts)
    if attempts is None:
        return f"max_attempts must be an integer, got {max_attempts!r}"
    if not 1 <= attempts <= INT4_MAX:
        return f"max_attempts must be 1 to {INT4_MAX}, got {attempts}"
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_SECONDS  # NaN fails this too
    ):
        return (
            f"timeout must be seconds, more than 0 and at most {MAX_SECONDS:.0f}, got {timeout!r}"
        )
    return _chunk_size_problem(chunk_size)


def _chunk_size_problem(chunk_size: object) -> str | None:
    if chunk_size is None:
        return None
    size = as_int(chunk_size)
    if size is None or not 1 <= size <= INT4_MAX:
        return f"chunk_size must be an integer from 1 to {INT4_MAX}, got {chunk_size!r}"
    return None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


class App:
    """The tasks of one application and the database they run on."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings if settings is not None else load_settings(**overrides)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, tuple[Schedule, Task[Any, Any]]] = {}
        self.limits: dict[str, Limit] = {}
        self.queries: Queries = queries(self.settings.schema_name)
        self._target: Target | None = None
        self._db: Database | None = None
        self._adb: AsyncDatabase | None = None
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._alock: asyncio.Lock | None = None

    # --- tasks -----------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int | Callable[..., int] = 0,
        max_attempts: int = 20,
        retry: BackoffPolicy | None = None,
        timeout: float | None = None,
        unique: bool | Callable[..., str] | None = None,
        permanent: Sequence[type[BaseException]] | Callable[[BaseException], bool] = (),
        chunk_size: int | None = None,
        limit_key: KeyFunction | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int | Callable[..., int] = 0,
        max_attempts: int = 20,
        retry: BackoffPolicy | None = None,
        timeout: float | None = None,
        unique: bool | Callable[..., str] | None = None,
        permanent: Sequence[type[BaseException]] | Callable[[BaseException], bool] = (),
        chunk_size: int | None = None,
        limit_key: KeyFunction | None = None,
    ) -> Any:
        """Register `fn` as a task; use bare (`@app.task`) or with options. `limit_key` is a
        function of the arguments naming the job's flow-control key (see `App.limit`)."""

        def register(f: Callable[P, R]) -> Task[P, R]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            if task_name in self.tasks:
                raise ConfigError(f"task {task_name!r} is registered twice")
            problem = name_problem("task name", task_name, 255)
            if problem is not None:
                raise ConfigError(problem)
            problem = _option_problem(queue, priority, max_attempts, timeout, chunk_size)
            if problem is not None:
                raise ConfigError(f"task {task_name}: {problem}")
            if limit_key is not None and not callable(limit_key):
                raise ConfigError(
                    f"task {task_name}: limit_key must be a function of the task's arguments "
                    f"(per call: .using(limit_key=...)), got {limit_key!r}"
                )
            options = TaskOptions(
                name=task_name,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                retry=retry or DEFAULT_RETRY,
                timeout=timeout,
                unique=unique,
                permanent=_permanent_classifier(permanent),
                chunk_size=chunk_size,
                limit_key=limit_key,
            )
            task = Task(self, f, options)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        cron: str,
        *,
        tz: str = "UTC",
        catch_up: CatchUp = "latest",
        grace: float = 60.0,
        name: str | None = None,
        queue: str = "default",
        priority: int | Callable[..., int] = 0,
        max_attempts: int = 20,
        retry: BackoffPolicy | None = None,
        timeout: float | None = None,
        permanent: Sequence[type[BaseException]] | Callable[[BaseException], bool] = (),
    ) -> Callable[[Callable[..., R]], Task[..., R]]:
        """Register a task that every worker of this app enqueues on `cron`'s ticks, one
        job per tick; it receives the tick (`tick: datetime`, in `tz`). unbroken.periodic
        says how ticks, DST days and the catch-up policy work."""

        def register(f: Callable[..., R]) -> Task[..., R]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            if task_name.startswith("__main__."):
                qualname = task_name.removeprefix("__main__.")
                raise ConfigError(
                    f"periodic task {task_name}: it was defined in a script run directly, so "
                    "a worker importing that module would know it by another name; give it "
                    f'one: @app.periodic(..., name="myapp.{qualname}")'
                )
            found = schedule(task_name, cron, tz, catch_up, grace)
            task = self.task(
                name=task_name,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                retry=retry,
                timeout=timeout,
                permanent=permanent,
            )(with_tick(f, found.zone, task_name))
            self.schedules[task_name] = (found, task)
            return task

        return register

    def limit(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: int | None = None,
        per: float | None = None,
    ) -> Limit:
        """Declare a flow-control limit for every key `name:...`: at most `concurrency` of a
        key's jobs running at once across all workers, at most `rate` claimed per `per`
        seconds. Jobs get a key from their task's `limit_key=` or `.using(limit_key=...)`;
        workers record the limits when they start, and enforce them at fetch."""
        limit = make_limit(name, concurrency, rate, per)
        if name in self.limits and self.limits[name] != limit:
            raise ConfigError(f"limit {name!r} is declared twice, differently")
        self.limits[name] = limit
        return limit

    # --- enqueue ---------------------------------------------------------------------------
    def enqueue_many(
        self, jobs: Iterable[JobSpec], *, conn: Connection[Any] | None = None
    ) -> list[int]:
        """Write many jobs in one statement; returns their ids (live unique keys skipped)."""
        rows = checked_rows(jobs, self.settings.max_payload_bytes)
        if conn is not None:
            return insert_many(conn, self.queries, rows)
        return self.database().pool("api").run(lambda c: insert_many(c, self.queries, rows))

    async def aenqueue_many(
        self, jobs: Iterable[JobSpec], *, conn: AsyncConnection[Any] | None = None
    ) -> list[int]:
        rows = checked_rows(jobs, self.settings.max_payload_bytes)
        if conn is not None:
            return await ainserts.insert_many(conn, self.queries, rows)
        adb = await self.adatabase()

        async def insert(c: AsyncConnection[Any]) -> list[int]:
            return await ainserts.insert_many(c, self.queries, rows)

        return await adb.pool("api").run(insert)

    def workflow(self, name: str = "workflow") -> Workflow:
        """A new workflow: add steps (`step`, `group`), then `enqueue` them all at once."""
        return Workflow(self, name)

    # --- database --------------------------------------------------------------------------
    def target(self) -> Target:
        with self._lock:
            if self._target is None:
                self._target = resolve_target(self.settings)
            return self._target

    def migrate(self) -> list[migrations.Migration]:
        """Bring the schema up to date (first use does this automatically)."""
        target = self.target()
        # A worker started before its database: wait for it as the pools do (startup_wait),
        # on a connection told what every other one is (name, connect timeout, keepalives).
        wait_until_reachable(target.conninfo, self.settings)
        kwargs = connection_kwargs(self.settings, role="migrate")
        with Connection.connect(target.conninfo, **kwargs) as conn:
            return migrations.migrate(conn, self.settings.schema_name)

    def database(self) -> Database:
        """The sync pools (opened, schema migrated, on first use)."""
        if self._db is None:
            target = self.target()
            with self._db_lock:  # two threads' first enqueue must not open two pools
                if self._db is None:
                    db = Database(target.conninfo, self.settings)
                    db.pool("api", min_size=0)
                    db.open()
                    try:
                        self.migrate()
                    except BaseException:
                        db.close()  # or every later call would open (and leak) another
                        raise
                    self._db = db
        return self._db

    async def adatabase(self) -> AsyncDatabase:
        """The async pools (opened, schema migrated, on first use)."""
        if self._adb is None:
            if self._alock is None:
                self._alock = asyncio.Lock()
            async with self._alock:
                if self._adb is None:
                    target = await asyncio.to_thread(self.target)
                    adb = AsyncDatabase(target.conninfo, self.settings)
                    adb.pool("api", min_size=0)
                    await adb.open()
                    try:
                        await asyncio.to_thread(self.migrate)
                    except BaseException:
                        await adb.close()
                        raise
                    self._adb = adb
        return self._adb

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aclose(self) -> None:
        if self._adb is not None:
            await self._adb.close()
            self._adb = None
        self.close()

    # --- operating on jobs -----------------------------------------------------------------
    def get_job(self, job_id: int) -> dict[str, Any] | None:
        """Every column of one job, or None. A JSON value that cannot be decoded (a row
        written by another client) comes back as an `Undecodable` string, never an error."""
        from psycopg.rows import dict_row
        from psycopg.types.json import set_json_loads

        from unbroken.ops.format import lenient_loads

        def read(conn: Connection[Any]) -> dict[str, Any] | None:
            cur = conn.cursor(row_factory=dict_row)
            set_json_loads(lenient_loads, cur)
            return cur.execute(self.queries["job_get"], {"id": job_id}).fetchone()

        return self.database().pool("api").run(read, transaction=False)

    def cancel(self, *job_ids: int) -> dict[int, str]:
        """Cancel waiting jobs now; ask running ones to stop. Returns {id: state} changed."""
        return self._ids_op("job_cancel_many", job_ids)

    def cancel_workflow(self, workflow_id: int) -> dict[int, str]:
        """Cancel a workflow's waiting jobs now (pending, scheduled, retries) and ask its
        running ones to stop, through their lease. Returns {id: state} changed."""

        def run(conn: Connection[Any]) -> dict[int, str]:
            rows = conn.execute(self.queries["workflow_cancel"], {"id": workflow_id})
            return {row[0]: row[1] for row in rows.fetchall()}

        return self.database().pool("api").run(run, transaction=False)

    def retry(self, *job_ids: int) -> list[int]:
        """Put dead or cancelled jobs back in line now; returns the ids re-queued."""
        return list(self._ids_op("job_retry_many", job_ids))

    def pause_queue(self, name: str) -> None:
        """Workers stop fetching from `name` at their next fetch; nothing is lost."""
        self._set_paused(name, True)

    def resume_queue(self, name: str) -> None:
        self._set_paused(name, False)

    def set_chunk_size(self, task: str, chunk_size: int | None) -> None:
        """Change a task's chunk size at run time (None: back to its default).

        `task` is the name of one of this app's tasks: a misspelt name would write a setting
        that no task ever reads."""
        if task not in self.tasks:
            import difflib

            close = difflib.get_close_matches(str(task), list(self.tasks), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"no task named {task!r} in this app{hint}")
        problem = _chunk_size_problem(chunk_size)
        if problem is not None:
            raise ConfigError(f"task {task}: {problem}")
        params = {"task": task, "chunk_size": chunk_size}
        self.database().pool("api").run(
            lambda c: c.execute(self.queries["task_set_chunk_size"], params), transaction=False
        )

    def _set_paused(self, name: str, paused: bool) -> None:
        params = {"name": name, "paused": paused}
        self.database().pool("api").run(
            lambda c: c.execute(self.queries["queue_set_paused"], params), transaction=False
        )

    def _ids_op(self, query: str, job_ids: Sequence[int]) -> dict[int, str]:
        def run(conn: Connection[Any]) -> dict[int, str]:
            rows = conn.execute(self.queries[query], {"ids": list(job_ids)}).fetchall()
            return {row[0]: row[1] for row in rows}

        return self.database().pool("api").run(run, transaction=False)

    # --- workers ---------------------------------------------------------------------------
    def worker(self, **overrides: Any) -> Worker:
        """A worker for this app; `overrides` are settings (concurrency, queues, ...)."""
        from unbroken.runtime.worker import Worker

        return Worker(self, **overrides)
