-- A retry (from the DLQ, or of a cancelled or retryable job) gives the job a fresh budget of
-- max_attempts attempts while attempt numbers keep counting, so each attempt's error keeps a
-- number of its own: attempt_base is the attempts made before the last retry.
ALTER TABLE jobs_jobs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
-- When cancelling a running job was asked for: its worker learns at its next heartbeat, and the
-- attempt ends cancelled (a completion that comes first wins).
ALTER TABLE jobs_jobs ADD COLUMN cancel_requested_at_ms BIGINT;
