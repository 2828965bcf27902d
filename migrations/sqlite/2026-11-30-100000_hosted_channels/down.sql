DROP INDEX connections_forwarding_address;
ALTER TABLE connections DROP COLUMN forwarding_address;
