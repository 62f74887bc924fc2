-- A chunked job's progress never says it consumed more items than its source holds (issue
-- 11: a resumed run wrote its source twice and finished at position 2000 of total 1000).
-- The runner now shows a total never below the position (a reported total may be stale or
-- shrink between pages; the items consumed are a fact). Rows written before it are brought
-- to the same rule, and a CHECK keeps every later write to it.
UPDATE unbroken.jobs
SET progress = jsonb_set(progress, '{total}', progress -> 'position')
WHERE jsonb_typeof(progress -> 'position') = 'number'
  AND jsonb_typeof(progress -> 'total') = 'number'
  AND (progress ->> 'position')::numeric > (progress ->> 'total')::numeric;

ALTER TABLE unbroken.jobs ADD CONSTRAINT jobs_progress_within_total CHECK (
    CASE WHEN jsonb_typeof(progress -> 'position') = 'number'
              AND jsonb_typeof(progress -> 'total') = 'number'
         THEN (progress ->> 'position')::numeric <= (progress ->> 'total')::numeric
         ELSE true
    END);
