-- What `unbroken pipelines` and the dashboard's /pipelines page read and do (unbroken.ops).
-- The pipelines' own writes are in cdc.sql; these only read, except pipeline_mark_stopped.

-- name: pipeline_list
-- Every CDC pipeline, by name, with its dead letters and schema changes counted.
SELECT p.name, p.state, p.position::text AS position, p.lag_bytes, p.lag_seconds,
       p.retained_wal_bytes, p.changes, p.updated_at, p.last_error,
       (SELECT count(*) FROM unbroken.cdc_dead_letters d WHERE d.pipeline = p.name)
           AS dead_letters,
       (SELECT count(*) FROM unbroken.cdc_schema_changes s WHERE s.pipeline = p.name)
           AS schema_changes
FROM unbroken.cdc_pipelines p
ORDER BY p.name;

-- name: pipeline_get
-- One pipeline's row with where it reads from (the source URL has no password).
SELECT p.name, p.state, p.position::text AS position, p.lag_bytes, p.lag_seconds,
       p.retained_wal_bytes, p.changes, p.updated_at, p.last_error,
       (SELECT count(*) FROM unbroken.cdc_dead_letters d WHERE d.pipeline = p.name)
           AS dead_letters,
       (SELECT count(*) FROM unbroken.cdc_schema_changes s WHERE s.pipeline = p.name)
           AS schema_changes,
       p.slot_name, p.publication, p.source, p.system_identifier, p.database, p.tables
FROM unbroken.cdc_pipelines p
WHERE p.name = %(name)s;

-- name: pipeline_schema_change_list
-- A pipeline's newest schema changes, newest first.
SELECT id, relation, lsn::text AS lsn, before, after, created_at
FROM unbroken.cdc_schema_changes
WHERE pipeline = %(name)s
ORDER BY id DESC
LIMIT %(limit)s;

-- name: pipeline_dead_letter_list
-- A pipeline's newest dead letters (changes its sink refused), newest first.
SELECT id, lsn::text AS lsn, relation, error, created_at
FROM unbroken.cdc_dead_letters
WHERE pipeline = %(name)s
ORDER BY id DESC
LIMIT %(limit)s;

-- name: pipeline_mark_stopped
-- After its slot was dropped: the pipeline is stopped, and says why; its name if it exists.
UPDATE unbroken.cdc_pipelines
SET state = 'stopped', last_error = %(reason)s, lag_bytes = NULL, lag_seconds = NULL,
    retained_wal_bytes = NULL, updated_at = now()
WHERE name = %(name)s
RETURNING name;
