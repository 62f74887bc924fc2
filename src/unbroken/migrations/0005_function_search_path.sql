-- A function resolves the names in its body with its caller's search_path: any role that may
-- create objects in a schema on that path (public, by default up to PostgreSQL 14) could
-- plant a function there that the body would call. Every function in the schema now runs
-- with its own: the system catalog, then pg_temp (never searched for functions; named, so
-- it cannot come first for tables either). notify_available() calls pg_notify only.
ALTER FUNCTION unbroken.notify_available() SET search_path = pg_catalog, pg_temp;
