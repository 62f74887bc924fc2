-- Change data capture (unbroken.cdc): one row per pipeline, its dead letters and the schema
-- changes seen on its source. A pipeline's row is written in the same transaction as each
-- chunk of changes its sink applies, so `position` (and `checkpoint`, where the stream and a
-- backfill resume) is exactly what the sink holds; the replication slot is advanced to it
-- only after that commit (docs/cdc.md).
CREATE TABLE unbroken.cdc_pipelines (
    name               text PRIMARY KEY,
    slot_name          text NOT NULL,
    publication        text NOT NULL,
    source             text NOT NULL,  -- the source URL, password removed
    system_identifier  text,
    database           text,
    tables             text[] NOT NULL,
    position           pg_lsn,         -- the last source LSN committed with sink data
    checkpoint         jsonb,          -- where the stream and a backfill resume
    relations          jsonb,          -- the source tables' columns last seen, by table
    state              text NOT NULL DEFAULT 'waiting'
        CHECK (state IN ('waiting', 'snapshotting', 'streaming', 'failed', 'stopped')),
    last_error         text,
    lag_bytes          bigint,
    lag_seconds        double precision,
    retained_wal_bytes bigint,
    changes            bigint NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Changes the sink refused (or that could not be decoded): kept, and the stream goes on.
CREATE TABLE unbroken.cdc_dead_letters (
    id         bigserial PRIMARY KEY,
    pipeline   text NOT NULL,
    lsn        pg_lsn,
    relation   text,
    change     jsonb,
    error      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cdc_dead_letters_pipeline_idx ON unbroken.cdc_dead_letters (pipeline, id);

-- A source table whose columns changed (a Relation message unlike the one known before).
CREATE TABLE unbroken.cdc_schema_changes (
    id         bigserial PRIMARY KEY,
    pipeline   text NOT NULL,
    relation   text NOT NULL,
    lsn        pg_lsn,
    before     jsonb,
    after      jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cdc_schema_changes_pipeline_idx ON unbroken.cdc_schema_changes (pipeline, id);
