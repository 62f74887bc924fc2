"""Record pgoutput payloads from a real server's slot into tests/unit/pgoutput_v1.json.

Run once against a server with wal_level=logical; the unit tests decode the recorded bytes:
    python scripts/record_pgoutput.py postgresql://postgres@127.0.0.1:5432/postgres
Every message type protocol 1 sends is covered: Begin, Commit, Origin, Relation, Type, Insert,
Update (plain, new key, REPLICA IDENTITY FULL, unchanged TOAST), Delete (key, full), Truncate
and transactional and non-transactional logical messages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psycopg

OUT = Path(__file__).resolve().parents[1] / "tests" / "unit" / "pgoutput_v1.json"
SETUP = [
    "DROP PUBLICATION IF EXISTS rec_pub",
    "DROP TABLE IF EXISTS rec_plain, rec_full, rec_typed",
    "DROP TYPE IF EXISTS rec_mood",
    "CREATE TYPE rec_mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE TABLE rec_plain (id int PRIMARY KEY, name text, big text, note text)",
    "CREATE TABLE rec_full (id int PRIMARY KEY, v text)",
    "ALTER TABLE rec_full REPLICA IDENTITY FULL",
    "CREATE TABLE rec_typed (id bigint PRIMARY KEY, mood rec_mood, at timestamptz, n numeric)",
    "CREATE PUBLICATION rec_pub FOR TABLE rec_plain, rec_full, rec_typed",
]
# each step one transaction; the label names what it shows
STEPS: list[tuple[str, list[str]]] = [
    (
        "insert",
        [
            "INSERT INTO rec_plain VALUES (1, 'one', (SELECT string_agg(md5(g::text), '')"
            " FROM generate_series(1, 400) g), NULL)",
        ],
    ),
    ("update unchanged toast", ["UPDATE rec_plain SET name = 'uno' WHERE id = 1"]),
    ("update new key", ["UPDATE rec_plain SET id = 10 WHERE id = 1"]),
    ("full insert", ["INSERT INTO rec_full VALUES (1, 'a'), (2, 'b')"]),
    ("full update", ["UPDATE rec_full SET v = 'a2' WHERE id = 1"]),
    ("full delete", ["DELETE FROM rec_full WHERE id = 2"]),
    ("delete key", ["DELETE FROM rec_plain WHERE id = 10"]),
    (
        "typed insert",
        [
            "INSERT INTO rec_typed VALUES (9007199254740993, 'happy',"
            " '2026-12-04 11:00:00.123456+00', 12345.678901)",
        ],
    ),
    ("transactional message", ["SELECT pg_logical_emit_message(true, 'unbroken', 'héllo')"]),
    ("truncate", ["TRUNCATE rec_plain, rec_full RESTART IDENTITY"]),
]


def main(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in SETUP:
            conn.execute(sql)  # type: ignore[arg-type]
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = 'rec_slot'"
        )
        conn.execute("SELECT pg_create_logical_replication_slot('rec_slot', 'pgoutput')")
        labels: list[str] = []
        for label, statements in STEPS:
            with conn.transaction():
                for sql in statements:
                    conn.execute(sql)  # type: ignore[arg-type]
            labels.append(label)
        conn.execute("SELECT pg_logical_emit_message(false, 'unbroken', '\\x00ff'::bytea)")
        # a transaction replayed from another origin carries an Origin message
        conn.execute("SELECT pg_replication_origin_create('rec_origin')")
        conn.execute("SELECT pg_replication_origin_session_setup('rec_origin')")
        with conn.transaction():
            conn.execute("INSERT INTO rec_full VALUES (3, 'from elsewhere')")
        conn.execute("SELECT pg_replication_origin_session_reset()")
        conn.execute("SELECT pg_replication_origin_drop('rec_origin')")
        rows = conn.execute(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes("
            "'rec_slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'rec_pub',"
            " 'messages', 'true')"
        ).fetchall()
        conn.execute("SELECT pg_drop_replication_slot('rec_slot')")
        version = conn.execute("SHOW server_version").fetchone()
    records = [
        {"lsn": lsn, "xid": xid, "type": chr(data[0]), "hex": bytes(data).hex()}
        for lsn, xid, data in rows
    ]
    document = {"server_version": version[0] if version else "?", "messages": records}
    OUT.write_text(json.dumps(document, indent=1) + "\n")
    print(f"{len(records)} messages -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
