"""The pgoutput decoder on payloads recorded from a real server (scripts/record_pgoutput.py)."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

from unbroken.cdc.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    PgoutputError,
    Relation,
    RowLoader,
    Truncate,
    TypeInfo,
    Update,
    decode,
    lsn_from_str,
    lsn_to_str,
)

T = TypeVar("T")
RECORDED = json.loads((Path(__file__).parent / "pgoutput_v1.json").read_text())
PAYLOADS = [bytes.fromhex(message["hex"]) for message in RECORDED["messages"]]
MESSAGES = [decode(payload) for payload in PAYLOADS]


def of_type(kind: type[T]) -> list[T]:
    return [message for message in MESSAGES if isinstance(message, kind)]


def relation(name: str) -> Relation:
    return next(r for r in of_type(Relation) if r.name == name)


def changes_of(name: str) -> list[Message]:
    oid = relation(name).oid
    return [m for m in MESSAGES if getattr(m, "relation_oid", None) == oid]


def test_begin_and_commit_frame_every_transaction() -> None:
    begins, commits = of_type(Begin), of_type(Commit)
    assert len(begins) == len(commits) == 11  # ten steps and the one from an origin
    for begin, commit in zip(begins, commits, strict=True):
        assert begin.final_lsn == commit.commit_lsn
        assert commit.end_lsn > commit.commit_lsn
        assert begin.commit_time == commit.commit_time
        assert begin.commit_time.tzinfo is UTC
        assert (
            datetime(2026, 1, 1, tzinfo=UTC) < begin.commit_time < datetime(2100, 1, 1, tzinfo=UTC)
        )
    assert [b.xid for b in begins] == sorted(b.xid for b in begins)


def test_relation_columns_keys_and_replica_identity() -> None:
    plain = relation("rec_plain")
    assert (plain.namespace, plain.replica_identity) == ("public", "d")
    assert [(c.name, c.type_oid, c.is_key) for c in plain.columns] == [
        ("id", 23, True), ("name", 25, False), ("big", 25, False), ("note", 25, False),
    ]  # fmt: skip
    assert plain.key_names == ("id",)
    full = relation("rec_full")
    assert full.replica_identity == "f"
    assert full.key_names == ("id", "v")  # FULL: every column identifies the row


def test_type_message_precedes_a_relation_using_a_custom_type() -> None:
    (mood,) = of_type(TypeInfo)
    assert (mood.namespace, mood.name) == ("public", "rec_mood")
    assert relation("rec_typed").columns[1].type_oid == mood.oid


def test_insert_update_delete_on_the_default_replica_identity() -> None:
    insert, unchanged_toast, new_key, delete = changes_of("rec_plain")
    assert isinstance(insert, Insert)
    row_id, name, big, note = insert.new
    assert (row_id, name, note) == ("1", "one", None)  # NULL is 'n'
    assert isinstance(big, str)
    assert len(big) == 400 * 32  # a TOASTed value, sent in full
    assert unchanged_toast == Update(
        insert.relation_oid, old=None, key=None, new=("1", "uno", UNCHANGED, None)
    )  # the untouched TOASTed column is 'u'
    assert new_key == Update(
        insert.relation_oid,
        old=None,
        key=("1", None, None, None),
        new=("10", "uno", UNCHANGED, None),
    )  # the key changed: the old key is sent ('K')
    assert delete == Delete(insert.relation_oid, old=None, key=("10", None, None, None))


def test_update_and_delete_with_replica_identity_full_send_the_old_row() -> None:
    changes = changes_of("rec_full")
    oid = relation("rec_full").oid
    assert changes == [
        Insert(oid, ("1", "a")),
        Insert(oid, ("2", "b")),
        Update(oid, old=("1", "a"), key=None, new=("1", "a2")),
        Delete(oid, old=("2", "b"), key=None),
        Insert(oid, ("3", "from elsewhere")),
    ]


def test_truncate_names_its_relations_and_options() -> None:
    (truncate,) = of_type(Truncate)
    assert truncate.relation_oids == (relation("rec_plain").oid, relation("rec_full").oid)
    assert truncate.options == 2  # RESTART IDENTITY


def test_logical_messages_transactional_and_not() -> None:
    inside, outside = of_type(LogicalMessage)
    assert (inside.transactional, inside.prefix, inside.content) == (
        True, "unbroken", "héllo".encode()
    )  # fmt: skip
    assert (outside.transactional, outside.content) == (False, b"\x00\xff")
    assert outside.lsn > inside.lsn > 0
    position = MESSAGES.index(outside)
    assert not isinstance(MESSAGES[position - 1], Begin)  # outside any transaction


def test_origin_names_the_replication_origin() -> None:
    (origin,) = of_type(Origin)
    assert origin.name == "rec_origin"
    assert isinstance(MESSAGES[MESSAGES.index(origin) - 1], Begin)


@pytest.mark.parametrize("index", range(len(PAYLOADS)))
def test_every_truncation_of_a_recorded_message_is_a_pgoutput_error(index: int) -> None:
    payload = PAYLOADS[index]
    for cut in range(len(payload)):
        with pytest.raises(PgoutputError) as caught:
            decode(payload[:cut])
        assert 0 <= caught.value.offset <= cut


@pytest.mark.parametrize("index", range(len(PAYLOADS)))
def test_trailing_bytes_are_refused(index: int) -> None:
    with pytest.raises(PgoutputError, match=r"at byte \d+: 1 trailing bytes") as caught:
        decode(PAYLOADS[index] + b"\0")
    assert caught.value.offset == len(PAYLOADS[index])


def insert_payload(*columns: bytes) -> bytes:
    return (
        b"I" + struct.pack("!I", 16395) + b"N" + struct.pack("!h", len(columns)) + b"".join(columns)
    )


def text(value: bytes) -> bytes:
    return b"t" + struct.pack("!i", len(value)) + value


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "malformed pgoutput empty message at byte 0: no message type byte"),
        (b"Z123", "malformed pgoutput 'Z' message at byte 0: unknown or unsupported message type"),
        (
            insert_payload(text(b"1"), b"x"),
            "malformed pgoutput Insert message at byte 14: unknown column kind 'x'",
        ),
        (
            insert_payload(b"t" + struct.pack("!i", -1)),
            "malformed pgoutput Insert message at byte 9: column length -1 overruns payload",
        ),
        (
            insert_payload(b"t" + struct.pack("!i", 50) + b"short"),
            "malformed pgoutput Insert message at byte 9: column length 50 overruns payload",
        ),
        (
            insert_payload(text(b"ok"), text(b"\xff\xfe")),
            "malformed pgoutput Insert message at byte 20: text value is not UTF-8",
        ),
        (
            b"I" + struct.pack("!I", 1) + b"K" + struct.pack("!h", 0),
            "malformed pgoutput Insert message at byte 5: unexpected tuple tag 'K'",
        ),
        (
            b"U" + struct.pack("!I", 1) + b"K" + struct.pack("!h", 0) + b"O",
            "malformed pgoutput Update message at byte 8: unexpected tuple tag 'O'",
        ),
        (
            b"I" + struct.pack("!I", 1) + b"N" + struct.pack("!h", -3),
            "malformed pgoutput Insert message at byte 6: negative column count -3",
        ),
        (
            b"R" + struct.pack("!I", 1) + b"public\0no terminator",
            "malformed pgoutput Relation message at byte 12: relation name is not NUL-terminated",
        ),
        (
            b"T" + struct.pack("!iB", 3, 0) + struct.pack("!I", 1),
            "malformed pgoutput Truncate message at byte 1: 3 relation oids overrun the payload",
        ),
        (
            b"M" + struct.pack("!BQ", 1, 5) + b"p\0" + struct.pack("!i", 9) + b"abc",
            "malformed pgoutput Message message at byte 12: content length 9 overruns payload",
        ),
        (b"B\0\0", "malformed pgoutput Begin message at byte 1: truncated body (2 of 20 bytes)"),
    ],
)
def test_malformed_payloads_name_type_and_offset(payload: bytes, message: str) -> None:
    with pytest.raises(PgoutputError) as caught:
        decode(payload)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_binary_values_stay_bytes() -> None:
    payload = insert_payload(b"b" + struct.pack("!i", 4) + b"\0\0\0\x07", b"n", b"u")
    assert decode(payload) == Insert(16395, (b"\0\0\0\x07", None, UNCHANGED))


@pytest.mark.parametrize(
    ("lsn", "text_form"),
    [
        (0, "0/0"),
        (0x16B3748, "0/16B3748"),
        (0x1_0000_0000, "1/0"),
        ((1 << 64) - 1, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_lsn_text_round_trip(lsn: int, text_form: str) -> None:
    assert lsn_to_str(lsn) == text_form
    assert lsn_from_str(text_form) == lsn
    assert lsn_from_str(text_form.lower()) == lsn


@pytest.mark.parametrize("bad", ["", "16B3748", "0/", "/1", "0/xyz", "123456789/0", "0/1/2"])
def test_lsn_from_str_refuses_what_is_no_lsn(bad: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        lsn_from_str(bad)


def test_lsn_to_str_refuses_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        lsn_to_str(-1)


def test_row_loader_uses_the_adapters() -> None:
    (typed,) = [m for m in changes_of("rec_typed") if isinstance(m, Insert)]
    loader = RowLoader(relation("rec_typed"))
    row: dict[str, Any] = loader.load(typed.new)
    assert row == {
        "id": 9007199254740993,
        "mood": "happy",  # an enum with no registered loader comes back as text
        "at": datetime(2026, 12, 4, 11, 0, 0, 123456, tzinfo=UTC),
        "n": Decimal("12345.678901"),
    }


def test_row_loader_keeps_null_and_unchanged_and_checks_the_width() -> None:
    loader = RowLoader(relation("rec_plain"))
    assert loader.load(("7", None, UNCHANGED, "x")) == {
        "id": 7, "name": None, "big": UNCHANGED, "note": "x",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"public.rec_plain has 4 columns, the change has 2"):
        loader.load(("7", None))
