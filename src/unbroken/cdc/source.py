"""The pipeline's connection to its SOURCE database: slot, publication, messages, snapshots.

One ordinary psycopg connection (autocommit), not a replication connection: psycopg 3
cannot speak the streaming replication protocol, so the slot is read with
`pg_logical_slot_peek_binary_changes` and acknowledged with `pg_replication_slot_advance`
(docs/cdc.md). Every statement is a named query of sql/cdc.sql, except the two whose table
and column names are chosen at run time (the publication's table list, a backfill chunk's
SELECT), composed with psycopg.sql, every name quoted as an identifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from unbroken.cdc.pgoutput import lsn_from_str, lsn_to_str
from unbroken.chunks.sinks import table_name
from unbroken.db._sync.pool import wait_until_reachable
from unbroken.db.conninfo import describe_target, error_line
from unbroken.errors import ConfigError, DatabaseUnavailable
from unbroken.settings import Settings
from unbroken.sql import queries

logger = logging.getLogger("unbroken.cdc")
Q = queries()  # the source statements name no table of ours: any schema renders them alike


@dataclass(frozen=True, slots=True)
class SlotInfo:
    database: str
    plugin: str | None
    logical: bool
    confirmed: int | None  # confirmed_flush_lsn
    restart: int | None
    wal_status: str | None  # reserved / extended / unreserved / lost
    wal_end: int  # the server's WAL write position when read
    retained_wal_bytes: int | None


def _lsn(text: str | None) -> int | None:
    return None if text is None else lsn_from_str(text)


class SourceDB:
    """The source connection, opened with the start-up wait and reopened on demand."""

    def __init__(self, url: str, settings: Settings, *, slot: str, publication: str) -> None:
        self.url = url
        self.settings = settings
        self.slot = slot
        self.publication = publication
        self._conn: psycopg.Connection[Any] | None = None

    # --- the connection --------------------------------------------------------------------
    def open(self, wait: float) -> None:
        """Connect, waiting up to `wait` seconds (with backoff) for the server to accept."""
        self.close()
        try:
            wait_until_reachable(self.url, self.settings, wait)
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=self.settings.connect_timeout,
                keepalives=1,
                keepalives_idle=self.settings.keepalives_idle,
                keepalives_interval=self.settings.keepalives_interval,
                keepalives_count=self.settings.keepalives_count,
                application_name=f"{self.settings.application_name}:cdc",
            )
        except DatabaseUnavailable as exc:
            raise DatabaseUnavailable(f"CDC source: {exc}") from None
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"CDC source not reachable ({describe_target(self.url)}): {error_line(exc)}"
            ) from None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            raise psycopg.OperationalError("the CDC source connection is closed")
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(Q[name], params or {})
            return cur.fetchone()

    # --- facts -------------------------------------------------------------------------------
    def identity(self) -> tuple[str, str]:
        """(system identifier, database name) of the source."""
        row = self._one("cdc_source_identity")
        assert row is not None
        return str(row["system_identifier"]), str(row["database"])

    def slot_info(self) -> SlotInfo | None:
        row = self._one("cdc_slot_get", {"slot": self.slot})
        if row is None:
            return None
        return SlotInfo(
            database=row["database"],
            plugin=row["plugin"],
            logical=row["slot_type"] == "logical",
            confirmed=_lsn(row["confirmed_flush_lsn"]),
            restart=_lsn(row["restart_lsn"]),
            wal_status=row["wal_status"],
            wal_end=lsn_from_str(row["wal_end"]),
            retained_wal_bytes=row["retained_wal_bytes"],
        )

    def wal_end(self) -> int:
        row = self._one("cdc_wal_end")
        assert row is not None
        return lsn_from_str(row["lsn"])

    def table_key(self, table: str) -> list[str]:
        """The primary-key columns of `table`, in key order; ConfigError when it has none."""
        try:
            with self.conn.cursor() as cur:
                cur.execute(Q["cdc_table_key"], {"table": table})
                names = [str(r[0]) for r in cur.fetchall()]
        except psycopg.errors.UndefinedTable:
            raise ConfigError(f"CDC source table {table} does not exist") from None
        if not names:
            raise ConfigError(
                f"CDC source table {table} has no primary key: a pipeline needs one to "
                "backfill in key order and to find rows in the sink"
            )
        return names

    # --- slot and publication ----------------------------------------------------------------
    def create_slot(self) -> int:
        """Create the slot (pgoutput); returns its consistent point."""
        row = self._one("cdc_slot_create", {"slot": self.slot})
        assert row is not None
        return lsn_from_str(row["lsn"])

    def drop_slot(self) -> bool:
        """Drop the slot if it exists (and nobody uses it); True if it was dropped."""
        row = self._one("cdc_slot_drop", {"slot": self.slot})
        return bool(row and row["dropped"])

    def ensure_publication(self, tables: list[str]) -> None:
        """Create the publication for `tables`, or set its tables when they differ."""
        row = self._one("cdc_publication_tables", {"publication": self.publication})
        names = sql.SQL(", ").join(table_name(t) for t in tables)
        pub = sql.Identifier(self.publication)
        if row is None:
            statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, names)
        elif sorted(row["tables"] or []) != sorted(tables):
            statement = sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, names)
        else:
            return
        self.conn.execute(statement)

    def peek(self, upto: int) -> list[bytes]:
        """The slot's pending pgoutput messages (whole transactions, at least `upto` of them
        when there are), without consuming them."""
        with self.conn.cursor() as cur:
            cur.execute(
                Q["cdc_slot_peek"],
                {"slot": self.slot, "upto": upto, "publication": self.publication},
            )
            return [bytes(r[0]) for r in cur.fetchall()]

    def advance(self, lsn: int) -> None:
        """Confirm everything up to `lsn` (committed in the sink) to the slot."""
        self._one("cdc_slot_advance", {"slot": self.slot, "lsn": lsn_to_str(lsn)})

    def emit(self, prefix: str, content: str) -> int:
        """A transactional logical message in the source database; returns its LSN."""
        row = self._one("cdc_message_emit", {"prefix": prefix, "content": content})
        assert row is not None
        return lsn_from_str(row["lsn"])

    # --- backfill ----------------------------------------------------------------------------
    def columns(self, table: str) -> list[tuple[str, int]]:
        """(name, type oid) of `table`'s columns, in order."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(table_name(table)))
            return [(d.name, d.type_code) for d in cur.description or ()]

    def select_chunk(
        self, table: str, columns: list[str], key: list[str], after: list[Any] | None, limit: int
    ) -> list[tuple[str | None, ...]]:
        """Up to `limit` rows of `table` after key `after` (None: from the start), in key
        order, every column as text (as pgoutput sends them): the caller loads each row,
        so a value Python cannot hold fails that row alone, not the chunk."""
        # Qualified (t.id): ORDER BY a bare name would sort by the output column, the text.
        cols = sql.SQL(", ").join(sql.Identifier("t", k) for k in key)
        where: sql.Composable = sql.SQL("")
        if after is not None:
            where = sql.SQL("WHERE ({}) > ({})").format(
                cols, sql.SQL(", ").join(sql.Placeholder() * len(key))
            )
        texts = sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in columns
        )
        statement = sql.SQL("SELECT {} FROM {} AS t {} ORDER BY {} LIMIT {}").format(
            texts, table_name(table), where, cols, sql.Literal(limit)
        )
        with self.conn.cursor() as cur:
            cur.execute(statement, after or None)
            return cur.fetchall()


def drop_slot(source_url: str, slot: str, settings: Settings) -> bool:
    """Drop a pipeline's replication slot on its source (stops WAL retention; the next run
    re-snapshots); True if it existed. `unbroken pipelines drop-slot` runs this."""
    source = SourceDB(source_url, settings, slot=slot, publication="")
    source.open(wait=0)
    try:
        dropped = source.drop_slot()
    finally:
        source.close()
    if dropped:
        logger.warning("dropped replication slot %s on %s", slot, describe_target(source_url))
    return dropped
