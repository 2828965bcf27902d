-- Nothing to create: SQLite has no NOTIFY. The read cache watches `PRAGMA data_version` instead
-- (src/storage/cache). This migration exists so that both backends have the same history.
SELECT 1;
