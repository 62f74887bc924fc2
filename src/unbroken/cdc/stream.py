"""A pipeline's source of pages: the slot's transactions, and backfill chunks between them.

`Stream.pages(checkpoint)` is the seekable source `run_chunks` reads. Each page is one
source transaction (its changes and a COMMIT marker, so a transaction that changed nothing
the pipeline reads still moves the position), its cursor the checkpoint after it: the
transaction's end LSN, where a backfill stands, the server's identity. Reading is
deterministic: the slot is advanced only to what the sink committed, so a resumed run
peeks the same transactions again from its checkpoint (skipping, inside a transaction,
the changes already committed).

Backfill (initial snapshot, re-snapshot) is DBLog's: a chunk of rows is SELECTed in key
order between a low and a high watermark (transactional logical messages in the source,
prefix `unbroken.wm`); the stream goes on, and changes it shows between the watermarks for
keys of that chunk win; at the high watermark the chunk's other rows are emitted, each in a
page of its own whose cursor carries the backfill's position (a resumed run starts a new
chunk after the last row committed, with new watermarks). Every chunk first emits its key
range and the keys in it (`snapshot_range`), so a sink can delete rows that are gone.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import psycopg

from unbroken.cdc.changes import COMMIT, Change, Key
from unbroken.cdc.pgoutput import (
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    PgoutputError,
    Relation,
    RowLoader,
    Truncate,
    Update,
    decode,
    lsn_from_str,
    lsn_to_str,
)
from unbroken.cdc.source import SlotInfo, SourceDB
from unbroken.chunks.state import Page
from unbroken.db.conninfo import error_line
from unbroken.errors import ConfigError, PositionLost

if TYPE_CHECKING:
    from unbroken.cdc.pipeline import Pipeline
    from unbroken.context import JobContext

logger = logging.getLogger("unbroken.cdc")
WATERMARK: Final = "unbroken.wm"
HEARTBEAT: Final = "unbroken.hb"
_B, _C, _R = ord("B"), ord("C"), ord("R")
_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)


def columns_of(relation: Relation) -> list[list[Any]]:
    """A relation's columns as stored in cdc_pipelines.relations and cdc_schema_changes."""
    return [[c.name, c.type_oid, c.type_modifier, c.flags] for c in relation.columns]


@dataclass
class _Table:
    relation: Relation
    loader: RowLoader
    name: str  # schema.table
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Row:
    """One row a backfill SELECT read: as text, and loaded (or why it could not be)."""

    raw: dict[str, str | None]
    raw_key: list[str | None]  # the key as text: the backfill's cursor after this row
    key: Key | None
    row: dict[str, Any] | None
    error: str | None


@dataclass
class _Window:
    """One backfill chunk between its watermarks."""

    id: str
    table: str
    key: list[str]
    after: list[Any] | None
    rows: list[_Row]
    open: bool = False  # its low watermark was read
    keys: set[Key] = field(default_factory=set)  # keys the stream changed since then


class Stream:
    """Reads one pipeline's source: validation, slot, transactions, backfill, heartbeats."""

    def __init__(
        self,
        pipeline: Pipeline,
        source: SourceDB,
        job: JobContext,
        *,
        stored: dict[str, Any] | None,
        relations: dict[str, Any] | None,
        drain: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.p = pipeline
        self.source = source
        self.job = job
        self.stored = stored  # cdc_pipelines.checkpoint as this run found it
        self.known: dict[str, Any] = dict(relations or {})  # committed columns by table
        self.drain = drain
        self.clock = clock
        self.wait = job.settings.startup_wait
        # where the stream stands (set by _start)
        self.acked: int | None = None  # the last position committed (and confirmed to the slot)
        self.yielded = 0  # end LSN of the last transaction handed out
        self.skip = 0
        self.backfill: dict[str, Any] | None = None
        self.system_identifier: str | None = None
        self.database: str | None = None
        self.slot: SlotInfo | None = None  # as last read
        self.caught_up = False
        self.commit_time: datetime | None = None  # of the last transaction read
        self._tables: dict[int, _Table] = {}
        self._keys: dict[str, list[str]] = {}
        self._window: _Window | None = None
        self._schema: list[tuple[str, Any, Any]] = []  # Relation changes not yet attached
        self._heartbeat_at = clock()
        self._skipped_rows = 0
        self._warned_at = -1e9
        self.on_wait: Callable[[str], None] | None = None  # told why, when the source is lost

    # --- the source run_chunks reads -------------------------------------------------------------
    def pages(self, checkpoint: Any) -> Iterator[Page[Change]]:
        """Pages from `checkpoint` (None: where cdc_pipelines says) on; see the module doc."""
        self._start(checkpoint if checkpoint is not None else self.stored)
        # A first, empty page names the position validated here: a chunk that ends inside
        # the next page checkpoints it (not the checkpoint this was called with).
        yield Page([], cursor=self._cursor(self.yielded, skip=self.skip))
        target = self._emit(HEARTBEAT, "drain") if self.drain else None
        while True:
            self.job.check()
            try:
                if self.backfill and self._window is None:
                    self._open_window()
                upto = self.p.peek_changes + self._skipped_rows
                rows = self.source.peek(upto)
                self.slot = self.source.slot_info()
            except _TRANSIENT as exc:
                self._reconnect(exc)
                continue
            self.caught_up = len(rows) < upto
            self._warn_retained()
            last: Page[Change] | None = None
            for page in self._read(rows):
                if last is not None:
                    yield last
                last = page
            if last is not None:
                yield Page(last.items, cursor=last.cursor, end_chunk=self.caught_up)
            if target is not None and self.yielded > target and not self._busy():
                return
            if self.caught_up and not self._busy():
                self._idle()

    def _busy(self) -> bool:
        return bool(self.backfill) or self._window is not None

    def _idle(self) -> None:
        if self.clock() - self._heartbeat_at >= self.p.heartbeat_interval:
            try:
                self._emit(HEARTBEAT, "idle")
            except _TRANSIENT as exc:
                self._reconnect(exc)
            return
        time.sleep(self.p.poll_interval)

    def _emit(self, prefix: str, content: str) -> int:
        lsn = self.source.emit(prefix, content)
        if prefix == HEARTBEAT:
            self._heartbeat_at = self.clock()
        return lsn

    def advance(self, lsn: int) -> None:
        """The sink committed everything up to `lsn`: confirm it to the slot (never before)."""
        if self.acked is not None and lsn <= self.acked:
            return
        try:
            self.source.advance(lsn)
        except _TRANSIENT as exc:  # the next commit, or the reconnection, confirms it
            logger.warning(
                "CDC pipeline %s: could not advance slot %s to %s (%s); it will be",
                self.p.name,
                self.p.slot_name,
                lsn_to_str(lsn),
                error_line(exc),
            )
            return
        self.acked = lsn

    def _cursor(self, lsn: int, *, skip: int = 0) -> dict[str, Any]:
        cursor: dict[str, Any] = {
            "lsn": lsn_to_str(lsn),
            "system_identifier": self.system_identifier,
            "database": self.database,
            "tables": list(self.p.qualified_tables),
            "backfill": self.backfill,
        }
        if skip:
            cursor["skip"] = skip
        return cursor

    # --- start, validation, reconnection ---------------------------------------------------------
    def _start(self, cp: dict[str, Any] | None) -> None:
        cp = cp or {}
        self.acked = lsn_from_str(cp["lsn"]) if cp.get("lsn") else None
        self.yielded = self.acked or 0
        self.skip = int(cp.get("skip", 0))
        self.backfill = cp.get("backfill")
        self.system_identifier = cp.get("system_identifier")
        self.database = cp.get("database")
        self._window, self._tables = None, {}
        self.source.open(self.wait)
        self.source.ensure_publication(list(self.p.qualified_tables))
        self._keys = {t: self.source.table_key(t) for t in self.p.qualified_tables}
        fresh = self.acked is None
        self._validate()
        if not fresh and "tables" in cp:
            self._retable(list(cp["tables"]))

    def _retable(self, before: list[str]) -> None:
        """The pipeline's tables changed since its checkpoint: backfill the added ones (with
        `snapshot`), and forget a pending backfill of the removed ones."""
        tables = list(self.p.qualified_tables)
        if self.backfill is not None:
            pending = [t for t in self.backfill["tables"] if t in tables]
            if pending[:1] != self.backfill["tables"][:1]:
                self.backfill = {"tables": pending, "after": None}
            else:
                self.backfill = {**self.backfill, "tables": pending}
        added = [t for t in tables if t not in before]
        if added and self.p.snapshot:
            pending = self.backfill["tables"] if self.backfill else []
            after = self.backfill["after"] if self.backfill else None
            self.backfill = {"tables": [*pending, *added], "after": after}
            logger.info("CDC pipeline %s: new tables %s, backfilling them", self.p.name, added)
        if self.backfill is not None and not self.backfill["tables"]:
            self.backfill = None

    def _reconnect(self, exc: BaseException) -> None:
        logger.warning(
            "CDC pipeline %s: lost the source (%s); reconnecting for up to %.0f s",
            self.p.name,
            error_line(exc),
            self.wait,
        )
        if self.on_wait is not None:
            self.on_wait(f"lost the source, reconnecting: {error_line(exc)}")
        self.source.open(self.wait)
        self._tables = {}  # a new decoding session sends its Relation messages again
        self._validate()

    def _validate(self) -> None:
        """The slot still holds everything after the committed position, on the same server
        and database; else re-snapshot (or fail, on_gap="fail")."""
        sysid, database = self.source.identity()
        slot = self.source.slot_info()
        if slot is not None and slot.database != database:
            raise ConfigError(
                f"CDC pipeline {self.p.name}: replication slot {self.p.slot_name} belongs to "
                f"database {slot.database}, not {database}; give the pipeline another slot_name"
            )
        if slot is not None and (not slot.logical or slot.plugin != "pgoutput"):
            raise ConfigError(
                f"CDC pipeline {self.p.name}: slot {self.p.slot_name} is not a logical slot "
                "of the pgoutput plugin"
            )
        fresh = self.acked is None
        gap = None
        if self.system_identifier not in (None, sysid):
            gap = (
                f"the source is another server (system identifier {sysid}, the pipeline's "
                f"is {self.system_identifier})"
            )
        elif self.database not in (None, database):
            gap = f"the source is database {database}, the pipeline's is {self.database}"
        elif slot is None and not fresh:
            gap = f"replication slot {self.p.slot_name} does not exist any more"
        elif slot is not None and slot.wal_status == "lost":
            gap = (
                f"replication slot {self.p.slot_name} lost WAL it needed (wal_status lost: "
                "it fell behind max_slot_wal_keep_size)"
            )
        elif (
            slot is not None
            and self.acked is not None
            and slot.confirmed is not None
            and self.acked < slot.confirmed
        ):
            gap = (
                f"replication slot {self.p.slot_name} is at {lsn_to_str(slot.confirmed)}, past "
                f"the position the sink holds ({lsn_to_str(self.acked)}): the changes between "
                "were skipped"
            )
        self.system_identifier, self.database = sysid, database
        if gap is not None:
            if self.p.on_gap == "fail":
                raise PositionLost(
                    f"CDC pipeline {self.p.name} cannot resume: {gap}; on_gap='fail' (drop "
                    "the stored position or use on_gap='resnapshot' to backfill again)"
                )
            logger.warning("CDC pipeline %s: %s; re-snapshotting its tables", self.p.name, gap)
            self._resnapshot(slot)
        elif slot is None:  # a first start
            self._restart_at(self.source.create_slot(), snapshot=self.p.snapshot)
        elif fresh:  # a first start whose slot an earlier try created
            assert slot.confirmed is not None
            self._restart_at(slot.confirmed, snapshot=self.p.snapshot)
        elif self.acked is not None and slot.confirmed is not None and self.acked > slot.confirmed:
            self.source.advance(self.acked)  # committed, then stopped before confirming it

    def _resnapshot(self, slot: SlotInfo | None) -> None:
        if slot is not None and slot.wal_status == "lost":
            self.source.drop_slot()
            slot = None
        if slot is None:
            start = self.source.create_slot()
        else:
            assert slot.confirmed is not None
            start = slot.confirmed
        self._restart_at(start, snapshot=True)

    def _restart_at(self, lsn: int, *, snapshot: bool) -> None:
        self.acked = self.yielded = lsn
        self.skip = 0
        self._window = None
        tables = list(self.p.qualified_tables)
        self.backfill = {"tables": tables, "after": None} if snapshot else None

    def _warn_retained(self) -> None:
        retained = self.slot.retained_wal_bytes if self.slot else None
        now = self.clock()
        over = retained is not None and retained > self.p.retained_wal_warning
        if over and retained is not None and now - self._warned_at >= 60:
            self._warned_at = now
            logger.warning(
                "CDC pipeline %s: slot %s retains %d MiB of WAL on the source (over %d "
                "MiB); the server keeps it until the pipeline catches up (docs/cdc.md: "
                "max_slot_wal_keep_size)",
                self.p.name,
                self.p.slot_name,
                retained >> 20,
                self.p.retained_wal_warning >> 20,
            )

    # --- transactions ----------------------------------------------------------------------------
    def _read(self, rows: list[bytes]) -> Iterator[Page[Change]]:
        """The pages of the transactions in `rows` not handed out yet."""
        skipping, high = True, False
        items: list[Change] = []
        self._skipped_rows = 0
        for data in rows:
            kind = data[0] if data else 0
            if kind == _B:
                begin = decode(data)
                assert isinstance(begin, Begin)
                skipping = begin.final_lsn < self.yielded
                items, high = [], False
            elif kind == _R:
                relation = decode(data)
                assert isinstance(relation, Relation)
                self._relation(relation, None if skipping else items)
            elif skipping:
                self._skipped_rows += 1
            elif kind == _C:
                commit = decode(data)
                assert isinstance(commit, Commit)
                yield self._page(items, commit)
                if high:
                    yield from self._snapshot_pages(commit.end_lsn)
            else:
                count = len(items)
                high = self._message(data, items) or high
                if self._schema and len(items) > count:
                    items[count].schema, self._schema = tuple(self._schema), []

    def _page(self, items: list[Change], commit: Commit) -> Page[Change]:
        items.append(Change(COMMIT, "", None, None, None, 0, None))
        last = len(items) - 1
        for seq, change in enumerate(items):
            change.lsn, change.commit_time, change.seq, change.last = (
                commit.end_lsn,
                commit.commit_time,
                seq,
                seq == last,
            )
        if self.skip:
            items, self.skip = items[self.skip :], 0
        self.yielded = commit.end_lsn
        self.commit_time = commit.commit_time
        return Page(items, cursor=self._cursor(commit.end_lsn))

    def _relation(self, relation: Relation, items: list[Change] | None) -> None:
        name = f"{relation.namespace or 'public'}.{relation.name}"
        key = relation.key_names or tuple(c.name for c in relation.columns)
        self._tables[relation.oid] = _Table(
            relation, RowLoader(relation, self.source.conn), name, key
        )
        columns = columns_of(relation)
        before = self.known.get(name)
        if items is None or before == columns:
            return
        self._schema.append((name, before, columns))  # goes with the change that follows
        self.known[name] = columns
        if before is not None:
            logger.warning(
                "CDC pipeline %s: the columns of %s changed on the source (recorded in "
                "cdc_schema_changes): %s -> %s",
                self.p.name,
                name,
                [c[0] for c in before],
                [c[0] for c in columns],
            )

    def _message(self, data: bytes, items: list[Change]) -> bool:
        """Add the change in `data` to `items`; True if it is this window's high watermark."""
        try:
            message = decode(data)
        except PgoutputError as exc:
            items.append(Change("insert", "?", None, None, None, 0, None, error=str(exc)))
            return False
        if isinstance(message, LogicalMessage):
            return self._watermark(message)
        if isinstance(message, Truncate):
            for oid in message.relation_oids:
                table = self._tables.get(oid)
                items.append(Change("truncate", table.name if table else str(oid), *_NONE))
            return False
        if not isinstance(message, Insert | Update | Delete):
            return False  # Type, Origin
        table = self._tables.get(message.relation_oid)
        if table is None:
            items.append(
                Change("insert", str(message.relation_oid), *_NONE, error="unknown relation")
            )
            return False
        change = self._row_change(table, message)
        items.append(change)
        window = self._window
        if window is not None and window.open and table.name == window.table:
            for row in (change.key, change.new):
                if row is not None:
                    window.keys.add(tuple(row.get(k) for k in window.key))
        return False

    def _row_change(self, table: _Table, message: Insert | Update | Delete) -> Change:
        load, key = table.loader.load, table.key
        op = type(message).__name__.lower()
        try:
            if isinstance(message, Insert):
                new = load(message.new)
                return Change(op, table.name, {k: new[k] for k in key}, new, None, 0, None)
            old = load(message.old) if message.old is not None else None
            ident = load(message.key) if message.key is not None else old
            if isinstance(message, Update):
                new = load(message.new)
                ident = ident or new
                return Change(op, table.name, {k: ident[k] for k in key}, new, old, 0, None)
            assert ident is not None
            return Change(op, table.name, {k: ident[k] for k in key}, None, old, 0, None)
        except Exception as exc:
            raw = getattr(message, "new", None) or getattr(message, "key", None) or ()
            names = [c.name for c in table.relation.columns]
            values = {
                n: v if isinstance(v, str) or v is None else repr(v)
                for n, v in zip(names, raw, strict=False)
            }
            return Change(op, table.name, None, values, None, 0, None, error=error_line(exc))

    # --- backfill --------------------------------------------------------------------------------
    def _open_window(self) -> None:
        assert self.backfill is not None
        table = self.backfill["tables"][0]
        key = self._keys.get(table) or self.source.table_key(table)
        columns = self.source.columns(table)
        names = [name for name, _ in columns]
        schema, _, name = table.partition(".")
        shape = tuple(Column(int(n in key), n, oid, -1) for n, oid in columns)
        loader = RowLoader(Relation(0, schema, name, "d", shape), self.source.conn)
        after = self.backfill.get("after")
        wid = uuid.uuid4().hex
        self.source.emit(WATERMARK, f"{wid}:low")
        texts = self.source.select_chunk(table, names, key, after, self.p.snapshot_chunk)
        self.source.emit(WATERMARK, f"{wid}:high")
        rows = []
        for values in texts:
            raw = dict(zip(names, values, strict=True))
            raw_key = [raw[k] for k in key]
            try:
                row = loader.load(values)
            except Exception as exc:
                rows.append(_Row(raw, raw_key, None, None, error_line(exc)))
            else:
                rows.append(_Row(raw, raw_key, tuple(row[k] for k in key), row, None))
        self._window = _Window(wid, table, key, after, rows)

    def _watermark(self, message: LogicalMessage) -> bool:
        window = self._window
        if message.prefix != WATERMARK or window is None:
            return False
        content = message.content.decode(errors="replace")
        if content == f"{window.id}:low":
            window.open = True
        return content == f"{window.id}:high" and window.open

    def _snapshot_pages(self, lsn: int) -> Iterator[Page[Change]]:
        """The window's rows at its high watermark (`lsn`), then the backfill moves on."""
        window, backfill = self._window, self.backfill
        assert window is not None
        assert backfill is not None
        self._window = None
        key, rows = window.key, window.rows
        done = len(rows) < self.p.snapshot_chunk
        keys = [r.key for r in rows if r.key is not None]
        if done:
            tables = backfill["tables"][1:]
            following = {"tables": tables, "after": None} if tables else None
        else:
            following = {"tables": backfill["tables"], "after": rows[-1].raw_key}
        emit = [r for r in rows if r.key is None or r.key not in window.keys]
        span = Change(
            "snapshot_range",
            window.table,
            None,
            None,
            None,
            lsn,
            self.commit_time,
            range_after=tuple(window.after) if window.after is not None else None,
            range_to=None if done else tuple(rows[-1].raw_key),
            keys=tuple(dict.fromkeys([*keys, *window.keys])),
            key_columns=tuple(key),
        )
        self.backfill = following if not emit else backfill
        yield Page([span], cursor=self._cursor(lsn))
        for n, r in enumerate(emit):
            if r.key is None or r.row is None:
                change = Change("snapshot", window.table, None, dict(r.raw), None, lsn, None)
                change.error = r.error
            else:
                change = Change(
                    "snapshot",
                    window.table,
                    dict(zip(key, r.key, strict=True)),
                    r.row,
                    None,
                    lsn,
                    self.commit_time,
                    key_columns=tuple(key),
                )
            if n == len(emit) - 1:
                self.backfill = following
            else:
                self.backfill = {"tables": backfill["tables"], "after": r.raw_key}
            yield Page([change], cursor=self._cursor(lsn))
        self.yielded = max(self.yielded, lsn)


_NONE: Final = (None, None, None, 0, None)
