-- Liveness leases of the nodes that have waiters in line: each node renews its row; a waiter
-- whose node's row has lapsed (the node died) is no longer in line.
CREATE TABLE IF NOT EXISTS lock_nodes (
    node          TEXT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);

-- The node a waiter waits through (NULL: rows from before node leases, always live).
ALTER TABLE lock_waiters ADD COLUMN IF NOT EXISTS node TEXT;
