-- The egress allowlist. Times are UTC microseconds since the Unix epoch.

-- One row per data center that was ever published to; `version` counts its publications and is
-- the row publications lock to take turns.
CREATE TABLE allowlist_data_centers (
    id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    update_time BIGINT
);

-- The current ranges per data center and protocol. A range removed with advance notice keeps its
-- row, listed until `retire_time`.
CREATE TABLE allowlist_ranges (
    data_center TEXT NOT NULL REFERENCES allowlist_data_centers (id),
    protocol TEXT NOT NULL,
    cidr TEXT NOT NULL,
    effective_time BIGINT NOT NULL,
    retire_time BIGINT,
    PRIMARY KEY (data_center, protocol, cidr)
);

-- Every publication that changed something: one version per data center, never two alike.
CREATE TABLE allowlist_changes (
    id BIGSERIAL PRIMARY KEY,
    data_center TEXT NOT NULL REFERENCES allowlist_data_centers (id),
    version BIGINT NOT NULL,
    protocol TEXT NOT NULL,
    publish_time BIGINT NOT NULL,
    effective_time BIGINT NOT NULL,
    -- Canonical CIDRs, sorted, one per line.
    added TEXT NOT NULL,
    removed TEXT NOT NULL,
    UNIQUE (data_center, version)
);

CREATE INDEX allowlist_changes_by_protocol ON allowlist_changes (data_center, protocol);
