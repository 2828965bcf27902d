-- SQLite has no NOTIFY: the read cache (src/storage/cache) of every process using this file
-- polls this one-row counter, which rises with every change a cached read depends on, whoever
-- made it (another process such as `mailconnect allowlist import`, SQL by hand). Writes it does
-- not depend on (attempted domains, request ids) leave it alone.
CREATE TABLE cache_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO cache_generation (id, generation) VALUES (1, 0);

CREATE TRIGGER domain_settings_inserted AFTER INSERT ON domain_settings
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER domain_settings_updated AFTER UPDATE ON domain_settings
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER domain_settings_deleted AFTER DELETE ON domain_settings
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER accounts_inserted AFTER INSERT ON accounts
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER accounts_updated AFTER UPDATE ON accounts
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER accounts_deleted AFTER DELETE ON accounts
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER allowlist_data_centers_inserted AFTER INSERT ON allowlist_data_centers
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER allowlist_data_centers_updated AFTER UPDATE ON allowlist_data_centers
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
CREATE TRIGGER allowlist_data_centers_deleted AFTER DELETE ON allowlist_data_centers
BEGIN UPDATE cache_generation SET generation = generation + 1; END;
