-- Chunked runs: a chunk's data, the job's checkpoint and its progress commit in one transaction.
-- The commit is fenced twice: on the lease (this worker, this attempt and claim, still running,
-- lease not expired) and on the job's count of committed chunks, progress.seq (no other commit since
-- ours), so a rescued worker or a retried commit that had in fact succeeded changes nothing.

-- name: chunk_job_get
-- Where a chunked run resumes: the job's checkpoint, progress and chunk-size overrides, and whether this worker holds the job.
SELECT j.checkpoint,
       j.progress,
       j.chunk_size,
       (SELECT s.chunk_size FROM unbroken.task_settings AS s WHERE s.task = j.task) AS task_chunk_size,
       (j.attempt = %(attempt)s AND j.worker_id = %(worker_id)s AND j.state = 'running'
        AND j.attempted_at = %(claim)s::timestamptz
        AND j.lease_expires_at > clock_timestamp()) AS held
FROM unbroken.jobs AS j
WHERE j.id = %(id)s

-- name: chunk_commit
-- Save a chunk's checkpoint and progress and extend the lease, only while this worker holds the lease for this attempt and nobody committed since (fencing).
-- clock_timestamp(), not now(): now() is when the chunk's transaction began, and the lease
-- may have run out while the chunk was being written. The chunk-size overrides come back so
-- a change made while the job runs applies from the next chunk, at no extra round trip.
-- `commit_mode` 'off' lets this transaction commit without waiting for its WAL flush (set
-- here, not with a SET LOCAL, to save a round trip); NULL keeps the session's setting.
-- This session keeps the user's search_path (their statements run in it): a function an
-- object planted in public could outmatch (a variadic "any" one here) is named pg_catalog.
WITH durability AS (
    SELECT set_config('synchronous_commit',
                      coalesce(%(commit_mode)s::text, current_setting('synchronous_commit')),
                      true)
)
UPDATE unbroken.jobs AS j
SET checkpoint = %(checkpoint)s::jsonb,
    progress = %(progress)s::jsonb
               || pg_catalog.jsonb_build_object('checkpoint_at', clock_timestamp()),
    lease_expires_at = greatest(j.lease_expires_at,
                                clock_timestamp() + make_interval(secs => %(lease)s))
FROM durability
WHERE j.id = %(id)s
  AND j.attempt = %(attempt)s
  AND j.worker_id = %(worker_id)s
  AND j.attempted_at = %(claim)s::timestamptz
  AND j.state = 'running'
  AND j.lease_expires_at > clock_timestamp()
  AND coalesce((j.progress ->> 'seq')::bigint, 0) = %(base)s
RETURNING j.chunk_size,
          (SELECT s.chunk_size FROM unbroken.task_settings AS s WHERE s.task = j.task)
              AS task_chunk_size

-- name: chunk_job_state
-- Why a chunk commit changed nothing, or whether a commit whose answer was lost went through: the job's owner, lease, claim and count of committed chunks.
SELECT j.attempt,
       j.worker_id,
       j.state::text AS state,
       j.lease_expires_at > clock_timestamp() AS lease_valid,
       coalesce((j.progress ->> 'seq')::bigint, 0) AS seq,
       j.attempted_at IS NOT DISTINCT FROM %(claim)s::timestamptz AS same_claim
FROM unbroken.jobs AS j
WHERE j.id = %(id)s

-- name: job_progress_get
-- A job's progress and checkpoint as its last chunk committed them, with the checkpoint's age by the database clock.
SELECT j.id,
       j.state::text AS state,
       j.checkpoint,
       j.progress,
       extract(epoch FROM clock_timestamp() - (j.progress ->> 'checkpoint_at')::timestamptz)::float8
           AS checkpoint_age
FROM unbroken.jobs AS j
WHERE j.id = %(id)s
