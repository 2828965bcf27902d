DROP TRIGGER allowlist_data_centers_truncated ON allowlist_data_centers;
DROP TRIGGER accounts_truncated ON accounts;
DROP TRIGGER domain_settings_truncated ON domain_settings;
DROP TRIGGER allowlist_data_centers_changed ON allowlist_data_centers;
DROP TRIGGER accounts_changed ON accounts;
DROP TRIGGER domain_settings_changed ON domain_settings;
DROP FUNCTION mailconnect_notify_reset();
DROP FUNCTION mailconnect_notify_by_id();
DROP FUNCTION mailconnect_notify_domain_settings();
