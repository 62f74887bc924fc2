"""What a pipeline's write function gets: `Change` items, one per row change of the source.

A chunk's `items` are Changes in source commit order. `op` is one of:

- "insert", "update", "delete": a row change streamed from the replication slot;
- "truncate": the table was emptied (`new`, `old` and `key` are None);
- "snapshot": a row read by a backfill (initial snapshot or re-snapshot), `new` is the row
  as it was at the chunk's high watermark; apply it as an upsert;
- "snapshot_range": a backfill chunk's key range (`range_after`, exclusive, to `range_to`,
  inclusive; None is the table's start or end) and the keys that exist in it (`keys`): a
  sink deletes its rows whose key falls in the range and is not among `keys` (rows deleted
  while the stream was lost). It comes before the chunk's "snapshot" rows.

`key` is the row's identity in the sink (the primary key / replica identity columns; for
an update that changed the key, the OLD key), `new` the row after, `old` the whole row
before when the table has REPLICA IDENTITY FULL. A column an update did not touch and that
PostgreSQL did not send (an unchanged TOASTed value) holds `UNCHANGED`: keep the sink's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from unbroken.cdc.pgoutput import UNCHANGED, Unchanged

Op = Literal["insert", "update", "delete", "truncate", "snapshot", "snapshot_range"]
Key = tuple[Any, ...]

# The internal item the sink never sees: a source transaction's end (every page has one, so
# a transaction that changed nothing the pipeline reads still moves the position).
COMMIT: Final = "commit"

__all__ = ["UNCHANGED", "Change", "Key", "Op", "Unchanged"]


@dataclass(slots=True, eq=False)
class Change:
    """One change of one source row (see the module docstring for each op)."""

    op: str  # an Op, or COMMIT (internal, never given to a write function)
    relation: str  # "schema.table"
    key: dict[str, Any] | None
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    lsn: int  # end LSN of the source transaction (what the position becomes once applied)
    commit_time: datetime | None
    range_after: Key | None = None  # snapshot_range: the range, exclusive...
    range_to: Key | None = None  # ...to inclusive (None: the table's start / end)
    keys: tuple[Key, ...] = ()  # snapshot_range: the keys that exist in the range
    key_columns: tuple[str, ...] = ()  # the names of the key's columns, in key order
    error: str | None = field(default=None, repr=False)  # could not be decoded: dead letter
    # (table, columns before or None, columns after) of tables whose Relation message came
    # before this change and differs from the known one: recorded with it, not as items of
    # their own, so a page is the same length however much of it was committed before
    schema: tuple[tuple[str, Any, Any], ...] = field(default=(), repr=False)
    seq: int = field(default=0, repr=False)  # index in its page (resuming inside a page)
    last: bool = field(default=True, repr=False)  # the last item of its page

    def describe(self) -> dict[str, Any]:
        """The change as JSON-able data (for a dead letter)."""
        return {
            "op": self.op,
            "relation": self.relation,
            "key": _plain(self.key),
            "new": _plain(self.new),
            "old": _plain(self.old),
        }


def _plain(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: (None if v is UNCHANGED else v if _jsonable(v) else str(v)) for k, v in row.items()}


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
