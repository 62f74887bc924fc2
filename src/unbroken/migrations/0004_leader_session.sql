-- A leader's term alone lets a dead leader hold maintenance up until the term runs out.
-- The holder now also names the session advisory lock its listener's session holds for as
-- long as it lives (NULL when it has none: listen off, PgBouncer in transaction mode); when
-- that lock is gone from pg_locks, the process is gone, and another worker may take over
-- before the term ends.
ALTER TABLE unbroken.leaders ADD COLUMN lock_key bigint;
