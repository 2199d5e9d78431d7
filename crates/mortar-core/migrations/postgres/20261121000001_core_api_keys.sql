-- Scoped API keys. Only a SHA-256 of the secret is stored; times are epoch milliseconds.
CREATE TABLE IF NOT EXISTS core_api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    secret_hash   TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
