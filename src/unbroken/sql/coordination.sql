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
-- Forget workers whose heartbeat stopped long ago (their jobs are rescued through leases).
DELETE FROM unbroken.workers WHERE heartbeat_at < now() - make_interval(secs => %(silence)s)

-- name: leader_attempt_elect
-- Become or stay leader of `name` if nobody else holds an unexpired term; returns the holder when it is us.
INSERT INTO unbroken.leaders AS l (name, holder, expires_at)
VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE
SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at < now()
RETURNING holder

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
