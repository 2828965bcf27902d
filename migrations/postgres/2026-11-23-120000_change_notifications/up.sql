-- Every change a replica's read cache depends on is announced on the channel
-- `mailconnect_changes` when its transaction commits, whoever made it (src/storage/cache).
-- Payloads: `domain_settings <account_id> <domain>`, `account <id>`, `allowlist <data center>`,
-- and `reset` (a TRUNCATE: forget everything). Postgres delivers identical payloads of one
-- transaction once. Allowlist ranges are announced through their data center's row, whose
-- version every publication raises.

CREATE FUNCTION mailconnect_notify_domain_settings() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('mailconnect_changes',
            'domain_settings ' || OLD.account_id || ' ' || OLD.domain);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('mailconnect_changes',
            'domain_settings ' || NEW.account_id || ' ' || NEW.domain);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- For tables keyed by `id`: `<prefix> <id>` with the prefix given to the trigger.
CREATE FUNCTION mailconnect_notify_by_id() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('mailconnect_changes', TG_ARGV[0] || ' ' || OLD.id);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('mailconnect_changes', TG_ARGV[0] || ' ' || NEW.id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION mailconnect_notify_reset() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('mailconnect_changes', 'reset');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER domain_settings_changed AFTER INSERT OR UPDATE OR DELETE ON domain_settings
    FOR EACH ROW EXECUTE FUNCTION mailconnect_notify_domain_settings();
CREATE TRIGGER accounts_changed AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION mailconnect_notify_by_id('account');
CREATE TRIGGER allowlist_data_centers_changed AFTER INSERT OR UPDATE OR DELETE
    ON allowlist_data_centers
    FOR EACH ROW EXECUTE FUNCTION mailconnect_notify_by_id('allowlist');

CREATE TRIGGER domain_settings_truncated AFTER TRUNCATE ON domain_settings
    FOR EACH STATEMENT EXECUTE FUNCTION mailconnect_notify_reset();
CREATE TRIGGER accounts_truncated AFTER TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION mailconnect_notify_reset();
CREATE TRIGGER allowlist_data_centers_truncated AFTER TRUNCATE ON allowlist_data_centers
    FOR EACH STATEMENT EXECUTE FUNCTION mailconnect_notify_reset();
