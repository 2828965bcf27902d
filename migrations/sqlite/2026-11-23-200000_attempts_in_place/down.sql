CREATE INDEX attempted_domains_recent ON attempted_domains (account_id, last_attempt_time DESC, domain);
