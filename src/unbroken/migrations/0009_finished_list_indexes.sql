-- Operators list finished jobs newest first by state, queue or task (`unbroken jobs ls`, the
-- dashboard). With only the primary key to walk, a filter that matches few of millions of
-- finished rows read them all. These indexes hold finished rows only: a job enters each
-- once, when it finishes, and never while it waits or runs. Each one orders by id within its
-- state, so one page is one short backward scan per state the filter names.
-- On a big table the migration holds writes to jobs while it builds them (about 10 s per
-- million finished jobs on two cores): to avoid that, build them first with
-- `CREATE INDEX CONCURRENTLY` under the same names and definitions; the migration then
-- finds them there.
CREATE INDEX IF NOT EXISTS jobs_finished_state_idx ON unbroken.jobs (state, id)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
CREATE INDEX IF NOT EXISTS jobs_finished_queue_idx ON unbroken.jobs (queue, state, id)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
CREATE INDEX IF NOT EXISTS jobs_finished_task_idx ON unbroken.jobs (task, state, id)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
