-- Every job is inserted, updated a few times (claimed, renewed, finished) and deleted by the
-- pruner: the table churns its whole live set, and PostgreSQL's defaults (vacuum once 20 %
-- of the rows are dead, throttled to 200 cost units per 2 ms) let dead rows and dead index
-- entries pile up in front of the fetch. Vacuum at 1 % dead rows (and 1 % new ones, so
-- finished rows are frozen and marked all-visible while they wait for the pruner), analyze
-- at 2 %, and let vacuum work ten times faster on this table. docs/retention.md says why
-- each value and how to change it.
ALTER TABLE unbroken.jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000
);
