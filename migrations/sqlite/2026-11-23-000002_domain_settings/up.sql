-- Per-domain server presets. One row per account and domain: the primary key is what makes
-- "IMAP or Exchange, never both" hold under concurrent creates on every replica.
CREATE TABLE domain_settings (
    account_id BIGINT NOT NULL,
    domain TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- The servers as JSON (IMAP + SMTP endpoints, or the Exchange URL and scopes).
    settings TEXT NOT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    updated_by_user_id BIGINT NOT NULL,
    last_verified_time BIGINT,
    PRIMARY KEY (account_id, domain)
);

CREATE INDEX domain_settings_by_kind ON domain_settings (account_id, kind, domain);

-- AIP-155 idempotency keys of CreateDomainSettings, with the first result.
CREATE TABLE domain_settings_requests (
    account_id BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    response TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (account_id, request_id)
);

-- Domains users tried to connect without an admin preset: the admins' to-do list.
CREATE TABLE attempted_domains (
    account_id BIGINT NOT NULL,
    domain TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    first_attempt_time BIGINT NOT NULL,
    last_attempt_time BIGINT NOT NULL,
    PRIMARY KEY (account_id, domain)
);

CREATE INDEX attempted_domains_recent ON attempted_domains (account_id, last_attempt_time DESC, domain);
