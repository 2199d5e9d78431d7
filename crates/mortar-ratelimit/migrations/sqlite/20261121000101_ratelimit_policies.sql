-- Rate-limit policies defined through the API (mortar.toml policies live in the config).
CREATE TABLE IF NOT EXISTS ratelimit_policies (
    name          TEXT PRIMARY KEY,
    algorithm     TEXT NOT NULL,
    limit_n       BIGINT NOT NULL,
    window_ms     BIGINT NOT NULL,
    burst         BIGINT,
    failure_mode  TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
