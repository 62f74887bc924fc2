-- Flow control: per-key concurrency and rate limits, enforced by the fetch.
-- A job may carry a limit key ("customer:42"); the part before the first ':' names the
-- limit that governs it, declared in code (app.limit) and registered by every worker in
-- flow_limits. Each key has one row in limit_keys: how many of its jobs run now and how
-- many were claimed in the current rate window. The fetch locks the key rows of the jobs
-- it may claim, so claims of one key serialise on that row, and reads them at their newest
-- version (a count of running jobs would be read from the statement's snapshot, blind to
-- claims another worker committed since it began, and let a key run over its limit).
-- Only three statements move a job into or out of 'running': the fetch
-- (job_get_available_keyed), job_finish_many and job_rescue_expired. Each moves its keys'
-- counters itself, once per key and under the key row's lock, in the statement that moves
-- the jobs: a row trigger did the same at 20-30 % of a keyed job's throughput. A hand edit
-- of a keyed job's state is caught up by the leader (limit_keys_reconcile).
ALTER TABLE unbroken.jobs ADD COLUMN limit_key text;
ALTER TABLE unbroken.jobs ADD CONSTRAINT jobs_limit_key_length
    CHECK (limit_key IS NULL OR length(limit_key) BETWEEN 1 AND 255);

-- Jobs without a key are fetched from jobs_fetch_idx as before; it no longer holds keyed
-- jobs, so a backlog of keyed jobs at their limit is never walked by that fetch.
DROP INDEX unbroken.jobs_fetch_idx;
CREATE INDEX jobs_fetch_idx ON unbroken.jobs (queue, priority DESC, run_at, id)
    WHERE state = 'available' AND limit_key IS NULL;
CREATE INDEX jobs_fetch_keyed_idx ON unbroken.jobs (queue, priority DESC, run_at, id)
    INCLUDE (limit_key) WHERE state = 'available' AND limit_key IS NOT NULL;

CREATE TABLE unbroken.flow_limits (
    name          text PRIMARY KEY,
    concurrency   integer CHECK (concurrency IS NULL OR concurrency >= 1),
    rate          integer CHECK (rate IS NULL OR rate >= 1),
    period        float8 CHECK (period IS NULL OR period > 0),
    registered_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT flow_limits_rate_has_period CHECK ((rate IS NULL) = (period IS NULL))
);

CREATE TABLE unbroken.limit_keys (
    key          text PRIMARY KEY,
    running      integer NOT NULL DEFAULT 0 CHECK (running >= 0),
    window_start timestamptz,
    claims       integer NOT NULL DEFAULT 0 CHECK (claims >= 0),
    prev_claims  integer NOT NULL DEFAULT 0 CHECK (prev_claims >= 0),
    -- No claim before this: 'infinity' while the key runs its concurrency, the end of the
    -- window while its rate is spent. A hint for the fetch's walk (which passes over the
    -- jobs of a closed key without locking them); the limits are checked under the lock.
    closed_until timestamptz
);

-- The start of the rate window `ts` falls in: windows of `period` seconds from the epoch.
CREATE FUNCTION unbroken.limit_window(ts timestamptz, period float8) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN to_timestamp(floor(extract(epoch FROM ts) / period) * period);

-- Every enqueue of a keyed job makes sure its key has a row for the fetch to lock (the
-- statement trigger that wakes workers already holds the new rows).
CREATE OR REPLACE FUNCTION unbroken.notify_available() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A keyed job's key gets the row the fetch locks (0010).
    INSERT INTO unbroken.limit_keys (key)
    SELECT DISTINCT n.limit_key FROM new_jobs AS n
    WHERE n.limit_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM unbroken.limit_keys AS k WHERE k.key = n.limit_key)
    ORDER BY 1
    ON CONFLICT (key) DO NOTHING;
    PERFORM pg_notify('unbroken.jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM new_jobs WHERE state = 'available') AS q;
    RETURN NULL;
END;
$$;
