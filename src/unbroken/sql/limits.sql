-- Flow control (0010): the limits workers enforce at fetch, and what each key uses of them.

-- name: flow_limit_register
-- Record (or update) a limit as this worker's app declares it, when the worker starts; the last worker started wins.
-- A changed limit reopens its keys closed under the old one (limit_keys.closed_until is the
-- fetch's hint, set again by the next claim).
WITH before AS (
    SELECT concurrency, rate, period FROM unbroken.flow_limits WHERE name = %(name)s
),
registered AS (
    INSERT INTO unbroken.flow_limits (name, concurrency, rate, period)
    VALUES (%(name)s, %(concurrency)s, %(rate)s, %(period)s)
    ON CONFLICT (name) DO UPDATE
    SET concurrency = excluded.concurrency, rate = excluded.rate, period = excluded.period,
        registered_at = now()
)
UPDATE unbroken.limit_keys SET closed_until = NULL
WHERE closed_until IS NOT NULL AND split_part(key, ':', 1) = %(name)s
  AND EXISTS (SELECT 1 FROM before
              WHERE (concurrency, rate, period)
                    IS DISTINCT FROM (%(concurrency)s::int, %(rate)s::int, %(period)s::float8))

-- name: flow_limit_any
-- Whether any limit is registered: a worker then fetches with job_get_available_keyed, whatever its app declares.
SELECT EXISTS (SELECT 1 FROM unbroken.flow_limits)

-- name: limit_key_get
-- One key's counters beside its limit: running jobs and claims in the current rate window.
SELECT k.key, k.running,
       CASE WHEN k.window_start = unbroken.limit_window(now(), l.period) THEN k.claims ELSE 0 END
           AS claims,
       l.concurrency, l.rate, l.period
FROM unbroken.limit_keys AS k
LEFT JOIN unbroken.flow_limits AS l ON l.name = split_part(k.key, ':', 1)
WHERE k.key = %(key)s

-- name: limit_keys_drifted
-- Keys whose count of running jobs differs from their running jobs in this snapshot (a hand edit of a keyed job's state, or a claim in flight); limit_keys_recount checks each under its lock.
-- Running jobs are few (the workers' slots), so both sides are small: the keys said to
-- run something, and the running keyed jobs.
WITH actual AS (
    SELECT limit_key AS key, count(*)::int AS running FROM unbroken.jobs
    WHERE state = 'running' AND limit_key IS NOT NULL
    GROUP BY limit_key
)
SELECT k.key FROM unbroken.limit_keys AS k
LEFT JOIN actual AS a ON a.key = k.key
WHERE k.running <> coalesce(a.running, 0) AND (k.running > 0 OR a.running > 0)
ORDER BY k.key

-- name: limit_keys_lock
-- Lock these keys' rows in key order (as every statement that locks them does), the first statement of a recount's transaction.
SELECT key FROM unbroken.limit_keys WHERE key = ANY(%(keys)s::text[]) ORDER BY key FOR NO KEY UPDATE

-- name: limit_keys_recount
-- Set these (locked) keys' counts to their running jobs; returns the keys corrected and by how much.
-- A statement after limit_keys_lock in the same transaction: its snapshot is taken with
-- the rows locked, so it sees every claim and finish of these keys (the fetch skips a
-- locked key; a finish waits for it), and nothing of theirs can be in flight.
WITH actual AS (
    SELECT k.key, k.running AS was,
           (SELECT count(*)::int FROM unbroken.jobs AS j
            WHERE j.limit_key = k.key AND j.state = 'running') AS running
    FROM unbroken.limit_keys AS k WHERE k.key = ANY(%(keys)s::text[])
)
UPDATE unbroken.limit_keys AS k SET running = a.running, closed_until = NULL  -- the next claim sets it
FROM actual AS a
WHERE k.key = a.key AND k.running <> a.running
RETURNING k.key, a.was, k.running
