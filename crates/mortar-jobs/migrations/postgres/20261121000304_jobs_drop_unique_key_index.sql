-- Nothing looks jobs up by (queue, unique_key): duplicates are found through the partial unique
-- index on unique_hold. The index only cost every insert a write.
DROP INDEX IF EXISTS jobs_unique;
