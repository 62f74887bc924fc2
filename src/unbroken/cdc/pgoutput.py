"""A decoder for pgoutput, PostgreSQL's built-in logical replication output (protocol 1).

Pure: bytes in, frozen dataclasses out, no I/O. One payload is one message, as returned in the
``data`` column of ``pg_logical_slot_peek_binary_changes(slot, NULL, n, 'proto_version', '1',
'publication_names', ..., 'messages', 'true')``. The layout is the server's "Logical Replication
Message Formats" chapter; integers are big-endian, strings NUL-terminated.

A malformed payload raises ``PgoutputError`` naming the message type and the byte offset where
decoding failed. Speed matters (every change passes through here): fixed fields are read with
precompiled ``struct`` formats and column values are sliced, never walked byte by byte.

``RowLoader`` turns a tuple of text values into Python values with a connection's adapters.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import pq
from psycopg.abc import AdaptContext, Loader
from psycopg.adapt import Transformer

__all__ = [
    "UNCHANGED",
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "PgoutputError",
    "Relation",
    "RowLoader",
    "Truncate",
    "TypeInfo",
    "Unchanged",
    "Update",
    "Value",
    "decode",
    "lsn_from_str",
    "lsn_to_str",
]


class PgoutputError(ValueError):
    """A pgoutput payload that cannot be decoded; names the message type and the byte offset."""

    def __init__(self, message_type: str, offset: int, problem: str) -> None:
        super().__init__(f"malformed pgoutput {message_type} message at byte {offset}: {problem}")
        self.message_type = message_type
        self.offset = offset
        self.problem = problem


class Unchanged(enum.Enum):
    """pgoutput's 'u': a TOASTed value the change did not touch (and so did not send)."""

    UNCHANGED = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Literal[Unchanged.UNCHANGED] = Unchanged.UNCHANGED

# text ('t') as str, binary ('b', only with the 'binary' option) as bytes, NULL ('n') as None
Value = str | bytes | None | Unchanged
Row = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    flags: int  # 1 = part of the key (the replica identity)
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str  # "" for pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if column.is_key)


@dataclass(frozen=True, slots=True)
class TypeInfo:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: Row


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old: Row | None  # the whole old row (REPLICA IDENTITY FULL)
    key: Row | None  # the old key, sent when the key changed (non-key columns are None)
    new: Row


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: Row | None
    key: Row | None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    options: int  # 1 = CASCADE, 2 = RESTART IDENTITY


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = (
    Begin | Commit | Origin | Relation | TypeInfo | Insert | Update | Delete | Truncate
    | LogicalMessage
)  # fmt: skip

# --- LSNs ---------------------------------------------------------------------------------------


def lsn_to_str(lsn: int) -> str:
    """The server's text form of an LSN: 0x16B3748 -> '0/16B3748'."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_from_str(text: str) -> int:
    """'0/16B3748' -> 0x16B3748; ValueError naming the text when it is no LSN."""
    high, sep, low = text.strip().partition("/")
    try:
        if not sep or not 1 <= len(high) <= 8 or not 1 <= len(low) <= 8:
            raise ValueError
        return int(high, 16) << 32 | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r} (expected hex 'X/X' as in '0/16B3748')") from None


# --- decoding -----------------------------------------------------------------------------------

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_U64 = struct.Struct("!Q")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_RELATION_HEAD = struct.Struct("!I")
_COLUMN_TYPE = struct.Struct("!Ii")
_TRUNCATE_HEAD = struct.Struct("!iB")
_MESSAGE_HEAD = struct.Struct("!BQ")

_NAMES = {
    ord("B"): "Begin", ord("C"): "Commit", ord("O"): "Origin", ord("R"): "Relation",
    ord("Y"): "Type", ord("I"): "Insert", ord("U"): "Update", ord("D"): "Delete",
    ord("T"): "Truncate", ord("M"): "Message",
}  # fmt: skip


def _timestamp(micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=micros)


def _fixed(data: bytes, pos: int, fmt: struct.Struct, kind: str, what: str) -> tuple[Any, ...]:
    if pos + fmt.size > len(data):
        raise PgoutputError(kind, pos, f"truncated {what} ({len(data) - pos} of {fmt.size} bytes)")
    return fmt.unpack_from(data, pos)


def _string(data: bytes, pos: int, kind: str, what: str) -> tuple[str, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        raise PgoutputError(kind, pos, f"{what} is not NUL-terminated")
    try:
        return data[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise PgoutputError(kind, pos + exc.start, f"{what} is not UTF-8") from None


def _tuple(data: bytes, pos: int, kind: str) -> tuple[Row, int]:
    """TupleData at pos: the values and the offset after them."""
    size = len(data)
    if pos + 2 > size:
        raise PgoutputError(kind, pos, "truncated tuple (no column count)")
    (count,) = _I16.unpack_from(data, pos)
    if count < 0:
        raise PgoutputError(kind, pos, f"negative column count {count}")
    pos += 2
    values: list[Value] = []
    append = values.append
    unpack = _I32.unpack_from
    for _ in range(count):
        if pos >= size:
            raise PgoutputError(kind, pos, f"tuple ends after {len(values)} of {count} columns")
        tag = data[pos]
        if tag == 0x74 or tag == 0x62:  # 't' text, 'b' binary: Int32 length, bytes
            if pos + 5 > size:
                raise PgoutputError(kind, pos, "truncated column length")
            (length,) = unpack(data, pos + 1)
            start = pos + 5
            pos = start + length
            if length < 0 or pos > size:
                raise PgoutputError(kind, start - 4, f"column length {length} overruns payload")
            if tag == 0x74:
                try:
                    append(data[start:pos].decode())
                except UnicodeDecodeError as exc:
                    where = start + exc.start
                    raise PgoutputError(kind, where, "text value is not UTF-8") from None
            else:
                append(data[start:pos])
        elif tag == 0x6E:  # 'n'
            append(None)
            pos += 1
        elif tag == 0x75:  # 'u'
            append(UNCHANGED)
            pos += 1
        else:
            raise PgoutputError(kind, pos, f"unknown column kind {chr(tag)!r}")
    return tuple(values), pos


def _tag(data: bytes, pos: int, kind: str, expected: bytes) -> int:
    if pos >= len(data):
        raise PgoutputError(kind, pos, f"truncated (expected one of {expected.decode()!r})")
    tag = data[pos]
    if tag not in expected:
        raise PgoutputError(kind, pos, f"unexpected tuple tag {chr(tag)!r}")
    return tag


def _begin(data: bytes) -> tuple[Message, int]:
    final_lsn, micros, xid = _fixed(data, 1, _BEGIN, "Begin", "body")
    return Begin(final_lsn, _timestamp(micros), xid), 1 + _BEGIN.size


def _commit(data: bytes) -> tuple[Message, int]:
    flags, commit_lsn, end_lsn, micros = _fixed(data, 1, _COMMIT, "Commit", "body")
    return Commit(flags, commit_lsn, end_lsn, _timestamp(micros)), 1 + _COMMIT.size


def _origin(data: bytes) -> tuple[Message, int]:
    (lsn,) = _fixed(data, 1, _U64, "Origin", "LSN")
    name, pos = _string(data, 9, "Origin", "origin name")
    return Origin(lsn, name), pos


def _relation(data: bytes) -> tuple[Message, int]:
    kind = "Relation"
    (oid,) = _fixed(data, 1, _RELATION_HEAD, kind, "relation oid")
    namespace, pos = _string(data, 5, kind, "namespace")
    name, pos = _string(data, pos, kind, "relation name")
    if pos + 3 > len(data):
        raise PgoutputError(kind, pos, "truncated replica identity and column count")
    identity = chr(data[pos])
    (count,) = _I16.unpack_from(data, pos + 1)
    if count < 0:
        raise PgoutputError(kind, pos + 1, f"negative column count {count}")
    pos += 3
    columns: list[Column] = []
    for _ in range(count):
        if pos >= len(data):
            raise PgoutputError(kind, pos, f"relation ends after {len(columns)} of {count} columns")
        flags = data[pos]
        column, pos = _string(data, pos + 1, kind, "column name")
        type_oid, modifier = _fixed(data, pos, _COLUMN_TYPE, kind, "column type")
        pos += _COLUMN_TYPE.size
        columns.append(Column(flags, column, type_oid, modifier))
    return Relation(oid, namespace, name, identity, tuple(columns)), pos


def _type(data: bytes) -> tuple[Message, int]:
    (oid,) = _fixed(data, 1, _U32, "Type", "type oid")
    namespace, pos = _string(data, 5, "Type", "namespace")
    name, pos = _string(data, pos, "Type", "type name")
    return TypeInfo(oid, namespace, name), pos


def _insert(data: bytes) -> tuple[Message, int]:
    (oid,) = _fixed(data, 1, _U32, "Insert", "relation oid")
    _tag(data, 5, "Insert", b"N")
    new, pos = _tuple(data, 6, "Insert")
    return Insert(oid, new), pos


def _old(data: bytes, kind: str, expected: bytes) -> tuple[int, Row | None, Row | None, int]:
    (oid,) = _fixed(data, 1, _U32, kind, "relation oid")
    tag = _tag(data, 5, kind, expected)
    if tag == 0x4E:  # 'N': no old row sent
        return oid, None, None, 5
    row, pos = _tuple(data, 6, kind)
    return (oid, row, None, pos) if tag == 0x4F else (oid, None, row, pos)


def _update(data: bytes) -> tuple[Message, int]:
    oid, old, key, pos = _old(data, "Update", b"KON")
    _tag(data, pos, "Update", b"N")
    new, pos = _tuple(data, pos + 1, "Update")
    return Update(oid, old, key, new), pos


def _delete(data: bytes) -> tuple[Message, int]:
    oid, old, key, pos = _old(data, "Delete", b"KO")
    return Delete(oid, old, key), pos


def _truncate(data: bytes) -> tuple[Message, int]:
    count, options = _fixed(data, 1, _TRUNCATE_HEAD, "Truncate", "header")
    end = 1 + _TRUNCATE_HEAD.size + 4 * count
    if count < 0 or end > len(data):
        raise PgoutputError("Truncate", 1, f"{count} relation oids overrun the payload")
    oids = struct.unpack_from(f"!{count}I", data, 1 + _TRUNCATE_HEAD.size)
    return Truncate(oids, options), end


def _message(data: bytes) -> tuple[Message, int]:
    flags, lsn = _fixed(data, 1, _MESSAGE_HEAD, "Message", "flags and LSN")
    prefix, pos = _string(data, 1 + _MESSAGE_HEAD.size, "Message", "prefix")
    (length,) = _fixed(data, pos, _I32, "Message", "content length")
    start = pos + 4
    if length < 0 or start + length > len(data):
        raise PgoutputError("Message", pos, f"content length {length} overruns payload")
    return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(data[start : start + length])), (
        start + length
    )


_DECODERS: dict[int, Callable[[bytes], tuple[Message, int]]] = {
    ord("B"): _begin, ord("C"): _commit, ord("O"): _origin, ord("R"): _relation,
    ord("Y"): _type, ord("I"): _insert, ord("U"): _update, ord("D"): _delete,
    ord("T"): _truncate, ord("M"): _message,
}  # fmt: skip


def decode(data: bytes) -> Message:
    """One pgoutput message; PgoutputError naming type and offset if the payload is malformed."""
    if not data:
        raise PgoutputError("empty", 0, "no message type byte")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise PgoutputError(repr(chr(data[0])), 0, "unknown or unsupported message type")
    message, end = decoder(data)
    if end != len(data):
        name = _NAMES[data[0]]
        raise PgoutputError(name, end, f"{len(data) - end} trailing bytes after the message")
    return message


# --- text values to Python values ---------------------------------------------------------------


class RowLoader:
    """Loads one relation's text values into a dict column -> Python value.

    Built from a Relation and an adaptation context (a psycopg connection or cursor), so values
    come back as that connection would return them from a query (int, Decimal, datetime, ...).
    NULL stays None and an unchanged TOASTed value stays UNCHANGED.
    """

    __slots__ = ("_binary", "_names", "_text", "relation")

    def __init__(self, relation: Relation, context: AdaptContext | None = None) -> None:
        transformer = Transformer(context)
        self.relation = relation
        self._names = tuple(column.name for column in relation.columns)
        self._text: tuple[Loader, ...] = tuple(
            transformer.get_loader(column.type_oid, pq.Format.TEXT) for column in relation.columns
        )
        self._binary: tuple[Loader, ...] = tuple(
            transformer.get_loader(column.type_oid, pq.Format.BINARY) for column in relation.columns
        )

    def load(self, values: Row) -> dict[str, Any]:
        """The row as a dict; ValueError when the value count does not match the relation."""
        if len(values) != len(self._names):
            raise ValueError(
                f"{self.relation.namespace}.{self.relation.name} has {len(self._names)} columns, "
                f"the change has {len(values)}"
            )
        row: dict[str, Any] = {}
        columns = zip(self._names, self._text, self._binary, values, strict=True)
        for name, text, binary, value in columns:
            if value is None or value is UNCHANGED:
                row[name] = value
            elif isinstance(value, str):
                row[name] = text.load(value.encode())
            else:
                row[name] = binary.load(value)
        return row
