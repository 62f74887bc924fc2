-- Workers, queues and leader election: what lets many worker processes share one database.

-- name: worker_register
-- Record a starting worker (or refresh it after a reconnect).
INSERT INTO unbroken.workers (id, host, pid, queues, concurrency)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s)
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = now(), queues = excluded.queues, concurrency = excluded.concurrency

-- name: worker_deregister
-- Forget a worker that stopped cleanly.
DELETE FROM unbroken.workers WHERE id = %(id)s

-- name: worker_prune_silent
-- Forget workers whose heartbeat stopped `silence` seconds ago (their jobs are rescued through leases).
-- The leader runs it with every rescue, `silence` a lease: a killed worker's registration
-- goes within a lease and a rescue interval, before health counts it silent. A live worker
-- forgotten while it could not beat (a long outage, SIGSTOP) comes back at its next
-- heartbeat, which inserts the row again (lease_renew_many).
DELETE FROM unbroken.workers WHERE heartbeat_at < now() - make_interval(secs => %(silence)s)

-- name: leader_attempt_elect
-- Become or stay leader of `name`: take the term if nobody holds it, it ran out, or its holder's session is gone; returns the holder when it is us.
-- `lock_key` is the session advisory lock our listener's session holds while it lives (NULL:
-- none, then our term alone says we are alive). A holder whose lock is no longer held by
-- anyone in this database has lost that session, almost always because its process died:
-- a candidate need not wait for its term. Candidates try every 2 s, so an attempt that finds
-- a live leader must cost little: the INSERT's SELECT then yields no row, and no row is
-- locked or written (ON CONFLICT alone would lock the leader's row, taking a transaction id
-- and writing WAL each time). pg_locks is read only when the term is someone else's, unexpired,
-- and names a lock. The conflict arm checks again under the row lock: two candidates racing
-- for one dead leader's term, the second finds the first's live term and changes nothing.
WITH held AS (
    SELECT (k.classid::bigint << 32) | k.objid::bigint AS lock_key
    FROM pg_locks AS k
    WHERE k.locktype = 'advisory' AND k.objsubid = 1 AND k.granted
      AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
INSERT INTO unbroken.leaders AS l (name, holder, expires_at, lock_key)
SELECT %(name)s, %(holder)s, now() + make_interval(secs => %(ttl)s), %(lock_key)s
WHERE NOT EXISTS (
    SELECT 1 FROM unbroken.leaders AS c
    WHERE c.name = %(name)s AND c.holder <> %(holder)s AND c.expires_at >= now()
      AND (c.lock_key IS NULL OR c.lock_key IN (SELECT lock_key FROM held))
)
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, expires_at = excluded.expires_at, lock_key = excluded.lock_key
WHERE l.holder = excluded.holder
   OR l.expires_at < now()
   OR (l.lock_key IS NOT NULL AND l.lock_key NOT IN (SELECT lock_key FROM held))
RETURNING holder

-- name: worker_lock_session
-- Hold a session advisory lock for as long as this session lives: while it is held, other workers know this worker's process is alive.
SELECT pg_try_advisory_lock(%(lock_key)s)

-- name: leader_resign
-- Give up leadership at shutdown so another worker takes over at once.
DELETE FROM unbroken.leaders WHERE name = %(name)s AND holder = %(holder)s

-- name: queue_set_paused
-- Pause or resume a queue; workers stop or resume fetching from it at their next fetch.
INSERT INTO unbroken.queues (name, paused) VALUES (%(name)s, %(paused)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()

-- name: task_set_chunk_size
-- Change a task's chunk size at run time, without a redeploy.
INSERT INTO unbroken.task_settings (task, chunk_size) VALUES (%(task)s, %(chunk_size)s)
ON CONFLICT (task) DO UPDATE SET chunk_size = excluded.chunk_size, updated_at = now()
