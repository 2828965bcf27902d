-- Verification of a channel's custom from address (issue 15): the pending code of a connection,
-- stored as a salted SHA-256 (never the code), with its expiry and the attempts used; and the
-- codes sent per address, for the rate limit (whatever account asks).
CREATE TABLE address_verifications (
    connection_id BIGINT PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    account_id BIGINT NOT NULL,
    address TEXT NOT NULL,
    salt BYTEA NOT NULL,
    code_hash BYTEA NOT NULL,
    expire_time BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE verification_sends (
    id BIGINT PRIMARY KEY,
    address_key TEXT NOT NULL,
    send_time BIGINT NOT NULL
);
CREATE INDEX verification_sends_by_address ON verification_sends (address_key, send_time);
