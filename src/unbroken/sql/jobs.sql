-- Jobs: enqueue, fetch, record outcomes, rescue, promote, prune.
-- Every state change names the state (and, for a running job, the attempt and the worker)
-- it expects, so a stale writer changes nothing. Batches pass arrays and run as one
-- statement.

-- name: job_insert
-- Enqueue one job; if a live job holds the same unique key, return that one instead.
WITH inserted AS (
    INSERT INTO unbroken.jobs (queue, task, args, state, priority, run_at, max_attempts, unique_key, limit_key)
    VALUES (
        %(queue)s, %(task)s, %(args)s,
        (CASE WHEN coalesce(%(run_at)s::timestamptz, now()) <= now()
              THEN 'available' ELSE 'scheduled' END)::unbroken.job_state,
        %(priority)s, coalesce(%(run_at)s::timestamptz, now()), %(max_attempts)s, %(unique_key)s,
        %(limit_key)s)
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
        DO NOTHING
    RETURNING id, true AS created
)
SELECT id, created FROM inserted
UNION ALL
SELECT id, false FROM unbroken.jobs
WHERE unique_key = %(unique_key)s::text
  AND state IN ('scheduled', 'available', 'running', 'retryable')
  AND NOT EXISTS (SELECT 1 FROM inserted)
LIMIT 1

-- name: job_insert_many
-- Enqueue a batch in one statement (unique or limit keys: COPY cannot upsert, nor carry a limit key); rows whose unique key is live are skipped (only inserted ids come back).
WITH input AS (
    SELECT * FROM unnest(
        %(queues)s::text[], %(tasks)s::text[], %(args)s::jsonb[], %(priorities)s::smallint[],
        %(run_ats)s::timestamptz[], %(max_attempts)s::int[], %(unique_keys)s::text[],
        %(limit_keys)s::text[]
    ) WITH ORDINALITY AS i(queue, task, args, priority, run_at, max_attempts, unique_key, limit_key, n)
),
inserted AS (
    INSERT INTO unbroken.jobs (queue, task, args, state, priority, run_at, max_attempts, unique_key, limit_key)
    SELECT queue, task, args,
           (CASE WHEN coalesce(run_at, now()) <= now() THEN 'available' ELSE 'scheduled' END)::unbroken.job_state,
           priority, coalesce(run_at, now()), max_attempts, unique_key, limit_key
    FROM input ORDER BY n
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')
        DO NOTHING
    RETURNING id
)
SELECT id FROM inserted ORDER BY id

-- name: job_get_available
-- Claim up to `limit` jobs for this worker: highest priority first, then oldest; rows locked by other workers are skipped.
-- Per queue, a LATERAL subquery walks jobs_fetch_idx in (priority DESC, run_at, id) order
-- and locks with SKIP LOCKED, so concurrent workers never wait on each other and no sort of
-- the backlog is needed (a plain `queue = ANY(...)` would force one). LIMIT is the worker's
-- free slots: nothing is claimed that cannot start at once.
-- `claim` is the claim's token: its now(), stored as attempted_at, which no later claim can
-- repeat. Every write of the attempt is fenced by it as well as by attempt and worker: a
-- database that forgets an acknowledged claim (a failover to a replica that lagged, a
-- server run with fsync or synchronous_commit off) hands the job out again at the same
-- attempt number, perhaps to the same worker while it still runs the first claim.
-- args comes back as text, decoded by the worker one row at a time: a row no decoder can
-- read must go dead alone, not fail the whole batch's fetch.
-- Jobs with a limit key (0010) are not in jobs_fetch_idx: `limit_key IS NULL` is its
-- predicate, so the plan and its cost are those of a table without keys.
-- job_get_available_keyed is this worker's statement instead when limits are declared.
WITH picked AS (
    SELECT c.id
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM unbroken.jobs
        WHERE state = 'available' AND queue = q.name AND limit_key IS NULL
        ORDER BY priority DESC, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE q.name NOT IN (SELECT name FROM unbroken.queues WHERE paused)
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT %(limit)s
),
claim AS (SELECT now()::text AS token)
UPDATE unbroken.jobs AS j
SET state = 'running',
    attempt = j.attempt + 1,
    worker_id = %(worker_id)s,
    lease_expires_at = now() + make_interval(secs => %(lease)s),
    attempted_at = now()
FROM picked, claim
WHERE j.id = picked.id
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
          claim.token

-- name: job_get_available_keyed
-- Claim as job_get_available does, and also jobs with a limit key, within their keys' limits: a worker whose app declares limits (or whose database has any) fetches with this.
-- The statement is unbroken.job_claim_keyed (migration 0010), whose plan is cached.
SELECT * FROM unbroken.job_claim_keyed(%(queues)s, %(limit)s, %(worker_id)s, %(lease)s)

-- name: job_finish_many
-- Record a batch of attempt outcomes; rows whose attempt, claim, state or owner moved on are left untouched (fencing).
-- The worker decides each new state (it knows the attempt and max_attempts it fetched):
-- succeeded, retryable, dead or cancelled; scheduled (snoozed) and available (handed back
-- at shutdown) give the attempt back. The row still has the last word, in the same
-- statement at no extra cost: a job someone asked to cancel is cancelled instead of
-- waiting to run again, and a job with no attempt left is dead, never retryable (a
-- retryable row with attempt = max_attempts would make every fetch of its queue violate
-- jobs_attempt_bounds). Any other requested state fails the statement (the enum, or
-- jobs_running_holds_lease, refuses it). No filter on the unnest() columns in WHERE: one
-- makes the planner expect a few outcomes and loop over all of them for every job (15x
-- slower at 1,000 per batch, measured).
-- `locked` takes the batch's row locks in id order before the update touches a row (the
-- count is one InitPlan, run once before the first row is updated), and so do renewals and
-- cancels: statements that lock rows in one order cannot deadlock one another. The
-- update's own join order is the planner's; left to it, renewals and outcome batches of
-- one worker deadlocked 0-3 times a minute under load, each a ~1 s stall.
-- A workflow's step ending here makes the trigger jobs_workflow_settle update its pending
-- dependents (and theirs, when it cancels them), row after row in the update's order: so
-- `after`, those dependents (through unresolved edges), are locked in the same id-ordered
-- pass as the batch, before any trigger runs. For a batch without workflow jobs it is one
-- index probe of job_deps_upstream_idx per id that finds nothing.
WITH RECURSIVE after(id) AS (
    SELECT d.job_id FROM unbroken.job_deps AS d
    WHERE d.depends_on = ANY(%(ids)s::bigint[]) AND NOT d.resolved
    UNION
    SELECT d.job_id FROM unbroken.job_deps AS d JOIN after ON d.depends_on = after.id
    WHERE NOT d.resolved
),
locked AS MATERIALIZED (
    SELECT id, limit_key FROM unbroken.jobs
    WHERE id = ANY(%(ids)s::bigint[] || ARRAY(SELECT id FROM after))
    ORDER BY id FOR NO KEY UPDATE
),
-- Then the rows of their limit keys (0010), in key order, as every statement that locks
-- them does (the fetch skips a locked one). A batch without keyed jobs locks none.
keys_locked AS MATERIALIZED (
    SELECT key, closed_until FROM unbroken.limit_keys
    WHERE key = ANY(ARRAY(SELECT limit_key FROM locked WHERE limit_key IS NOT NULL))
    ORDER BY key FOR NO KEY UPDATE
),
updated AS (
    UPDATE unbroken.jobs AS j
    SET state = (CASE
            WHEN j.cancel_requested AND o.state IN ('retryable', 'scheduled', 'available')
                THEN 'cancelled'
            WHEN o.state = 'retryable' AND j.attempt >= j.max_attempts THEN 'dead'
            ELSE o.state
        END)::unbroken.job_state,
        attempt = CASE WHEN o.state IN ('scheduled', 'available') AND NOT j.cancel_requested
                       THEN j.attempt - 1 ELSE j.attempt END,
        run_at = CASE WHEN o.state IN ('retryable', 'scheduled')
                      THEN now() + make_interval(secs => coalesce(o.delay, 0)) ELSE j.run_at END,
        -- A run of unknown-task give-backs keeps one record (its `times` counts them), so a
        -- job waiting weeks for a worker that knows its task does not grow without bound.
        errors = CASE WHEN o.error IS NULL THEN j.errors
                      WHEN o.error->>'kind' <> 'unknown_task' THEN j.errors || jsonb_build_array(o.error)
                      WHEN j.errors->-1->>'kind' = 'unknown_task' THEN (j.errors - -1) || jsonb_build_array(o.error)
                      ELSE j.errors || jsonb_build_array(o.error) END,
        result = coalesce(o.result, j.result),
        -- The attempt's last progress report not yet sent with a heartbeat (as there).
        progress = CASE WHEN o.progress IS NULL THEN j.progress
                        ELSE coalesce(j.progress, '{}'::jsonb)
                             || (CASE WHEN j.progress ? 'position' THEN o.progress - 'processed' - 'total'
                                      ELSE o.progress END)
                             || jsonb_build_object('reported_at', now()) END,
        finished_at = CASE WHEN o.state IN ('succeeded', 'dead', 'cancelled') OR j.cancel_requested
                             OR (o.state = 'retryable' AND j.attempt >= j.max_attempts)
                           THEN now() END,
        worker_id = NULL,
        lease_expires_at = NULL
    FROM unnest(
        %(ids)s::bigint[], %(attempts)s::int[], %(states)s::text[], %(delays)s::float8[],
        %(errors)s::jsonb[], %(results)s::jsonb[], %(runtimes)s::int[], %(claims)s::timestamptz[],
        %(progress)s::jsonb[]
    ) WITH ORDINALITY AS o(id, attempt, state, delay, error, result, runtime_ms, claim, progress, n)
    WHERE j.id = o.id AND j.attempt = o.attempt AND j.state = 'running'
      AND j.worker_id = %(worker_id)s AND j.attempted_at = o.claim
      AND (SELECT count(*) FROM locked) >= 0 AND (SELECT count(*) FROM keys_locked) >= 0
    RETURNING j.id, j.state::text AS state, j.queue, j.task, o.runtime_ms, o.n, j.limit_key
),
-- Every outcome moves its job out of 'running': its key's count of running jobs drops
-- here, in the statement that moves it, once per key (see limit_keys in 0010).
-- A key that was full ('infinity') has room again (its rate window, if spent, is checked
-- by the fetch under the lock).
released AS (
    UPDATE unbroken.limit_keys AS k
    SET running = greatest(k.running - r.jobs, 0),
        closed_until = CASE WHEN r.was_full THEN NULL ELSE k.closed_until END
    FROM (SELECT u.limit_key, count(*)::int AS jobs,
                 bool_or(kl.closed_until = 'infinity') AS was_full
          FROM updated AS u JOIN keys_locked AS kl ON kl.key = u.limit_key
          GROUP BY u.limit_key) AS r
    WHERE k.key = r.limit_key
    RETURNING k.key, r.was_full
),
counted AS (
    INSERT INTO unbroken.stats_minutely AS s (minute, queue, task, succeeded, failed, dead, runtime_ms)
    SELECT date_trunc('minute', now()), queue, task,
           count(*) FILTER (WHERE state = 'succeeded'),
           count(*) FILTER (WHERE state IN ('retryable', 'dead')),
           count(*) FILTER (WHERE state = 'dead'),
           coalesce(sum(runtime_ms), 0)
    FROM updated GROUP BY queue, task
    ORDER BY queue, task  -- counter rows, too, are locked in one order by every batch
    ON CONFLICT (minute, queue, task) DO UPDATE
    SET succeeded = s.succeeded + excluded.succeeded,
        failed = s.failed + excluded.failed,
        dead = s.dead + excluded.dead,
        runtime_ms = s.runtime_ms + excluded.runtime_ms
)
-- A job handed back at shutdown can run now: wake the workers of its queue, or it would
-- wait for their next poll (the server sends one notification per queue per transaction).
-- So does the end of a job whose key was full: jobs of that key may wait for the room.
-- `n` is the outcome's place in the batch: two outcomes of one job (two claims) can share one.
SELECT id, state,
       CASE WHEN state = 'available'
                 OR limit_key IN (SELECT key FROM released WHERE was_full)
            THEN pg_notify('unbroken.jobs', queue) END,
       n
FROM updated

-- name: lease_renew_many
-- Extend this worker's leases in one statement and record its heartbeat; returns the leases still held and any cancel requests.
-- Row locks in id order first, as job_finish_many takes them (see there).
-- `progress` carries what tasks reported with current_job().progress() since the last beat
-- (NULL: nothing new), merged into jobs.progress under the same fence as the lease, so a
-- stale claim's report changes nothing. A chunked run (its progress has `position`) owns
-- its counters: there only the message merges, and jobs_progress_within_total still holds.
-- The heartbeat registers the worker again if the leader forgot it while it could not beat.
WITH beat AS (
    INSERT INTO unbroken.workers (id, host, pid, queues, concurrency, running)
    VALUES (%(worker_id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s,
            cardinality(%(ids)s::bigint[]))
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), running = excluded.running
),
locked AS MATERIALIZED (
    SELECT id FROM unbroken.jobs WHERE id = ANY(%(ids)s::bigint[])
    ORDER BY id FOR NO KEY UPDATE
)
UPDATE unbroken.jobs AS j
SET lease_expires_at = now() + make_interval(secs => %(lease)s),
    progress = CASE WHEN h.progress IS NULL THEN j.progress
                    ELSE coalesce(j.progress, '{}'::jsonb)
                         || (CASE WHEN j.progress ? 'position' THEN h.progress - 'processed' - 'total'
                                  ELSE h.progress END)
                         || jsonb_build_object('reported_at', now()) END
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(claims)s::timestamptz[], %(progress)s::jsonb[])
     AS h(id, attempt, claim, progress)
WHERE j.id = h.id AND j.attempt = h.attempt AND j.attempted_at = h.claim AND j.state = 'running'
  AND j.worker_id = %(worker_id)s AND (SELECT count(*) FROM locked) >= 0
RETURNING j.id, j.cancel_requested

-- name: job_rescue_expired
-- Move running jobs whose lease ran out to retryable (dead when attempts are spent, cancelled when a cancel was asked), noting the rescue on the job.
-- No lease can be renewed while the server is down, so after an outage longer than a lease
-- every lease has run out, the live workers' too: for `restart_grace` seconds (one lease)
-- after the server (re)started, nothing is rescued, and live workers renew first.
-- Row locks in id order, with the pending dependents the trigger reaches from them (see
-- job_finish_many), and SKIP LOCKED: the leader never waits on a row. A job whose
-- dependent another transaction holds is left for the next tick, since its trigger would
-- wait for that row while holding the batch's. A row that moved on since the snapshot is
-- checked again under its lock (a job finished or renewed meanwhile is not rescued).
WITH RECURSIVE expired AS MATERIALIZED (
    SELECT id FROM unbroken.jobs
    WHERE state = 'running' AND lease_expires_at < now()
      AND pg_postmaster_start_time() < now() - make_interval(secs => %(restart_grace)s)
    ORDER BY lease_expires_at
    LIMIT %(limit)s
),
after(root, id) AS (
    SELECT d.depends_on, d.job_id FROM unbroken.job_deps AS d
    WHERE d.depends_on IN (SELECT id FROM expired) AND NOT d.resolved
    UNION
    SELECT after.root, d.job_id FROM unbroken.job_deps AS d JOIN after ON d.depends_on = after.id
    WHERE NOT d.resolved
),
locked AS MATERIALIZED (
    SELECT id, worker_id FROM unbroken.jobs
    WHERE id = ANY(ARRAY(SELECT id FROM expired) || ARRAY(SELECT id FROM after))
    ORDER BY id FOR NO KEY UPDATE SKIP LOCKED
),
expired_locked AS (
    SELECT l.id, l.worker_id FROM locked AS l
    WHERE l.id IN (SELECT id FROM expired)
      AND NOT EXISTS (SELECT 1 FROM after AS a
                      WHERE a.root = l.id AND a.id NOT IN (SELECT id FROM locked))
),
-- Their limit keys' rows in key order, as job_finish_many locks them (see there).
keys_locked AS MATERIALIZED (
    SELECT key, closed_until FROM unbroken.limit_keys
    WHERE key = ANY(ARRAY(SELECT limit_key FROM unbroken.jobs
                          WHERE id IN (SELECT id FROM expired_locked) AND limit_key IS NOT NULL))
    ORDER BY key FOR NO KEY UPDATE
),
rescued AS (
UPDATE unbroken.jobs AS j
SET state = (CASE WHEN j.cancel_requested THEN 'cancelled'
                  WHEN j.attempt >= j.max_attempts THEN 'dead'
                  ELSE 'retryable' END)::unbroken.job_state,
    finished_at = CASE WHEN j.cancel_requested OR j.attempt >= j.max_attempts THEN now() END,
    run_at = now(),
    rescues = j.rescues + 1,
    worker_id = NULL,
    lease_expires_at = NULL,
    errors = j.errors || jsonb_build_array(jsonb_build_object(
        'attempt', j.attempt, 'at', now(), 'worker', expired.worker_id,
        'type', 'LeaseExpired', 'kind', 'rescued',
        'message', 'lease expired: worker ' || expired.worker_id || ' stopped renewing it',
        'traceback', NULL))
FROM expired_locked AS expired
WHERE j.id = expired.id AND j.state = 'running' AND j.lease_expires_at < now()
  AND (SELECT count(*) FROM keys_locked) >= 0
RETURNING j.id, j.state::text AS state, expired.worker_id, j.task, j.queue, j.attempt,
          j.max_attempts, j.limit_key
),
-- A rescued job leaves 'running': its key's count drops, as in job_finish_many.
released AS (
    UPDATE unbroken.limit_keys AS k
    SET running = greatest(k.running - r.jobs, 0),
        closed_until = CASE WHEN r.was_full THEN NULL ELSE k.closed_until END
    FROM (SELECT u.limit_key, count(*)::int AS jobs,
                 bool_or(kl.closed_until = 'infinity') AS was_full
          FROM rescued AS u JOIN keys_locked AS kl ON kl.key = u.limit_key
          GROUP BY u.limit_key) AS r
    WHERE k.key = r.limit_key
    RETURNING k.key, r.was_full
)
SELECT id, state, worker_id, task, queue, attempt, max_attempts,
       CASE WHEN limit_key IN (SELECT key FROM released WHERE was_full)
            THEN pg_notify('unbroken.jobs', queue) END
FROM rescued

-- name: job_get_last_error
-- The newest record of a job's errors: a worker that does not know the job's task counts its repeats from it.
SELECT errors->-1 FROM unbroken.jobs WHERE id = %(id)s

-- name: job_promote_due
-- Make scheduled and retryable jobs whose time has come available, and wake workers of their queues.
WITH due AS (
    SELECT id FROM unbroken.jobs
    WHERE state IN ('scheduled', 'retryable') AND run_at <= now()
    ORDER BY run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
promoted AS (
    UPDATE unbroken.jobs AS j SET state = 'available'
    FROM due WHERE j.id = due.id
    RETURNING j.queue
)
SELECT queue, count(*) AS jobs, pg_notify('unbroken.jobs', queue) IS NULL AS notified
FROM promoted GROUP BY queue

-- name: job_exists_due_soon
-- Whether a job of these queues may still run within `horizon` seconds: available (queue not paused), due to run by then, or running here; what keeps a burst worker waiting.
-- A scheduled or retryable job counts when its run_at falls within the horizon (a retry
-- after its backoff, a short delay); one further out does not. A job this worker has
-- claimed counts until its outcome is written, so a fetch in flight is never missed.
-- Jobs running in other workers are theirs to finish or retry. Available jobs are in two
-- partial indexes (with and without a limit key): the OR lets the planner read both (see
-- admin.sql's header).
SELECT EXISTS (
    SELECT 1 FROM unbroken.jobs
    WHERE queue = ANY(%(queues)s::text[])
      AND ((state = 'running' AND worker_id = %(worker_id)s)
           OR (queue NOT IN (SELECT name FROM unbroken.queues WHERE paused)
               AND ((state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL))
                    OR (state IN ('scheduled', 'retryable')
                        AND run_at <= now() + make_interval(secs => %(horizon)s::float8)))))
)

-- name: job_prune_finished
-- Delete one batch of finished jobs (of `states`) that finished over `older_than` seconds ago, oldest first; returns the count deleted per state.
-- A job's chunks, checkpoint, progress and errors are columns of its row and go with it
-- (only job_deps rows name a job, deleted with it). The batch walks jobs_finished_idx oldest first and skips rows
-- another transaction holds (an operator's retry of dead jobs, a second pruner), so pruning
-- never waits on a lock, and workers never wait on it: they lock only unfinished rows. A
-- row that changed since the snapshot is checked again under its lock (a retried job is no
-- longer finished and is left alone). The caller repeats it until a batch comes back short.
-- A workflow's finished jobs stay while any job of it is live (its steps read their upstream
-- results); its dependency rows go with the jobs.
WITH doomed AS MATERIALIZED (
    SELECT j.id FROM unbroken.jobs AS j
    WHERE j.finished_at < now() - make_interval(secs => %(older_than)s)
      AND j.state IN ('succeeded', 'dead', 'cancelled')
      AND j.state = ANY(%(states)s::unbroken.job_state[])
      AND (j.workflow_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM unbroken.jobs AS live
          WHERE live.workflow_id = j.workflow_id
            AND live.state IN ('pending', 'scheduled', 'available', 'running', 'retryable')))
    ORDER BY j.finished_at
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
),
deleted AS (
    DELETE FROM unbroken.jobs AS j USING doomed WHERE j.id = doomed.id
    RETURNING j.id, j.state, j.workflow_id
),
deps AS (
    DELETE FROM unbroken.job_deps
    WHERE job_id IN (SELECT id FROM deleted WHERE workflow_id IS NOT NULL)
)
SELECT state::text AS state, count(*)::bigint AS jobs FROM deleted GROUP BY state

-- name: job_prune_count
-- How many finished jobs (of `states`) finished over `older_than` seconds ago, per state: what a prune would delete now.
SELECT j.state::text AS state, count(*)::bigint AS jobs FROM unbroken.jobs AS j
WHERE j.finished_at < now() - make_interval(secs => %(older_than)s)
  AND j.state IN ('succeeded', 'dead', 'cancelled')
  AND j.state = ANY(%(states)s::unbroken.job_state[])
  AND (j.workflow_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM unbroken.jobs AS live
      WHERE live.workflow_id = j.workflow_id
        AND live.state IN ('pending', 'scheduled', 'available', 'running', 'retryable')))
GROUP BY j.state

-- name: job_cancel_many
-- Cancel waiting jobs at once and ask running ones to stop (they see it at their next heartbeat).
-- Row locks in id order first, the pending dependents the cancels reach with them, as
-- job_finish_many takes them (see there).
WITH RECURSIVE after(id) AS (
    SELECT d.job_id FROM unbroken.job_deps AS d
    WHERE d.depends_on = ANY(%(ids)s::bigint[]) AND NOT d.resolved
    UNION
    SELECT d.job_id FROM unbroken.job_deps AS d JOIN after ON d.depends_on = after.id
    WHERE NOT d.resolved
),
locked AS MATERIALIZED (
    SELECT id FROM unbroken.jobs
    WHERE id = ANY(%(ids)s::bigint[] || ARRAY(SELECT id FROM after))
    ORDER BY id FOR NO KEY UPDATE
)
UPDATE unbroken.jobs
SET state = (CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END)::unbroken.job_state,
    finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END,
    cancel_requested = true
WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('pending', 'scheduled', 'available', 'retryable', 'running')
  AND (SELECT count(*) FROM locked) >= 0
RETURNING id, state::text

-- name: job_retry_many
-- Put dead or cancelled jobs back in line now, granting one more attempt where they had none left (one per unique key), and wake the workers of their queues.
-- A workflow's step goes back to `pending` while any of its upstream jobs is yet to end
-- as it needs (succeeded, or ended at all for a run_anyway dependency), with upstream_left
-- counting them and their edges unresolved, so the trigger releases it when they end (an
-- upstream retried in the same batch counts as not ended). A pruned upstream counts as
-- met. `ups` takes share locks on the upstream rows first, in id order: a finish of one of
-- them in flight is waited for and its end read (a locking read sees the newest row), so
-- an edge is never reset after the trigger resolved it, which would strand the step.
WITH ups AS MATERIALIZED (
    SELECT u.id, u.state FROM unbroken.jobs AS u
    WHERE u.id IN (SELECT d.depends_on FROM unbroken.job_deps AS d
                   WHERE d.job_id = ANY(%(ids)s::bigint[]))
    ORDER BY u.id FOR SHARE
),
edges AS MATERIALIZED (
    SELECT d.job_id, d.depends_on,
           (u.id IS NULL OR u.state = 'succeeded'
            OR (d.run_anyway AND u.state IN ('dead', 'cancelled'))) AS met
    FROM unbroken.job_deps AS d LEFT JOIN ups AS u ON u.id = d.depends_on
    WHERE d.job_id = ANY(%(ids)s::bigint[])
),
waiting AS (
    SELECT job_id, count(*) FILTER (WHERE NOT met)::integer AS n FROM edges GROUP BY job_id
),
retried AS (
UPDATE unbroken.jobs AS j
SET state = (CASE WHEN coalesce((SELECT n FROM waiting WHERE job_id = j.id), 0) > 0
                  THEN 'pending' ELSE 'available' END)::unbroken.job_state,
    upstream_left = coalesce((SELECT n FROM waiting WHERE job_id = j.id), j.upstream_left),
    run_at = now(),
    finished_at = NULL,
    cancel_requested = false,
    max_attempts = greatest(j.max_attempts, j.attempt + 1)
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('dead', 'cancelled')
  AND NOT EXISTS (
      SELECT 1 FROM unbroken.jobs AS live
      WHERE j.unique_key IS NOT NULL AND live.unique_key = j.unique_key AND live.id <> j.id
        AND live.state IN ('scheduled', 'available', 'running', 'retryable'))
  -- Of several finished jobs sharing a unique key, only the newest goes back: two live
  -- ones would violate jobs_unique_key_idx and fail the whole batch.
  AND NOT EXISTS (
      SELECT 1 FROM unbroken.jobs AS newer
      WHERE j.unique_key IS NOT NULL AND newer.unique_key = j.unique_key AND newer.id > j.id
        AND newer.id = ANY(%(ids)s::bigint[]) AND newer.state IN ('dead', 'cancelled'))
  AND (SELECT count(*) FROM ups) >= 0
RETURNING j.id, j.queue, j.state
),
reset AS (
    UPDATE unbroken.job_deps AS d SET resolved = e.met
    FROM edges AS e
    WHERE d.job_id = e.job_id AND d.depends_on = e.depends_on
      AND d.job_id IN (SELECT id FROM retried)
)
SELECT id, state::text AS state,
       CASE WHEN state = 'available' THEN pg_notify('unbroken.jobs', queue) END AS woken
FROM retried

-- name: job_get
-- One job, every column.
SELECT id, queue, task, args, state::text AS state, priority, run_at, attempt, max_attempts,
       unique_key, worker_id, lease_expires_at, rescues, cancel_requested, errors, checkpoint,
       progress, chunk_size, result, created_at, attempted_at, finished_at, limit_key
FROM unbroken.jobs WHERE id = %(id)s

-- name: job_reserve_ids
-- Take `n` job ids from the table's sequence, so a bulk enqueue can COPY rows with known ids.
-- It also runs on the caller's own connection (enqueue_many(conn=...)), with their
-- search_path: pg_catalog by name, and an int argument an integer overload cannot outmatch
-- (psycopg sends a small n as a smallint).
SELECT pg_catalog.nextval('unbroken.jobs_id_seq'::regclass)
FROM pg_catalog.generate_series(1, %(n)s::integer)

-- name: job_copy
-- Bulk enqueue without unique keys: COPY is the fastest way into the table.
COPY unbroken.jobs (id, queue, task, args, state, priority, run_at, max_attempts) FROM STDIN

-- name: job_copy_now
-- Bulk enqueue of jobs that may all run now: state and run_at are the table's defaults.
COPY unbroken.jobs (id, queue, task, args, priority, max_attempts) FROM STDIN
