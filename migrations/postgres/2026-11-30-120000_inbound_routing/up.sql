-- Inbound routing (issue 15): where each round-robin channel's rotation stands, shared by every
-- replica, and the user each message got (by Message-ID), so that a redelivery gets the same
-- answer without advancing the rotation. Picks older than a week are pruned as new ones come.
CREATE TABLE round_robin_positions (
    connection_id BIGINT PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    position BIGINT NOT NULL
);

CREATE TABLE round_robin_picks (
    connection_id BIGINT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    pick_time BIGINT NOT NULL,
    PRIMARY KEY (connection_id, message_id)
);
CREATE INDEX round_robin_picks_by_time ON round_robin_picks (connection_id, pick_time);
