-- The highest fencing token issued (or reserved) per lock name: tokens only ever grow.
CREATE TABLE IF NOT EXISTS lock_fencing (
    name  TEXT PRIMARY KEY,
    token BIGINT NOT NULL
);
