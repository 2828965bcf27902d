-- Hosted channels (issue 15): the forwarding address a team forwards its mail to, unique across
-- every account (lower-case by construction). Other connections leave it NULL, which a unique
-- index never compares.
ALTER TABLE connections ADD COLUMN forwarding_address TEXT;
CREATE UNIQUE INDEX connections_forwarding_address ON connections (forwarding_address);
