-- bench/scale.py: millions of finished jobs (and a working set of active ones) in one
-- statement each. %(rows)s finished jobs over the last 30 days, ids in creation order:
-- 90 % succeeded, 8 % dead, 2 % cancelled; 8 queues (one takes half), 24 tasks; args with a
-- user id and an order number; dead jobs carry one of 30 errors. Then a few thousand
-- waiting, scheduled, retryable and running jobs, newest of all.
INSERT INTO unbroken.jobs (queue, task, args, state, priority, run_at, attempt, max_attempts,
                           errors, created_at, attempted_at, finished_at)
SELECT q.queue,
       'bench.tasks.task_' || (i %% 24),
       jsonb_build_object('user', i %% 100000, 'order', i, 'note', 'order number ' || i),
       s.state::unbroken.job_state,
       0,
       c.created_at,
       CASE WHEN s.state = 'dead' THEN 5 ELSE 1 END,
       5,
       CASE WHEN s.state = 'dead' THEN jsonb_build_array(jsonb_build_object(
           'attempt', 5, 'at', c.created_at, 'worker', 'bench:1:w1',
           'type', 'bench.Error' || (i %% 30) %% 6,
           'message', 'upstream said no (' || (i %% 30) || ')',
           'traceback', 'Traceback (most recent call last):\n  ...\nbench.Error: upstream said no'))
            ELSE '[]'::jsonb END,
       c.created_at,
       c.created_at + interval '1 second',
       c.created_at + interval '2 seconds'
FROM generate_series(1, %(rows)s::bigint) AS i
CROSS JOIN LATERAL (
    SELECT now() - interval '30 days' * (1 - i::float8 / %(rows)s::bigint) - interval '1 hour'
        AS created_at) AS c
CROSS JOIN LATERAL (
    SELECT CASE WHEN i %% 100 < 90 THEN 'succeeded' WHEN i %% 100 < 98 THEN 'dead'
                ELSE 'cancelled' END AS state) AS s
CROSS JOIN LATERAL (
    SELECT CASE WHEN i %% 16 < 8 THEN 'default' ELSE 'queue_' || (i %% 16 - 7) END AS queue) AS q;

INSERT INTO unbroken.jobs (queue, task, args, state, run_at, attempt, worker_id,
                           lease_expires_at, attempted_at, created_at)
SELECT CASE WHEN i %% 16 < 8 THEN 'default' ELSE 'queue_' || (i %% 16 - 7) END,
       'bench.tasks.task_' || (i %% 24),
       jsonb_build_object('user', i %% 100000, 'order', -i),
       st.state::unbroken.job_state,
       CASE WHEN st.state IN ('scheduled', 'retryable') THEN now() + interval '1 hour'
            ELSE now() - interval '1 minute' END,
       CASE WHEN st.state IN ('running', 'retryable') THEN 1 ELSE 0 END,
       CASE WHEN st.state = 'running' THEN 'bench:1:w1' END,
       CASE WHEN st.state = 'running' THEN now() + interval '1 minute' END,
       CASE WHEN st.state IN ('running', 'retryable') THEN now() - interval '30 seconds' END,
       now() - interval '2 minutes'
FROM generate_series(1, 3000) AS i
CROSS JOIN LATERAL (
    SELECT CASE WHEN i %% 10 < 6 THEN 'available' WHEN i %% 10 < 8 THEN 'scheduled'
                WHEN i %% 10 < 9 THEN 'retryable' ELSE 'running' END AS state) AS st;

-- The per-minute counters of the last 7 days, as workers write them.
INSERT INTO unbroken.stats_minutely (minute, queue, task, succeeded, failed, dead, runtime_ms)
SELECT m, q, 'bench.tasks.task_' || t, 20, 2, 1, 20000
FROM generate_series(date_trunc('minute', now() - interval '7 days'),
                     date_trunc('minute', now()), interval '1 minute') AS m
CROSS JOIN (VALUES ('default'), ('queue_1'), ('queue_2')) AS qs(q)
CROSS JOIN generate_series(0, 3) AS t
ON CONFLICT DO NOTHING;
