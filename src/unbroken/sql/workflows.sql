-- Workflows: jobs that wait for other jobs (migrations/0007_workflows.sql). Releasing and
-- cancelling dependents is the trigger jobs_workflow_settle's work, in the statement that
-- ends an upstream job; these statements write a workflow, read it and cancel it.

-- name: workflow_insert
-- Write a whole workflow in one statement: its row, one job per step (pending when it has upstream steps) and one row per dependency; returns the workflow's id and the jobs' ids in step order.
-- Ids come from the jobs' sequence in step order, so a step's id is above its upstream
-- steps' ids (a step may only follow steps added before it): statements that lock rows in
-- id order lock upstream jobs before their dependents.
WITH wf AS (
    INSERT INTO unbroken.workflows (name) VALUES (%(name)s) RETURNING id
),
steps AS MATERIALIZED (
    SELECT s.*, pg_catalog.nextval('unbroken.jobs_id_seq'::regclass) AS id
    FROM unnest(
        %(queues)s::text[], %(tasks)s::text[], %(args)s::jsonb[], %(priorities)s::smallint[],
        %(run_ats)s::timestamptz[], %(max_attempts)s::int[], %(upstream)s::int[],
        %(limit_keys)s::text[]
    ) WITH ORDINALITY AS s(queue, task, args, priority, run_at, max_attempts, upstream, limit_key, n)
    ORDER BY s.n
),
jobs AS (
    INSERT INTO unbroken.jobs (id, queue, task, args, state, priority, run_at, max_attempts,
                               workflow_id, upstream_left, limit_key)
    SELECT s.id, s.queue, s.task, s.args,
           (CASE WHEN s.upstream > 0 THEN 'pending'
                 WHEN coalesce(s.run_at, now()) <= now() THEN 'available'
                 ELSE 'scheduled' END)::unbroken.job_state,
           s.priority, coalesce(s.run_at, now()), s.max_attempts, wf.id,
           CASE WHEN s.upstream > 0 THEN s.upstream END, s.limit_key
    FROM steps AS s, wf ORDER BY s.n
),
deps AS (
    INSERT INTO unbroken.job_deps (job_id, depends_on, position, run_anyway)
    SELECT down.id, up.id, e.position, e.run_anyway
    FROM unnest(%(dep_steps)s::int[], %(dep_ons)s::int[], %(dep_positions)s::int[],
                %(dep_anyway)s::boolean[]) AS e(step, on_step, position, run_anyway)
    JOIN steps AS down ON down.n = e.step
    JOIN steps AS up ON up.n = e.on_step
)
SELECT wf.id, array_agg(s.id ORDER BY s.n) FROM wf, steps AS s GROUP BY wf.id

-- name: workflow_cancel
-- Cancel every live job of a workflow: waiting ones at once, running ones through their lease (job_cancel_many's rule); returns each job changed and its state.
-- Row locks in id order first, as job_finish_many takes them.
WITH locked AS MATERIALIZED (
    SELECT id FROM unbroken.jobs
    WHERE workflow_id = %(id)s
      AND state IN ('pending', 'scheduled', 'available', 'retryable', 'running')
    ORDER BY id FOR NO KEY UPDATE
)
UPDATE unbroken.jobs
SET state = (CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END)::unbroken.job_state,
    finished_at = CASE WHEN state = 'running' THEN NULL ELSE now() END,
    cancel_requested = true
WHERE id IN (SELECT id FROM locked)
  AND state IN ('pending', 'scheduled', 'available', 'retryable', 'running')
RETURNING id, state::text

-- name: workflow_list
-- The newest workflows (before `before_id` when given), each with its jobs counted by state.
SELECT w.id, w.name, w.created_at,
       count(j.id) AS steps,
       count(j.id) FILTER (WHERE j.state = 'succeeded') AS succeeded,
       count(j.id) FILTER (WHERE j.state IN ('dead', 'cancelled')) AS failed,
       count(j.id) FILTER (WHERE j.state IN ('pending', 'scheduled', 'available', 'running', 'retryable')) AS live,
       max(j.finished_at) FILTER (WHERE j.finished_at IS NOT NULL) AS last_finished_at
FROM unbroken.workflows AS w
LEFT JOIN unbroken.jobs AS j ON j.workflow_id = w.id
WHERE %(before_id)s::bigint IS NULL OR w.id < %(before_id)s::bigint
GROUP BY w.id
ORDER BY w.id DESC
LIMIT %(limit)s

-- name: workflow_get
-- One workflow's name (no row: no such workflow).
SELECT name FROM unbroken.workflows WHERE id = %(id)s

-- name: workflow_steps
-- A workflow's jobs in step order, each with the ids of the jobs it waits for (in declared order) and its result.
SELECT j.id, j.task, j.queue, j.state::text AS state, j.attempt, j.max_attempts,
       j.upstream_left, j.cancel_requested, j.result, j.finished_at,
       coalesce((SELECT array_agg(d.depends_on ORDER BY d.position) FROM unbroken.job_deps AS d
                 WHERE d.job_id = j.id), '{}') AS after,
       coalesce((SELECT bool_or(d.run_anyway) FROM unbroken.job_deps AS d
                 WHERE d.job_id = j.id), false) AS run_anyway
FROM unbroken.jobs AS j
WHERE j.workflow_id = %(id)s
ORDER BY j.id

-- name: workflow_prune_empty
-- Forget a small batch of workflows whose jobs were all deleted, by a prune or by hand (never one just written: its jobs are in the same transaction); returns their ids.
DELETE FROM unbroken.workflows
WHERE id IN (
    SELECT w.id FROM unbroken.workflows AS w
    WHERE NOT EXISTS (SELECT 1 FROM unbroken.jobs AS j WHERE j.workflow_id = w.id)
    LIMIT %(limit)s
)
RETURNING id
