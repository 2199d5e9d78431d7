-- Circuit breakers defined through the API (`PUT /v1/resilience/breakers/{name}`); those of
-- mortar.toml live in the config. `config` is the definition as JSON (BreakerConfig's fields:
-- a field added later takes its default when older rows are read).
CREATE TABLE IF NOT EXISTS resilience_breakers (
    name          TEXT PRIMARY KEY,
    config        TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
