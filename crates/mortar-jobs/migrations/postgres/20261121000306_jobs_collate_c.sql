-- Ids, queue names, states and unique keys are identifiers: compare them byte by byte. Under a
-- linguistic collation (the database default: en_US.UTF-8, C.UTF-8, …) every B-tree step on
-- these keys calls strcoll — on the primary key alone several times per job for the insert, the
-- lease and the completion. Ordering is unchanged for the ASCII ids (ULIDs) and states. On an
-- existing deployment this rewrites the tables once, under an exclusive lock.
ALTER TABLE jobs_jobs
    ALTER COLUMN id TYPE text COLLATE "C",
    ALTER COLUMN queue TYPE text COLLATE "C",
    ALTER COLUMN state TYPE text COLLATE "C",
    ALTER COLUMN unique_hold TYPE text COLLATE "C";
ALTER TABLE jobs_errors ALTER COLUMN job_id TYPE text COLLATE "C";
ALTER TABLE jobs_queues ALTER COLUMN queue TYPE text COLLATE "C";
