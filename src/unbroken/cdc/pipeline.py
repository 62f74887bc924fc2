"""`run_pipeline`: a CDC pipeline inside a (sync) task, built on `run_chunks`.

    pipeline = Pipeline(name="orders", source_url=SOURCE, tables=["public.orders"])

    @app.task
    def sync_orders() -> None:
        run_pipeline(pipeline, lambda chunk: mirror(chunk, {"public.orders": "orders"}))

Each chunk of changes is written by `write` through `chunk.conn` (or `chunk.upsert`, or
`mirror`), in ONE transaction with the job's checkpoint and the pipeline's row
(cdc_pipelines: position, checkpoint, counters, lag); that commit waits for its WAL flush,
and only then is the replication slot advanced to the committed position (`on_commit`),
so a crash anywhere re-reads from the slot exactly what the sink does not hold.
A change `write` refuses (a non-transient error) goes to cdc_dead_letters with the error,
and the stream goes on: the chunk is then written again change by change, each in a
savepoint, and only the refused ones are set aside.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg.types.json import Jsonb

from unbroken.cdc.changes import COMMIT, Change
from unbroken.cdc.pgoutput import lsn_from_str, lsn_to_str
from unbroken.cdc.source import SourceDB
from unbroken.cdc.stream import Stream
from unbroken.chunks import Chunk, Progress, run_chunks
from unbroken.chunks.compat import job_pool
from unbroken.context import JobContext
from unbroken.db.classify import is_transient
from unbroken.db.conninfo import error_line, redact
from unbroken.errors import ConfigError, JobCancelled, LeaseLost, UnbrokenError
from unbroken.sql import queries

logger = logging.getLogger("unbroken.cdc")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
Write = Callable[[Chunk[Change]], None]


@dataclass(frozen=True)
class Pipeline:
    """One source database's tables streamed into a sink (docs/cdc.md)."""

    name: str  # lower-case letters, digits, _: names the slot and publication by default
    source_url: str
    tables: Sequence[str]  # "schema.table" (or "table": public)
    slot: str | None = None  # default "unbroken_<name>"
    publication: str | None = None  # default "unbroken_<name>"
    snapshot: bool = True  # backfill the tables' current rows on the first start
    on_gap: Literal["resnapshot", "fail"] = "resnapshot"  # when the position cannot resume
    snapshot_chunk: int = 1000  # rows per backfill SELECT
    peek_changes: int = 5000  # pgoutput messages per read of the slot (whole transactions)
    poll_interval: float = 1.0  # seconds between reads of a caught-up slot
    heartbeat_interval: float = 10.0  # seconds between heartbeats of an idle stream
    retained_wal_warning: int = 1 << 30  # bytes of WAL the slot holds before a WARNING
    _tables: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"CDC pipeline name {self.name!r}: use 1 to 40 lower-case letters, digits or _ "
                "starting with a letter (it names the replication slot)"
            )
        if not self.tables:
            raise ConfigError(f"CDC pipeline {self.name}: tables= names no table")
        if self.on_gap not in ("resnapshot", "fail"):
            raise ConfigError(
                f"CDC pipeline {self.name}: on_gap={self.on_gap!r}, not 'resnapshot' or 'fail'"
            )
        for what, value in (
            ("snapshot_chunk", self.snapshot_chunk),
            ("peek_changes", self.peek_changes),
        ):
            if value < 1:
                raise ConfigError(f"CDC pipeline {self.name}: {what} must be >= 1, got {value}")
        tables = tuple(t if "." in t else f"public.{t}" for t in self.tables)
        object.__setattr__(self, "_tables", tables)

    @property
    def slot_name(self) -> str:
        return self.slot or f"unbroken_{self.name}"

    @property
    def publication_name(self) -> str:
        return self.publication or f"unbroken_{self.name}"

    @property
    def qualified_tables(self) -> tuple[str, ...]:
        return self._tables


# A chunk is one flushed commit on the sink with the position; change rows are small, so
# the commit, not the rows, bounds the rate: 17,600 changes/s at 1,000 per chunk against
# 22,600 at 5,000 (bench/cdc.py, median of 3), where run_chunks' default is 1,000.
CDC_CHUNK_SIZE = 5_000


def run_pipeline(
    pipeline: Pipeline,
    write: Write,
    *,
    until: Literal["caught_up", "cancelled"] = "caught_up",
    validate: Callable[[Change], Change] | None = None,
    chunk_size: int | None = None,
) -> Progress:
    """Stream `pipeline`'s changes into the sink through `write`, inside a sync task.

    until: "caught_up" reads up to the source's WAL end as of the start (a heartbeat
        written then) and any backfill, and returns (for periodic tasks and tests);
        "cancelled" keeps streaming until the job is cancelled or the worker stops (the
        job then goes back to the queue and a later run resumes where the sink stands).
    validate: maps each change before `write`; one it raises on goes to the dead letters.
    chunk_size: changes per chunk, CDC_CHUNK_SIZE by default (the job's and the task's
        settings override it).
    Raises PositionLost (on_gap="fail"), DatabaseUnavailable (the source stayed away for
    UNBROKEN_STARTUP_WAIT), ConfigError (no primary key, a slot of another database).
    """
    job, pool = job_pool()
    run = _Run(pipeline, job, write, validate, drain=until == "caught_up")
    with pool.connection() as conn:
        row = conn.execute(run.queries["cdc_pipeline_register"], run.register_params()).fetchone()
    assert row is not None
    run.expected = row[1]
    run.stream.stored = row[1]
    run.stream.known = dict(row[4] or {})
    run.stream.on_wait = lambda why: run.set_state(pool, "waiting", why)
    try:
        return run_chunks(
            run.stream.pages,
            run.write,
            chunk_size=chunk_size or CDC_CHUNK_SIZE,
            name=f"cdc:{pipeline.name}",
            flush_each_chunk=True,  # the slot is advanced after the commit: it must be durable
            on_commit=run.on_commit,
        )
    except (JobCancelled, LeaseLost):
        run.set_state(pool, "stopped", None)
        raise
    except Exception as exc:
        run.set_state(pool, "failed", error_line(exc))
        raise
    finally:
        run.stream.source.close()


class _Run:
    """One run of a pipeline: its stream, and what each chunk commits besides the data."""

    def __init__(
        self,
        pipeline: Pipeline,
        job: JobContext,
        write: Write,
        validate: Callable[[Change], Change] | None,
        *,
        drain: bool,
    ) -> None:
        self.p = pipeline
        self.job = job
        self.user_write = write
        self.validate = validate
        self.queries = queries(job.schema)
        source = SourceDB(
            pipeline.source_url,
            job.settings,
            slot=pipeline.slot_name,
            publication=pipeline.publication_name,
        )
        self.stream = Stream(pipeline, source, job, stored=None, relations=None, drain=drain)
        self.expected: Any = None  # cdc_pipelines.checkpoint as last committed
        self._pending: Any = None  # ... as the chunk being committed writes it

    def register_params(self) -> dict[str, Any]:
        return {
            "name": self.p.name,
            "slot": self.p.slot_name,
            "publication": self.p.publication_name,
            "source": redact(self.p.source_url),
            "tables": list(self.p.qualified_tables),
        }

    def set_state(self, pool: Any, state: str, error: str | None) -> None:
        try:
            with pool.connection() as conn:
                conn.execute(
                    self.queries["cdc_pipeline_set_state"],
                    {"name": self.p.name, "state": state, "error": error},
                )
        except Exception as exc:  # the database may be what failed: the job's error says it
            logger.warning(
                "CDC pipeline %s: could not record state %s: %s",
                self.p.name,
                state,
                error_line(exc),
            )

    # --- each chunk ------------------------------------------------------------------------------
    def write(self, chunk: Chunk[Change]) -> None:
        items: list[Change] = chunk.items
        last = items[-1]
        checkpoint = dict(chunk.checkpoint)
        if last.last:
            checkpoint.pop("skip", None)
        else:  # the chunk ends inside a source transaction: resume after its last change
            checkpoint["skip"] = last.seq + 1
        conn = chunk.conn
        relations: dict[str, Any] = {}
        data: list[Change] = []
        for change in items:
            for table, before, after in change.schema:
                relations[table] = after
                if before is not None:
                    conn.execute(
                        self.queries["cdc_schema_change_insert"],
                        {
                            "pipeline": self.p.name,
                            "relation": table,
                            "lsn": lsn_to_str(change.lsn),
                            "before": Jsonb(before),
                            "after": Jsonb(after),
                        },
                    )
            if change.op == COMMIT:
                continue
            if change.error is not None:
                self._dead(chunk, change, change.error)
            elif self.validate is not None:
                try:
                    data.append(self.validate(change))
                except Exception as exc:
                    self._dead(chunk, change, f"{type(exc).__name__}: {error_line(exc)}")
            else:
                data.append(change)
        if data:
            self._apply(chunk, data)
        chunk.items = items
        rows = sum(1 for c in data if c.op != "snapshot_range")
        self._commit(chunk, checkpoint, rows, relations)

    def _apply(self, chunk: Chunk[Change], data: list[Change]) -> None:
        """`write` the changes; if it refuses, again one by one, setting aside the refused."""
        try:
            with chunk.conn.transaction():  # a savepoint: a refusal undoes only this
                chunk.items = data
                self.user_write(chunk)
            return
        except Exception as exc:
            if is_transient(exc) or isinstance(exc, UnbrokenError):
                raise
        for change in data:
            try:
                with chunk.conn.transaction():
                    chunk.items = [change]
                    self.user_write(chunk)
            except Exception as exc:
                if is_transient(exc) or isinstance(exc, UnbrokenError):
                    raise
                self._dead(chunk, change, f"{type(exc).__name__}: {error_line(exc)}")

    def _dead(self, chunk: Chunk[Change], change: Change, error: str) -> None:
        logger.warning(
            "CDC pipeline %s: a change of %s at %s goes to the dead letters: %s",
            self.p.name,
            change.relation,
            lsn_to_str(change.lsn),
            error,
        )
        chunk.conn.execute(
            self.queries["cdc_dead_letter_insert"],
            {
                "pipeline": self.p.name,
                "lsn": lsn_to_str(change.lsn),
                "relation": change.relation,
                "change": Jsonb(change.describe()),
                "error": error[:2000],
            },
        )

    def _commit(
        self,
        chunk: Chunk[Change],
        checkpoint: dict[str, Any],
        changes: int,
        relations: dict[str, Any],
    ) -> None:
        s = self.stream
        slot = s.slot
        row = chunk.conn.execute(
            self.queries["cdc_pipeline_commit"],
            {
                "name": self.p.name,
                "position": checkpoint["lsn"],
                "checkpoint": Jsonb(checkpoint),
                "expected": None if self.expected is None else Jsonb(self.expected),
                "system_identifier": s.system_identifier,
                "database": s.database,
                "changes": changes,
                "state": "snapshotting" if checkpoint.get("backfill") else "streaming",
                "wal_end": lsn_to_str(slot.wal_end) if slot else checkpoint["lsn"],
                "caught_up": s.caught_up and lsn_from_str(checkpoint["lsn"]) >= s.yielded,
                "commit_time": s.commit_time,
                "retained_wal_bytes": slot.retained_wal_bytes if slot else None,
                "relations": Jsonb(relations) if relations else None,
            },
        ).fetchone()
        if row is None:
            raise UnbrokenError(
                f"CDC pipeline {self.p.name}: another run committed changes since this one "
                "started; run one job per pipeline at a time (for example with a unique key)"
            )
        self._pending = checkpoint

    def on_commit(self, checkpoint: Any) -> None:
        """The chunk is durable in the sink: now, and only now, confirm it to the slot."""
        if self._pending is not None:
            self.expected, self._pending = self._pending, None
        self.stream.advance(lsn_from_str(checkpoint["lsn"]))
