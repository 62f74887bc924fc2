-- Operators list finished jobs newest first by state, queue or task (`unbroken jobs ls`, the
-- dashboard). With only the primary key to walk, a filter that matches few of millions of
-- finished rows read them all. This index holds finished rows only, ordered by id within
-- their state, so a state's page is one short backward scan; it carries the queue and task
-- (INCLUDE) so that a filter by them reads the index alone, never the table.
-- One index, not one per filter: every finish is a non-HOT update, so each index a finished
-- row enters costs every job one more index entry when it finishes (three such indexes made
-- the finish statement ~1.2x as costly in the database: bench/index_cost.py). A queue or
-- task filter on finished jobs is therefore searched like an age or arguments filter: over
-- a bounded number of the newest candidates, saying where it stopped (sql/admin.sql
-- job_search_window).
-- On a big table the migration holds writes to jobs while it builds it (about 1 s per
-- million finished jobs on two cores): to avoid that, build it first with
-- `CREATE INDEX CONCURRENTLY` under the same name and definition; the migration then finds
-- it there.
CREATE INDEX IF NOT EXISTS jobs_finished_state_idx ON unbroken.jobs (state, id)
    INCLUDE (queue, task)
    WHERE state IN ('succeeded', 'dead', 'cancelled');
