-- Change data capture (unbroken.cdc). Statements on the SOURCE database (read with the SQL
-- functions of logical decoding on an ordinary connection: docs/cdc.md says why) and on the
-- sink side (the pipeline's row, its dead letters and schema changes), which run in a chunk's
-- transaction so they commit with the data.
-- Logical message prefixes are parameters, never literals here (the schema renderer would
-- rewrite a literal naming the schema).

-- name: cdc_source_identity
-- The source server's system identifier and the database connected to: a resumed pipeline must find the same.
SELECT system_identifier::text AS system_identifier, current_database() AS database
FROM pg_control_system()

-- name: cdc_slot_get
-- A replication slot's database, positions and WAL status, with the server's WAL end (for lag and retained WAL); no row if missing.
SELECT database, plugin, slot_type, confirmed_flush_lsn, restart_lsn, wal_status,
       pg_current_wal_lsn() AS wal_end,
       (pg_current_wal_lsn() - restart_lsn)::bigint AS retained_wal_bytes
FROM pg_replication_slots
WHERE slot_name = %(slot)s

-- name: cdc_slot_create
-- Create a logical replication slot with the pgoutput plugin; returns its consistent point.
SELECT lsn FROM pg_create_logical_replication_slot(%(slot)s, 'pgoutput')

-- name: cdc_slot_drop
-- Drop a replication slot of this database, if it exists and no session uses it; true if dropped.
-- Slot names are the server's, not the database's: a slot of the same name made for
-- another database of the server is not ours to drop.
SELECT count(pg_drop_replication_slot(slot_name)) > 0 AS dropped
FROM pg_replication_slots
WHERE slot_name = %(slot)s AND database = current_database()

-- name: cdc_slot_peek
-- Decode the slot's next transactions with pgoutput (protocol 1, messages on) WITHOUT consuming them; whole transactions, at least upto rows.
SELECT data
FROM pg_logical_slot_peek_binary_changes(
    %(slot)s, NULL, %(upto)s,
    'proto_version', '1', 'publication_names', %(publication)s, 'messages', 'true')

-- name: cdc_slot_advance
-- Move the slot's confirmed position to an LSN the sink has committed (never past the WAL written).
SELECT end_lsn FROM pg_replication_slot_advance(%(slot)s, least(%(lsn)s::pg_lsn, pg_current_wal_lsn()))

-- name: cdc_message_emit
-- A transactional logical message in the source database (heartbeat, backfill watermark); returns its LSN.
SELECT pg_logical_emit_message(true, %(prefix)s::text, %(content)s::text) AS lsn

-- name: cdc_wal_end
-- The source server's current WAL write position.
SELECT pg_current_wal_lsn() AS lsn

-- name: cdc_publication_tables
-- The tables a publication holds (schema.table), or no row when it does not exist.
SELECT p.pubname, array_remove(array_agg(t.schemaname || '.' || t.tablename ORDER BY 1), NULL) AS tables
FROM pg_publication AS p
LEFT JOIN pg_publication_tables AS t ON t.pubname = p.pubname
WHERE p.pubname = %(publication)s
GROUP BY p.pubname

-- name: cdc_table_key
-- A source table's primary-key columns in key order, with their types; no row if it has no primary key.
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_index AS i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(table)s::regclass AND i.indisprimary
ORDER BY k.n

-- name: cdc_pipeline_register
-- Create or update a pipeline's row at start; returns where it stands.
INSERT INTO unbroken.cdc_pipelines AS p (name, slot_name, publication, source, tables, state)
VALUES (%(name)s, %(slot)s, %(publication)s, %(source)s, %(tables)s, 'waiting')
ON CONFLICT (name) DO UPDATE
    SET slot_name = EXCLUDED.slot_name, publication = EXCLUDED.publication,
        source = EXCLUDED.source, tables = EXCLUDED.tables, state = 'waiting',
        updated_at = now()
RETURNING p.position::text AS position, p.checkpoint, p.system_identifier, p.database,
          p.relations

-- name: cdc_pipeline_set_state
-- Record a pipeline's state (and its last error, NULL to clear) outside a chunk.
UPDATE unbroken.cdc_pipelines
SET state = %(state)s, last_error = %(error)s, updated_at = now()
WHERE name = %(name)s

-- name: cdc_pipeline_commit
-- With a chunk's sink writes: the new position and checkpoint, counters and lag; fenced on the checkpoint this run resumed from, so two runs of one pipeline cannot both commit.
UPDATE unbroken.cdc_pipelines
SET position = %(position)s::pg_lsn, checkpoint = %(checkpoint)s,
    system_identifier = %(system_identifier)s, database = %(database)s,
    changes = changes + %(changes)s, state = %(state)s, last_error = NULL,
    lag_bytes = greatest(0, %(wal_end)s::pg_lsn - %(position)s::pg_lsn)::bigint,
    lag_seconds = CASE WHEN %(caught_up)s THEN 0
                       ELSE extract(epoch FROM clock_timestamp() - %(commit_time)s::timestamptz) END,
    retained_wal_bytes = %(retained_wal_bytes)s,
    relations = coalesce(relations, '{}'::jsonb) || coalesce(%(relations)s::jsonb, '{}'::jsonb),
    updated_at = now()
WHERE name = %(name)s AND checkpoint IS NOT DISTINCT FROM %(expected)s
RETURNING name

-- name: cdc_dead_letter_insert
-- Keep a change the sink refused (or that could not be decoded), with why.
INSERT INTO unbroken.cdc_dead_letters (pipeline, lsn, relation, change, error)
VALUES (%(pipeline)s, %(lsn)s::pg_lsn, %(relation)s, %(change)s, %(error)s)

-- name: cdc_schema_change_insert
-- Record that a source table's columns changed (the Relation message differs from the known one).
INSERT INTO unbroken.cdc_schema_changes (pipeline, relation, lsn, before, after)
VALUES (%(pipeline)s, %(relation)s, %(lsn)s::pg_lsn, %(before)s, %(after)s)
