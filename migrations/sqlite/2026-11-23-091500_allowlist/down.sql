DROP TABLE allowlist_changes;
DROP TABLE allowlist_ranges;
DROP TABLE allowlist_data_centers;
