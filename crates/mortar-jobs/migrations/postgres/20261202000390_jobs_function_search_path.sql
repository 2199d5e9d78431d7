-- The outbox functions resolve mortar's tables in the schema they were created in (the one
-- `database.schema` names), whatever the caller's search_path: an application calls them
-- schema-qualified from its own connection — SELECT mortar.mortar_jobs_enqueue(…).
ALTER FUNCTION mortar_jobs_ulid() SET search_path FROM CURRENT;
ALTER FUNCTION mortar_jobs_enqueue(text, text, jsonb, integer, timestamptz, integer, bigint)
    SET search_path FROM CURRENT;
