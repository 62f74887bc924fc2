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

-- The keyed fetch (job_get_available_keyed calls it): as job_get_available claims, and
-- also jobs with a limit key, within their keys' limits. A function for one reason: its
-- plan is cached generic (plan_cache_mode), where the statement sent alone was planned
-- at every fetch, and planning this statement cost as much as running it (0.7 ms of a
-- 50-job claim's 1.5 ms, measured): the keyed fetch then cost +90 % against +20 %.
-- The claim token, RETURNING list and jobs without a key: as in job_get_available.
-- Jobs with a limit key (0010) are walked apart, in jobs_fetch_keyed_idx; jobs without one
-- as job_get_available walks them. The keyed walk passes over jobs whose key was at its
-- limit in this statement's snapshot (a hint, one primary-key probe per job walked), locks
-- the rest, then locks their keys' rows in key order, SKIP LOCKED: a key another worker is
-- claiming or finishing right now is left for the next fetch, never waited for. A locked
-- row is read at its newest version, so `room` (what the key's concurrency and rate windows
-- allow now) counts every claim committed before it; each key's first `room` candidates, in
-- priority order, join the others. `counted` then moves the claimed keys' counters, once
-- per key, in this statement: a key's count changes only in the statements that move its
-- jobs into or out of 'running' (this one, job_finish_many, job_rescue_expired), under the
-- key row's lock.
CREATE FUNCTION unbroken.job_claim_keyed(
    p_queues text[], p_limit integer, p_worker_id text, p_lease float8)
RETURNS TABLE (id bigint, queue text, task text, args text, attempt integer,
               max_attempts integer, priority smallint, checkpoint jsonb, progress jsonb,
               chunk_size integer, rescues integer, run_at timestamptz, workflow_id bigint,
               upstream text, token text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH keyed AS (
        SELECT c.id, c.priority, c.run_at, c.limit_key
        FROM unnest(p_queues::text[]) AS q(name)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at, j.limit_key FROM unbroken.jobs AS j
            WHERE j.state = 'available' AND j.queue = q.name AND j.limit_key IS NOT NULL
              -- A scalar subquery, evaluated per job walked, where NOT EXISTS became an
              -- anti-join whose estimate came from closed_until's statistics: after keys
              -- had been full when analyzed, the plan guessed one job left and sorted a
              -- sequential scan of jobs at every fetch (10 ms against 1 ms).
              AND coalesce((SELECT k.closed_until FROM unbroken.limit_keys AS k
                            WHERE k.key = j.limit_key), '-infinity') <= now()
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT p_limit
            FOR UPDATE OF j SKIP LOCKED
        ) AS c
        WHERE q.name NOT IN (SELECT name FROM unbroken.queues WHERE paused)
    ),
    -- The keys walked, locked and read at their newest version: what each allows now (`room`),
    -- and the rate window now() falls in.
    slots AS (
        SELECT k.key, k.running, k.claims, k.prev_claims, k.window_start, l.concurrency, l.rate,
               l.period, w.now_start,
               least(coalesce(l.concurrency - k.running, p_limit),
                     CASE WHEN l.rate IS NULL THEN p_limit
                          ELSE l.rate - (CASE
                              WHEN k.window_start = w.now_start THEN k.claims
                              WHEN k.window_start = w.now_start + make_interval(secs => l.period)
                                  THEN k.prev_claims
                              WHEN k.window_start > w.now_start THEN l.rate
                              ELSE 0 END)
                     END) AS room
        FROM unbroken.limit_keys AS k
        LEFT JOIN unbroken.flow_limits AS l ON l.name = split_part(k.key, ':', 1)
        -- limit_window's formula written out: a call of the function (not inlined, for its
        -- SET search_path) cost 20 µs per key, a third of the fetch
        CROSS JOIN LATERAL (SELECT to_timestamp(floor(extract(epoch FROM now()) / l.period)
                                                * l.period) AS now_start) AS w
        -- = ANY(ARRAY(...)): primary-key probes for the few keys walked, where an IN list
        -- let the planner read all of limit_keys
        WHERE k.key = ANY(ARRAY(SELECT limit_key FROM keyed))
        ORDER BY k.key
        FOR NO KEY UPDATE OF k SKIP LOCKED
    ),
    picked AS MATERIALIZED (
        SELECT c.id, c.priority, c.run_at, NULL::text AS limit_key
        FROM unnest(p_queues::text[]) AS q(name)
        CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM unbroken.jobs
            WHERE state = 'available' AND queue = q.name AND limit_key IS NULL
            ORDER BY priority DESC, run_at, id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) AS c
        WHERE q.name NOT IN (SELECT name FROM unbroken.queues WHERE paused)
        UNION ALL
        -- each key's first `room` candidates, in priority order
        SELECT r.id, r.priority, r.run_at, r.limit_key FROM (
            SELECT keyed.id, keyed.priority, keyed.run_at, keyed.limit_key, slots.room,
                   row_number() OVER (PARTITION BY keyed.limit_key
                                      ORDER BY keyed.priority DESC, keyed.run_at, keyed.id) AS n
            FROM keyed JOIN slots ON slots.key = keyed.limit_key
        ) AS r
        WHERE r.n <= r.room
        ORDER BY priority DESC, run_at, id
        LIMIT p_limit
    ),
    -- Each claimed key: one more running job per claim, and the claims counted in the rate
    -- window now() falls in. A claim whose statement began just before a window turned can
    -- take the key's lock after a claim of the new window: it counts in prev_claims, the
    -- window before's. `slots` holds these rows' locks, so its values are theirs now.
    counted AS (
        UPDATE unbroken.limit_keys AS k
        SET running = n.running, claims = n.claims, prev_claims = n.prev_claims,
            window_start = n.window_start,
            closed_until = CASE WHEN n.running >= n.concurrency THEN 'infinity'
                                WHEN n.claims >= n.rate AND n.window_start = n.now_start
                                    THEN n.now_start + make_interval(secs => n.period)
                           END
        FROM (
            SELECT s.key, s.concurrency, s.rate, s.period, s.now_start,
                   s.running + c.claims AS running,
                   CASE WHEN s.now_start > s.window_start THEN
                            CASE WHEN s.window_start = s.now_start - make_interval(secs => s.period)
                                 THEN s.claims ELSE 0 END
                        WHEN s.now_start < s.window_start THEN s.prev_claims + c.claims
                        ELSE s.prev_claims END AS prev_claims,
                   CASE WHEN s.now_start IS NULL THEN s.claims
                        WHEN s.window_start IS NULL OR s.now_start > s.window_start THEN c.claims
                        WHEN s.now_start = s.window_start THEN s.claims + c.claims
                        ELSE s.claims END AS claims,
                   CASE WHEN s.now_start IS NULL THEN s.window_start
                        ELSE greatest(s.window_start, s.now_start) END AS window_start
            FROM (SELECT limit_key, count(*)::int AS claims FROM picked
                  WHERE limit_key IS NOT NULL GROUP BY limit_key) AS c
            JOIN slots AS s ON s.key = c.limit_key
        ) AS n
        WHERE k.key = n.key
    ),
    claim AS (SELECT now()::text AS token)
    UPDATE unbroken.jobs AS j
    SET state = 'running',
        attempt = j.attempt + 1,
        worker_id = p_worker_id,
        lease_expires_at = now() + make_interval(secs => p_lease),
        attempted_at = now()
    FROM claim
    -- = ANY(ARRAY(...)): primary-key probes for the jobs picked; the generic plan guesses
    -- `LIMIT p_limit` at a tenth of the table and joined picked to a read of all of jobs
    WHERE j.id = ANY(ARRAY(SELECT picked.id FROM picked))
    RETURNING j.id, j.queue, j.task, j.args::text, j.attempt, j.max_attempts, j.priority,
              j.checkpoint, j.progress, j.chunk_size, j.rescues, j.run_at, j.workflow_id,
              -- A workflow's step gets its upstream jobs' ends and results with its claim, in
              -- the order its dependencies were declared; the CASE spares every other job the
              -- lookup. An upstream job pruned since (a step retried later) keeps its place,
              -- as state `pruned` with no task or result.
              CASE WHEN j.workflow_id IS NOT NULL THEN (
                  SELECT jsonb_agg(jsonb_build_object(
                             'id', d.depends_on, 'task', u.task,
                             'state', coalesce(u.state::text, 'pruned'), 'result', u.result)
                         ORDER BY d.position)::text
                  FROM unbroken.job_deps AS d LEFT JOIN unbroken.jobs AS u ON u.id = d.depends_on
                  WHERE d.job_id = j.id) END AS upstream,
              claim.token;
END;
$$;
