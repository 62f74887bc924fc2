-- Operators: what the CLI, the dashboard, health checks and metrics read and act on.
-- Filters are optional parameters written `(%(x)s::type IS NULL OR ...)`, so one fixed
-- statement serves every combination and nothing is built by concatenation. Writes go
-- through the guarded queries in jobs.sql (job_retry_many, job_cancel_many); the only
-- write here, job_delete_many, refuses to touch jobs that are not finished.
--
-- A finished state's rows are read through jobs_finished_state_idx (state, id) by writing
-- `state BETWEEN 's' AND 's' AND state IN (<final states>) ... ORDER BY state DESC, id DESC`
-- rather than `state = 's' ... ORDER BY id DESC`: the same rows in the same order, but a
-- range leaves `state` in the sort order, which only that index yields without sorting the
-- whole state. With the equality the planner may walk the primary key backward (it cannot
-- know the newest jobs are the waiting and running ones, read and thrown away) or scan the
-- table from its start (as many pages as it takes, pruned ones included); the IN list lets
-- it prove the index's predicate.
--
-- Available jobs are read with `state = 'available' AND (limit_key IS NULL OR limit_key IS
-- NOT NULL)`: they are in two partial indexes since flow control (0010), jobs_fetch_idx
-- without a key and jobs_fetch_keyed_idx with one, and only the OR lets the planner prove
-- each index's predicate for one arm and read both (a BitmapOr); `state = 'available'`
-- alone is in neither predicate, and the planner scanned the whole table.
--
-- Two conditions are shared: `job_filter` (an operator's job filter) and
-- `dead_letter_filter` (which dead letters an action applies to). They are not statements:
-- the queries that use them say `{job_filter}` where the condition goes, and the operator
-- store (unbroken.ops.store) composes them in with psycopg.sql once, at first use.

-- name: job_filter_indexed
-- The part of an operator's filter that the indexes hold: states, queue, task (JobFilter.params); a finished job's queue and task are INCLUDE columns of jobs_finished_state_idx, read without the table.
(%(states)s::unbroken.job_state[] IS NULL OR state = ANY(%(states)s::unbroken.job_state[]))
AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
AND (%(task)s::text IS NULL OR task = %(task)s::text)

-- name: job_filter_searched
-- The part no index holds: age and arguments (the text form matches anywhere in the JSON, which no index can answer). A list applies it to a bounded window of candidates (job_search_window).
(%(older_than)s::float8 IS NULL
 OR created_at < now() - make_interval(secs => %(older_than)s::float8))
AND (%(args_json)s::jsonb IS NULL OR args @> %(args_json)s::jsonb)
AND (%(args_text)s::text IS NULL OR strpos(args::text, %(args_text)s::text) > 0)

-- name: job_filter
-- The condition an operator's filter puts on jobs (JobFilter.params): both parts; composed into job_count_upto, job_count_matching and job_ids_matching. `states` arrives as an array literal of unknown type, so the planner sees its value (a cast from text[] would hide it) and a partial index whose predicate it implies can serve it.
({job_filter_indexed}) AND ({job_filter_searched})

-- name: job_search_window
-- The ids of the newest `window` jobs below the cursor `before_id` in the states a filter names, each with whether the queue and task it names match (`hit`): one branch per state, merged newest first. A finished state's branch walks jobs_finished_state_idx (0009) backward and reads the queue and task from its INCLUDE columns, so it reads that index alone, never the table, and its `window` rows are a bound whatever the filter: a queue or task that few finished jobs have is searched for, not walked to (the index is not keyed by them: an index per filter would cost every finish one more index entry). A waiting or running state's branch reads its state's small partial index and keeps only matching jobs (`id + 0`: never the primary key backward, which would read every newer finished job when the state's jobs are few and old). A branch whose state the filter leaves out is a constant false the planner drops. A list passes `window` = its page size when the filter needs no search (JobFilter.searched), else the search bound (SEARCH_LIMIT): either way it reads at most `window` finished jobs whatever the table holds. Composed into job_search.
SELECT id, hit FROM (
(SELECT id, ({job_filter_indexed}) AS hit FROM unbroken.jobs
 WHERE state BETWEEN 'succeeded' AND 'succeeded' AND state IN ('succeeded', 'dead', 'cancelled')
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'succeeded' = ANY(%(states)s::unbroken.job_state[]))
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY state DESC, id DESC LIMIT %(window)s)
UNION ALL
(SELECT id, ({job_filter_indexed}) AS hit FROM unbroken.jobs
 WHERE state BETWEEN 'dead' AND 'dead' AND state IN ('succeeded', 'dead', 'cancelled')
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'dead' = ANY(%(states)s::unbroken.job_state[]))
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY state DESC, id DESC LIMIT %(window)s)
UNION ALL
(SELECT id, ({job_filter_indexed}) AS hit FROM unbroken.jobs
 WHERE state BETWEEN 'cancelled' AND 'cancelled' AND state IN ('succeeded', 'dead', 'cancelled')
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'cancelled' = ANY(%(states)s::unbroken.job_state[]))
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY state DESC, id DESC LIMIT %(window)s)
UNION ALL
(SELECT id, true FROM unbroken.jobs
 WHERE state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL)
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'available' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter_indexed})
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id + 0 DESC LIMIT %(window)s)
UNION ALL
(SELECT id, true FROM unbroken.jobs
 WHERE state = 'scheduled'
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'scheduled' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter_indexed})
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id + 0 DESC LIMIT %(window)s)
UNION ALL
(SELECT id, true FROM unbroken.jobs
 WHERE state = 'retryable'
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'retryable' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter_indexed})
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id + 0 DESC LIMIT %(window)s)
UNION ALL
(SELECT id, true FROM unbroken.jobs
 WHERE state = 'running'
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'running' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter_indexed})
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id + 0 DESC LIMIT %(window)s)
UNION ALL
(SELECT id, true FROM unbroken.jobs
 WHERE state = 'pending' AND workflow_id IS NOT NULL  -- read through jobs_workflow_idx
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'pending' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter_indexed})
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
 ORDER BY id + 0 DESC LIMIT %(window)s)
) AS candidates
ORDER BY id DESC
LIMIT %(window)s

-- name: job_search
-- One page of a list: the ids of the first `limit` candidates (job_search_window) that the whole filter matches, newest first; how many of the candidates it matches; how many candidates there were (`examined`) and the oldest of their ids (where `--before` continues a search that stopped). One pass over the candidates; the searched part (job_filter_searched) fetches only those whose queue and task matched, once each (a gated lateral probe by id).
SELECT coalesce((array_agg(id ORDER BY id DESC) FILTER (WHERE matched))[1:%(limit)s],
                ARRAY[]::bigint[]) AS ids,
       count(*) FILTER (WHERE matched) AS matching,
       count(*) AS examined,
       min(id) AS oldest_id
FROM (SELECT c.id, c.hit AND coalesce(s.matched, false) AS matched
      FROM ({job_search_window}) AS c
      LEFT JOIN LATERAL (SELECT ({job_filter_searched}) AS matched
                         FROM unbroken.jobs AS j
                         WHERE j.id = c.id AND c.hit) AS s ON true) AS searched

-- name: job_list
-- The jobs of a page (job_search's ids), newest first, with what a list shows of each.
SELECT id, queue, task, state::text AS state, priority, attempt, max_attempts, args,
       run_at, created_at, attempted_at, finished_at, worker_id, lease_expires_at,
       cancel_requested, progress,
       errors -> -1 ->> 'type' AS last_error_type,
       errors -> -1 ->> 'message' AS last_error
FROM unbroken.jobs
WHERE id = ANY(%(ids)s::bigint[])
ORDER BY id DESC

-- name: job_count_upto
-- How many jobs an operator's filter matches, counted no further than `limit` (a list says "10,000+" beyond), for a filter without a searched part. No order: each state's branch counts through whichever index fits its filter best. A finished state's branch reads jobs_finished_state_idx alone; with a queue or task it reads that state's entries until `limit` match (the dead letters of `dlq ls --queue`: at most every dead job's index entry, never the table).
SELECT count(*) AS jobs FROM (
(SELECT 1 FROM unbroken.jobs
 WHERE state BETWEEN 'succeeded' AND 'succeeded' AND state IN ('succeeded', 'dead', 'cancelled')
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'succeeded' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 ORDER BY state DESC, id DESC LIMIT %(limit)s)
UNION ALL
(SELECT 1 FROM unbroken.jobs
 WHERE state BETWEEN 'dead' AND 'dead' AND state IN ('succeeded', 'dead', 'cancelled')
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'dead' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 ORDER BY state DESC, id DESC LIMIT %(limit)s)
UNION ALL
(SELECT 1 FROM unbroken.jobs
 WHERE state BETWEEN 'cancelled' AND 'cancelled' AND state IN ('succeeded', 'dead', 'cancelled')
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'cancelled' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 ORDER BY state DESC, id DESC LIMIT %(limit)s)
UNION ALL
(SELECT 1 FROM unbroken.jobs
 WHERE state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL)
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'available' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 LIMIT %(limit)s)
UNION ALL
(SELECT 1 FROM unbroken.jobs
 WHERE state = 'scheduled'
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'scheduled' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 LIMIT %(limit)s)
UNION ALL
(SELECT 1 FROM unbroken.jobs
 WHERE state = 'retryable'
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'retryable' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 LIMIT %(limit)s)
UNION ALL
(SELECT 1 FROM unbroken.jobs
 WHERE state = 'running'
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'running' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 LIMIT %(limit)s)
UNION ALL
(SELECT 1 FROM unbroken.jobs
 WHERE state = 'pending' AND workflow_id IS NOT NULL  -- read through jobs_workflow_idx
   AND (%(states)s::unbroken.job_state[] IS NULL
        OR 'pending' = ANY(%(states)s::unbroken.job_state[]))
   AND ({job_filter})
 LIMIT %(limit)s)
LIMIT %(limit)s
) AS counted

-- name: job_count_matching
-- How many jobs an operator's filter matches (what a bulk action asks confirmation for).
SELECT count(*) AS jobs
FROM unbroken.jobs
WHERE {job_filter}

-- name: job_ids_matching
-- Ids matching an operator's filter in ascending order after `after_id`: bulk actions walk them in batches.
SELECT id
FROM unbroken.jobs
WHERE ({job_filter})
  AND id > %(after_id)s::bigint
ORDER BY id
LIMIT %(limit)s

-- name: task_names_matching
-- The tasks a name typed by an operator may mean: the task of that exact name, or every task whose name ends in '.' and it (`send_welcome` for `myapp.mail.send_welcome`), as `unbroken enqueue` resolves a name in the app's registry; the store has no app, so it asks the jobs. `right()` rather than LIKE: task names hold `_`, a LIKE wildcard.
-- Asked of the waiting and running jobs (their states' partial indexes) and of the newest
-- `window` finished jobs of each final state (jobs_finished_state_idx alone, task INCLUDEd):
-- no index is keyed by task (one would cost every finish an index entry), and every
-- finished task would mean reading every finished job.
WITH finished AS (
    (SELECT task FROM unbroken.jobs
     WHERE state BETWEEN 'succeeded' AND 'succeeded' AND state IN ('succeeded', 'dead', 'cancelled')
     ORDER BY state DESC, id DESC LIMIT %(window)s)
    UNION ALL
    (SELECT task FROM unbroken.jobs
     WHERE state BETWEEN 'dead' AND 'dead' AND state IN ('succeeded', 'dead', 'cancelled')
     ORDER BY state DESC, id DESC LIMIT %(window)s)
    UNION ALL
    (SELECT task FROM unbroken.jobs
     WHERE state BETWEEN 'cancelled' AND 'cancelled' AND state IN ('succeeded', 'dead', 'cancelled')
     ORDER BY state DESC, id DESC LIMIT %(window)s)
),
tasks AS (
    SELECT task FROM finished
    UNION SELECT task FROM unbroken.jobs WHERE state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL)
    UNION SELECT task FROM unbroken.jobs WHERE state IN ('scheduled', 'retryable')
    UNION SELECT task FROM unbroken.jobs WHERE state = 'running'
)
SELECT task
FROM tasks
WHERE task = %(name)s::text
   OR right(task, length(%(name)s::text) + 1) = '.' || %(name)s::text
ORDER BY task
LIMIT 20

-- name: job_delete_many
-- Delete finished jobs in the given states (never a waiting or running one, nor one of a workflow that still has a live job, as job_prune_finished); returns the ids deleted.
-- A deleted step's dependency rows go with it.
WITH deleted AS (
    DELETE FROM unbroken.jobs AS j
    WHERE j.id = ANY(%(ids)s::bigint[])
      AND j.state = ANY(%(states)s::text[]::unbroken.job_state[])
      AND j.state IN ('succeeded', 'dead', 'cancelled')
      AND (j.workflow_id IS NULL OR NOT EXISTS (
          SELECT 1 FROM unbroken.jobs AS live
          WHERE live.workflow_id = j.workflow_id
            AND live.state IN ('pending', 'scheduled', 'available', 'running', 'retryable')))
    RETURNING j.id, j.workflow_id
),
deps AS (
    DELETE FROM unbroken.job_deps
    WHERE job_id IN (SELECT id FROM deleted WHERE workflow_id IS NOT NULL)
)
SELECT id FROM deleted

-- name: job_finished_sample
-- Finished jobs per queue and state, estimated from a sample of at most `pages` of the table's pages (TABLESAMPLE SYSTEM, the same pages each time while the table keeps its size), with whether the sample was the whole table (then the counts are exact). Counting millions of finished rows at every scrape and page load costs the database seconds; a sample costs the same at any size. Composed into job_count_by_state and queue_list.
SELECT queue, state, round(count(*) * 100.0 / sampled.percent)::bigint AS jobs,
       sampled.percent >= 100 AS exact
FROM (SELECT least(100.0, 100.0 * %(pages)s::int
                          / greatest(pg_relation_size('unbroken.jobs')
                                     / current_setting('block_size')::int, 1)) AS percent)
     AS sampled
CROSS JOIN LATERAL (
    SELECT queue, state::text AS state
    FROM unbroken.jobs TABLESAMPLE SYSTEM (sampled.percent) REPEATABLE (0)
    WHERE state IN ('succeeded', 'dead', 'cancelled')) AS finished
GROUP BY queue, state, sampled.percent

-- name: job_count_by_state
-- Jobs per queue and state (read at metrics scrape time): exact for waiting and running jobs, each branch with its partial index's own predicate so it reads that index and never the table; finished jobs estimated from a sample (job_finished_sample) unless the table is small enough to count whole.
SELECT queue, state, sum(jobs)::bigint AS jobs, bool_and(exact) AS exact FROM (
    SELECT queue, 'available' AS state, count(*) AS jobs, true AS exact
    FROM unbroken.jobs WHERE state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL) GROUP BY queue
    UNION ALL
    SELECT queue, state::text, count(*), true
    FROM unbroken.jobs WHERE state IN ('scheduled', 'retryable') GROUP BY queue, state
    UNION ALL
    SELECT queue, 'running', count(*), true
    FROM unbroken.jobs WHERE state = 'running' GROUP BY queue
    UNION ALL
    SELECT queue, state, jobs, exact FROM ({job_finished_sample}) AS finished
) AS by_index
GROUP BY queue, state
ORDER BY queue, state

-- name: queue_list
-- Every queue with its jobs by state (dead ones estimated as in job_count_by_state), the age of its oldest waiting job, whether it is paused, and its waiting jobs per priority (highest first: higher priority runs first).
WITH counts AS (
    SELECT queue,
           sum(jobs) FILTER (WHERE state = 'available') AS available,
           sum(jobs) FILTER (WHERE state = 'scheduled') AS scheduled,
           sum(jobs) FILTER (WHERE state = 'retryable') AS retryable,
           sum(jobs) FILTER (WHERE state = 'running') AS running,
           sum(jobs) FILTER (WHERE state = 'dead') AS dead,
           bool_and(exact) FILTER (WHERE state = 'dead') AS dead_exact,
           extract(epoch FROM now() - min(oldest) FILTER (WHERE state = 'available'))::float8
               AS oldest_wait_s
    FROM (
        SELECT queue, 'available' AS state, count(*) AS jobs, true AS exact,
               min(run_at) AS oldest
        FROM unbroken.jobs WHERE state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL) GROUP BY queue
        UNION ALL
        SELECT queue, state::text, count(*), true, NULL
        FROM unbroken.jobs WHERE state IN ('scheduled', 'retryable') GROUP BY queue, state
        UNION ALL
        SELECT queue, 'running', count(*), true, NULL
        FROM unbroken.jobs WHERE state = 'running' GROUP BY queue
        UNION ALL
        SELECT queue, state, jobs, exact, NULL FROM ({job_finished_sample}) AS finished
    ) AS by_index
    GROUP BY queue
),
by_priority AS (
    SELECT queue, priority, count(*) AS available,
           greatest(extract(epoch FROM now() - min(run_at))::float8, 0) AS oldest_wait_s
    FROM unbroken.jobs
    WHERE state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL)
    GROUP BY queue, priority
),
backlogs AS (
    SELECT queue,
           jsonb_agg(jsonb_build_object('priority', priority, 'available', available,
                                        'oldest_wait_s', oldest_wait_s)
                     ORDER BY priority DESC) AS priorities
    FROM by_priority
    GROUP BY queue
)
SELECT coalesce(c.queue, q.name) AS name,
       coalesce(q.paused, false) AS paused,
       coalesce(c.available, 0)::bigint AS available,
       coalesce(c.scheduled, 0)::bigint AS scheduled,
       coalesce(c.retryable, 0)::bigint AS retryable,
       coalesce(c.running, 0)::bigint AS running,
       coalesce(c.dead, 0)::bigint AS dead,
       coalesce(c.dead_exact, true) AS dead_exact,
       CASE WHEN c.oldest_wait_s IS NOT NULL THEN greatest(c.oldest_wait_s, 0) END
           AS oldest_wait_s,
       coalesce(b.priorities, '[]'::jsonb) AS priorities
FROM counts AS c
FULL JOIN unbroken.queues AS q ON q.name = c.queue
LEFT JOIN backlogs AS b ON b.queue = coalesce(c.queue, q.name)
ORDER BY 1

-- name: queue_in_use
-- Whether anything uses a queue: a job in it (any state), a worker that fetches from it, or a row in unbroken.queues (it was paused or resumed before); what `unbroken queues pause` checks to warn about a mistyped name.
SELECT EXISTS (SELECT FROM unbroken.jobs WHERE queue = %(name)s::text)
    OR EXISTS (SELECT FROM unbroken.workers WHERE %(name)s::text = ANY(queues))
    OR EXISTS (SELECT FROM unbroken.queues WHERE name = %(name)s::text) AS in_use

-- name: dead_letter_groups
-- The newest `sample` dead jobs grouped by queue, task, error type and message, largest group first; `key` names a group for retry and purge. Their ids come first, from jobs_finished_state_idx read backward without the table (a queue or task is read from its INCLUDE columns: with one, at most every dead job's index entry is read until `sample` match): asked for whole rows at once, the planner walks the primary key backward instead and reads every newer job that is not dead.
WITH newest AS (
    SELECT id
    FROM unbroken.jobs
    WHERE state BETWEEN 'dead' AND 'dead' AND state IN ('succeeded', 'dead', 'cancelled')
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(task)s::text IS NULL OR task = %(task)s::text)
    ORDER BY state DESC, id DESC
    LIMIT %(sample)s
),
dead AS (
    SELECT id, queue, task, finished_at,
           coalesce(errors -> -1 ->> 'type', '(no error recorded)') AS error_type,
           left(coalesce(errors -> -1 ->> 'message', ''), 500) AS message
    FROM unbroken.jobs
    WHERE id IN (SELECT id FROM newest)
)
SELECT left(md5(queue || chr(31) || task || chr(31) || error_type || chr(31) || message), 12) AS key,
       queue, task, error_type, message,
       count(*) AS jobs,
       min(finished_at) AS first_at,
       max(finished_at) AS last_at,
       (array_agg(id ORDER BY id DESC))[1:5] AS sample_ids
FROM dead
GROUP BY queue, task, error_type, message
ORDER BY count(*) DESC, max(finished_at) DESC
LIMIT %(limit)s

-- name: dead_letter_filter
-- The dead jobs a dead-letter action applies to: one group by `key` (all when NULL), a queue, a task, dead longer than `older_than` seconds; composed into dead_letter_ids and dead_letter_count.
state = 'dead'::unbroken.job_state
AND (%(key)s::text IS NULL
     OR left(md5(queue || chr(31) || task
                 || chr(31) || coalesce(errors -> -1 ->> 'type', '(no error recorded)')
                 || chr(31) || left(coalesce(errors -> -1 ->> 'message', ''), 500)), 12)
        = %(key)s::text)
AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
AND (%(task)s::text IS NULL OR task = %(task)s::text)
AND (%(older_than)s::float8 IS NULL
     OR finished_at < now() - make_interval(secs => %(older_than)s::float8))

-- name: dead_letter_ids
-- Ids of dead jobs in one group (or all groups when key is NULL) after `after_id`, ascending, for batched retry or purge.
SELECT id
FROM unbroken.jobs
WHERE ({dead_letter_filter})
  AND id > %(after_id)s::bigint
ORDER BY id
LIMIT %(limit)s

-- name: dead_letter_count
-- How many dead jobs one group (or all, when key is NULL) holds: what retry and purge ask confirmation for.
SELECT count(*) AS jobs
FROM unbroken.jobs
WHERE {dead_letter_filter}

-- name: stats_by_task
-- Outcomes per queue and task since the minute `window` seconds ago (the per-minute counters), with the run times (count, mean, min, max, p50, p95, p99, seconds) of the jobs that succeeded since then.
-- Every duration statistic is computed over the same rows: the succeeded jobs still in the
-- table (retention), each timed from the start of its last attempt (attempted_at) to its
-- end, so the mean lies between min and max and beside the percentiles. Both parts share
-- one window start, the minute the counters can resolve.
WITH since AS (
    SELECT date_trunc('minute', now() - make_interval(secs => %(window)s::float8)) AS at
),
counted AS (
    SELECT queue, task,
           sum(succeeded)::bigint AS succeeded,
           sum(failed)::bigint AS failed,
           sum(dead)::bigint AS dead
    FROM unbroken.stats_minutely, since
    WHERE minute >= since.at
    GROUP BY queue, task
),
timed AS (
    SELECT queue, task, extract(epoch FROM finished_at - attempted_at)::float8 AS seconds
    FROM unbroken.jobs, since
    WHERE state = 'succeeded'
      AND finished_at >= since.at
      AND attempted_at IS NOT NULL
),
durations AS (
    SELECT queue, task, count(*) AS timed, avg(seconds) AS avg_s,
           min(seconds) AS min_s, max(seconds) AS max_s,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY seconds)
               AS percentiles
    FROM timed
    GROUP BY queue, task
)
SELECT c.queue, c.task, c.succeeded, c.failed, c.dead,
       coalesce(d.timed, 0) AS timed, d.avg_s, d.min_s, d.max_s, d.percentiles
FROM counted AS c
LEFT JOIN durations AS d ON d.queue = c.queue AND d.task = c.task
ORDER BY c.queue, c.task

-- name: stats_series
-- Outcomes per time bucket of `bucket` seconds over the last `window` seconds, gaps filled with zeros, oldest first (charts).
WITH buckets AS (
    SELECT to_timestamp(floor(extract(epoch FROM t) / %(bucket)s::int) * %(bucket)s::int) AS at
    FROM generate_series(now() - make_interval(secs => %(window)s::float8) + make_interval(secs => %(bucket)s::int),
                         now(), make_interval(secs => %(bucket)s::int)) AS t
),
counted AS (
    SELECT to_timestamp(floor(extract(epoch FROM minute) / %(bucket)s::int) * %(bucket)s::int) AS at,
           sum(succeeded)::bigint AS succeeded, sum(failed)::bigint AS failed,
           sum(dead)::bigint AS dead, sum(runtime_ms)::bigint AS runtime_ms
    FROM unbroken.stats_minutely
    WHERE minute >= now() - make_interval(secs => %(window)s::float8 + %(bucket)s::int)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
    GROUP BY 1
)
SELECT b.at,
       coalesce(c.succeeded, 0) AS succeeded,
       coalesce(c.failed, 0) AS failed,
       coalesce(c.dead, 0) AS dead,
       coalesce(c.runtime_ms, 0) AS runtime_ms
FROM (SELECT DISTINCT at FROM buckets) AS b
LEFT JOIN counted AS c ON c.at = b.at
ORDER BY b.at

-- name: job_list_stuck
-- Running jobs whose lease ran out (their worker stopped renewing it) or that have run longer than `longer_than` seconds (what operators otherwise dig out with hand-written queries).
SELECT j.id, j.queue, j.task, j.attempt, j.max_attempts, j.worker_id, j.attempted_at,
       j.lease_expires_at, j.progress,
       extract(epoch FROM now() - j.attempted_at)::float8 AS running_s,
       extract(epoch FROM now() - j.lease_expires_at)::float8 AS lease_overdue_s,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age_s,
       CASE WHEN j.lease_expires_at < now() THEN 'lease_expired' ELSE 'long_running' END
           AS reason
FROM unbroken.jobs AS j
LEFT JOIN unbroken.workers AS w ON w.id = j.worker_id
WHERE j.state = 'running'
  AND (j.lease_expires_at < now()
       OR j.attempted_at < now() - make_interval(secs => %(longer_than)s::float8))
ORDER BY j.attempted_at
LIMIT %(limit)s

-- name: job_list_progress
-- Running jobs that report progress or have run longer than `longer_than` seconds, longest-running first (the long-jobs view), with the database's clock to age their checkpoints by.
SELECT id, queue, task, attempt, max_attempts, worker_id, attempted_at, lease_expires_at,
       progress, checkpoint IS NOT NULL AS has_checkpoint, rescues,
       extract(epoch FROM now() - attempted_at)::float8 AS running_s,
       now() AS now
FROM unbroken.jobs
WHERE state = 'running'
  AND (progress IS NOT NULL
       OR attempted_at < now() - make_interval(secs => %(longer_than)s::float8))
ORDER BY attempted_at
LIMIT %(limit)s

-- name: worker_list
-- Registered workers with their last heartbeat's age, whether it is older than `silent_after` seconds, and the jobs they run now.
SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.running, w.started_at, w.heartbeat_at,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age_s,
       coalesce(array_agg(j.id ORDER BY j.id) FILTER (WHERE j.id IS NOT NULL), '{}')
           AS job_ids,
       extract(epoch FROM now() - w.heartbeat_at)::float8 > %(silent_after)s::float8 AS silent
FROM unbroken.workers AS w
LEFT JOIN unbroken.jobs AS j ON j.worker_id = w.id AND j.state = 'running'
GROUP BY w.id
ORDER BY w.started_at, w.id

-- name: connection_list
-- This database's client sessions by application name and state (every unbroken pool names itself `unbroken:<role>`).
SELECT coalesce(nullif(application_name, ''), '(unnamed)') AS application_name,
       coalesce(state, 'unknown') AS state,
       count(*) AS connections,
       current_setting('max_connections')::int AS max_connections
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
GROUP BY 1, 2
ORDER BY 1, 2

-- name: health_inputs
-- Everything the health score reads, in one round trip.
SELECT
    (SELECT greatest(extract(epoch FROM now() - min(j.run_at))::float8, 0)
     FROM unbroken.jobs AS j
     WHERE j.state = 'available' AND (j.limit_key IS NULL OR j.limit_key IS NOT NULL)
       AND j.queue <> ALL (ARRAY(SELECT name FROM unbroken.queues WHERE paused)))
        AS oldest_wait_s,
    (SELECT count(*) FROM unbroken.jobs WHERE state = 'available' AND (limit_key IS NULL OR limit_key IS NOT NULL)) AS available,
    (SELECT coalesce(sum(succeeded), 0)::bigint FROM unbroken.stats_minutely
     WHERE minute >= date_trunc('minute', now() - make_interval(secs => %(window)s::float8)))
        AS succeeded,
    (SELECT coalesce(sum(failed), 0)::bigint FROM unbroken.stats_minutely
     WHERE minute >= date_trunc('minute', now() - make_interval(secs => %(window)s::float8)))
        AS failed,
    (SELECT count(*) FROM unbroken.jobs
     WHERE state = 'running'
       AND lease_expires_at < now() - make_interval(secs => %(lease_grace)s::float8))
        AS expired_leases,
    (SELECT count(*) FROM unbroken.jobs
     WHERE state = 'running'
       AND attempted_at < now() - make_interval(secs => %(long_running)s::float8))
        AS long_running,
    (SELECT count(*) FROM unbroken.jobs
     WHERE state = 'dead' AND finished_at >= now() - make_interval(secs => %(window)s::float8))
        AS dead_recent,
    (SELECT count(*) FROM unbroken.workers) AS workers,
    (SELECT count(*) FROM unbroken.workers
     WHERE heartbeat_at < now() - make_interval(secs => %(silent_after)s::float8))
        AS silent_workers

-- name: session_search_path
-- The session's search_path, read before the operator store sets its own on a connection that may be the caller's.
SELECT pg_catalog.current_setting('search_path') AS search_path

-- name: session_search_path_set
-- Set the search_path for this transaction only (the operator store: ours on a caller's connection, then the caller's back).
SELECT pg_catalog.set_config('search_path', %(path)s::pg_catalog.text, true)

-- name: session_role
-- The role the session runs as: named in a "permission denied" error, with what to grant it.
SELECT current_user::pg_catalog.text AS role

-- name: schema_version
-- The newest migration applied (errors when the schema is missing: then nothing else works either).
SELECT max(version) AS version FROM unbroken.migrations
