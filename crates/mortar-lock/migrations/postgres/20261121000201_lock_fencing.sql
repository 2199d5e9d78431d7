-- The highest fencing token issued (or reserved) per lock name: tokens only ever grow.
CREATE TABLE IF NOT EXISTS lock_fencing (
    name  TEXT PRIMARY KEY,
    token BIGINT NOT NULL
);

-- Cluster mode keeps leases and waiters here; each change to one name runs under
-- pg_advisory_xact_lock(hashtextextended(name, 0)).
CREATE TABLE IF NOT EXISTS lock_holders (
    lease_id       TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    owner          TEXT NOT NULL,
    token          BIGINT NOT NULL,
    permits        INTEGER NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS lock_holders_name ON lock_holders (name);

CREATE TABLE IF NOT EXISTS lock_waiters (
    ticket   TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    owner    TEXT NOT NULL,
    permits  INTEGER NOT NULL,
    seq      BIGSERIAL,
    until_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS lock_waiters_name ON lock_waiters (name, seq);
