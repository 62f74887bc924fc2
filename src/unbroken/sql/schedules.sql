-- Periodic tasks: schedules, their cursors, and one job per (schedule, tick).

-- name: schedule_register
-- Record a periodic task's schedule when a worker starts (its definition as this worker's app has it); a new one's cursor starts now, an existing one's is kept.
INSERT INTO unbroken.schedules (name, cron, tz, catch_up, queue, checked_until)
VALUES (%(name)s, %(cron)s, %(tz)s, %(catch_up)s, %(queue)s, now())
ON CONFLICT (name) DO UPDATE
SET cron = excluded.cron, tz = excluded.tz, catch_up = excluded.catch_up,
    queue = excluded.queue, registered_at = now()

-- name: schedule_insert_missing
-- Register a schedule again if its row is gone (an operator deleted it); never waits on, nor changes, an existing row.
INSERT INTO unbroken.schedules (name, cron, tz, catch_up, queue, checked_until)
VALUES (%(name)s, %(cron)s, %(tz)s, %(catch_up)s, %(queue)s, now())
ON CONFLICT (name) DO NOTHING

-- name: schedule_lock
-- Take a schedule for one check: its cursor and the server's clock; no row while another worker checks it (it enqueues what is due) or when it is not registered.
SELECT checked_until, now() AS now
FROM unbroken.schedules WHERE name = %(name)s
FOR UPDATE SKIP LOCKED

-- name: periodic_enqueue
-- Enqueue one job per tick that has none: a tick recorded before is skipped by the primary key, so a tick never gets two jobs; returns the ticks enqueued now and their jobs.
-- The tick's row and its job are written by the same statement (the job's id is drawn
-- from the jobs' sequence for the tick's row first), so neither exists without the other.
WITH due AS (
    SELECT * FROM unnest(
        %(ticks)s::timestamptz[], %(queues)s::text[], %(args)s::jsonb[],
        %(priorities)s::smallint[], %(max_attempts)s::int[]
    ) AS d(tick, queue, args, priority, max_attempts)
),
claimed AS (
    INSERT INTO unbroken.periodic_ticks (name, tick, job_id)
    SELECT %(name)s, due.tick, pg_catalog.nextval('unbroken.jobs_id_seq'::regclass)
    FROM due ORDER BY due.tick
    ON CONFLICT (name, tick) DO NOTHING
    RETURNING tick, job_id
),
enqueued AS (
    INSERT INTO unbroken.jobs (id, queue, task, args, priority, max_attempts)
    SELECT c.job_id, d.queue, %(name)s, d.args, d.priority, d.max_attempts
    FROM claimed AS c JOIN due AS d ON d.tick = c.tick
    RETURNING id
)
SELECT c.tick, c.job_id FROM claimed AS c JOIN enqueued AS e ON e.id = c.job_id
ORDER BY c.tick

-- name: schedule_advance
-- Move a schedule's cursor past the ticks one check handled (never back), with its latest enqueued tick and its count of skipped ones.
UPDATE unbroken.schedules
SET checked_until = greatest(checked_until, %(until)s),
    last_tick = coalesce(%(last_tick)s, last_tick),
    last_job_id = coalesce(%(last_job_id)s, last_job_id),
    missed = missed + %(missed)s
WHERE name = %(name)s

-- name: periodic_tick_prune
-- Forget a schedule's tick records older than the retention: its cursor is past them, so they are never due again.
DELETE FROM unbroken.periodic_ticks WHERE name = %(name)s AND tick < %(before)s

-- name: schedule_list
-- Every registered schedule, with the state of its latest tick's job (NULL once that job is pruned).
SELECT s.name, s.cron, s.tz, s.catch_up, s.queue, s.checked_until, s.last_tick,
       s.last_job_id, j.state::text AS last_job_state, s.missed, s.registered_at
FROM unbroken.schedules AS s
LEFT JOIN unbroken.jobs AS j ON j.id = s.last_job_id
ORDER BY s.name
