-- The configuration service (mortar-config). Values are JSON text.
CREATE TABLE config_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- The newest revision (global, monotonic).
    revision BIGINT NOT NULL,
    -- History is complete above this revision (compaction removed superseded changes at or below it).
    floor BIGINT NOT NULL
);
INSERT INTO config_meta (id, revision, floor) VALUES (1, 0, 0);

-- Every environment written to, with its newest revision.
CREATE TABLE config_envs (
    ns TEXT NOT NULL,
    env TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (ns, env)
);

CREATE TABLE config_values (
    ns TEXT NOT NULL,
    env TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    secret BOOLEAN NOT NULL,
    -- The revision that last changed it.
    revision BIGINT NOT NULL,
    PRIMARY KEY (ns, env, key)
);

-- The history: one row per key per revision. value NULL = deleted.
CREATE TABLE config_changes (
    revision BIGINT NOT NULL,
    ns TEXT NOT NULL,
    env TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    prev TEXT,
    secret BOOLEAN NOT NULL,
    principal TEXT NOT NULL,
    message TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (revision, ns, env, key)
);
CREATE INDEX config_changes_key ON config_changes (ns, env, key, revision);
CREATE INDEX config_changes_env ON config_changes (ns, env, revision);

CREATE TABLE config_schemas (
    ns TEXT PRIMARY KEY,
    schema TEXT NOT NULL,
    principal TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
