-- Idempotency-Key records (draft-ietf-httpapi-idempotency-key-header): one per (principal,
-- path, key). status 0 = the first request is still in flight (until locked_until_ms); else
-- the stored response. Times are epoch milliseconds.
CREATE TABLE IF NOT EXISTS core_idempotency (
    principal       TEXT NOT NULL,
    path            TEXT NOT NULL,
    key             TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    status          INTEGER NOT NULL,
    headers         TEXT NOT NULL,
    body            BYTEA NOT NULL,
    locked_until_ms BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (principal, path, key)
);
CREATE INDEX IF NOT EXISTS core_idempotency_expiry ON core_idempotency (expires_at_ms);
