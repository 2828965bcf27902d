-- InboxConnectionService: inboxes, connections, their sealed credentials, idempotency keys and
-- the notifications outbox. Ids of inboxes and connections are chosen by the service (random
-- 63-bit), so that credentials can be sealed to their connection before the row exists.
CREATE TABLE inboxes (
    id BIGINT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    display_name TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_by_user_id BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX inboxes_by_account ON inboxes (account_id, create_time, id);

CREATE TABLE connections (
    id BIGINT PRIMARY KEY,
    account_id BIGINT NOT NULL,
    email_address TEXT NOT NULL,
    -- The lower-cased address: what is connected at most once per account.
    address_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    provider TEXT NOT NULL,
    owner_user_id BIGINT NOT NULL,
    inbox_id BIGINT REFERENCES inboxes (id),
    state TEXT NOT NULL,
    disconnect_reason TEXT,
    -- False only for a connection replaced by a provider migration (kept, greyed out).
    holds_address BOOLEAN NOT NULL,
    usages TEXT NOT NULL,
    servers TEXT,
    channel_settings TEXT,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    state_change_time BIGINT NOT NULL,
    last_check_time BIGINT,
    last_success_time BIGINT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    first_failure_time BIGINT,
    last_error TEXT NOT NULL DEFAULT '',
    -- When the monitor checks it next; NULL for connections it does not check.
    next_check_time BIGINT
);
-- The product's rule, held by the database on every replica: one holder per address and account.
CREATE UNIQUE INDEX connections_address_holder ON connections (account_id, address_key) WHERE holds_address;
CREATE INDEX connections_by_account ON connections (account_id, create_time, id);
CREATE INDEX connections_by_inbox ON connections (inbox_id) WHERE inbox_id IS NOT NULL;
CREATE INDEX connections_due ON connections (next_check_time) WHERE next_check_time IS NOT NULL;

-- Secrets, each field sealed (XChaCha20-Poly1305) under key_id and bound to its account,
-- connection and column. Deleted with the connection.
CREATE TABLE connection_credentials (
    connection_id BIGINT PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    account_id BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    username TEXT NOT NULL,
    password BLOB,
    refresh_token BLOB,
    access_token BLOB,
    access_token_expire_time BIGINT,
    scopes TEXT NOT NULL,
    account_email TEXT NOT NULL
);
CREATE INDEX connection_credentials_by_key ON connection_credentials (key_id);

-- AIP-155: a retried create returns what the first one created.
CREATE TABLE inbox_requests (
    account_id BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    resource_id BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (account_id, request_id)
);

-- The outbox: written in the transaction of the change, then mailed by the dispatcher.
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id BIGINT NOT NULL,
    recipient_user_id BIGINT NOT NULL,
    recipient_email TEXT NOT NULL,
    kind TEXT NOT NULL,
    connection_id BIGINT NOT NULL,
    email_address TEXT NOT NULL,
    connection_kind TEXT NOT NULL,
    disconnect_reason TEXT,
    actor_user_id BIGINT NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    -- When the dispatcher may try (again); NULL once sent or given up.
    next_attempt_time BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent_time BIGINT,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX notifications_by_recipient ON notifications (account_id, recipient_user_id, id DESC);
CREATE INDEX notifications_due ON notifications (next_attempt_time) WHERE next_attempt_time IS NOT NULL;
