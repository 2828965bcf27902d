-- The directory the platform pushes in. Times are UTC microseconds since the Unix epoch, the one
-- representation both backends share.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    tier TEXT NOT NULL,
    data_center TEXT NOT NULL,
    subdomain TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);

CREATE TABLE account_sending_domains (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    PRIMARY KEY (account_id, domain)
);

CREATE TABLE users (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    email TEXT NOT NULL,
    super_admin INTEGER NOT NULL,
    account_access INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);

CREATE TABLE teams (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    name TEXT NOT NULL,
    update_time BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);

CREATE TABLE team_members (
    account_id BIGINT NOT NULL,
    team_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    PRIMARY KEY (account_id, team_id, user_id),
    FOREIGN KEY (account_id, team_id) REFERENCES teams (account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id) ON DELETE CASCADE
);
