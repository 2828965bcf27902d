DROP TABLE attempted_domains;
DROP TABLE domain_settings_requests;
DROP TABLE domain_settings;
