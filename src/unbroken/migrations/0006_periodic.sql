-- Periodic tasks. Every worker registers its app's schedules and checks them; one row per
-- (schedule, tick) in periodic_ticks, its primary key, is what lets exactly one job exist
-- per tick whatever the number of workers checking at once. A schedule's cursor
-- (checked_until: every tick up to it was enqueued or skipped) is what a check starts from,
-- so a restart loses no tick and a pruned tick is never due again.
CREATE TABLE unbroken.schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    tz            text NOT NULL,
    catch_up      text NOT NULL,
    queue         text NOT NULL,
    checked_until timestamptz NOT NULL,
    last_tick     timestamptz,
    last_job_id   bigint,
    missed        bigint NOT NULL DEFAULT 0,
    registered_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_catch_up_policy CHECK (catch_up IN ('none', 'latest') OR catch_up ~ '^[1-9][0-9]{0,4}$'),
    CONSTRAINT schedules_missed_counted CHECK (missed >= 0)
);

CREATE TABLE unbroken.periodic_ticks (
    name        text NOT NULL,
    tick        timestamptz NOT NULL,
    job_id      bigint NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, tick)
);
