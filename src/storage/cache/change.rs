//! What a change notification names. Postgres triggers (migration
//! `2026-11-23-120000_change_notifications`) send these payloads on the channel [`CHANNEL`] when a
//! row a cached read depends on changes; this process applies the same values after its own
//! writes.

/// The Postgres NOTIFY channel.
pub const CHANNEL: &str = "mailconnect_changes";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `domain_settings <account_id> <domain>`: one preset was written or deleted.
    DomainSettings { account_id: i64, domain: String },
    /// `account <id>`: an account (and so the data center hosting it) changed.
    Account(i64),
    /// `allowlist <data center>`: a data center's ranges changed.
    Allowlist(String),
    /// Anything else: nothing cached can be trusted.
    Unknown,
}

impl Change {
    pub fn parse(payload: &str) -> Self {
        let mut words = payload.splitn(3, ' ');
        let parsed = match (words.next(), words.next(), words.next()) {
            (Some("domain_settings"), Some(account_id), Some(domain)) => account_id
                .parse()
                .ok()
                .map(|account_id| Change::DomainSettings {
                    account_id,
                    domain: domain.to_owned(),
                }),
            (Some("account"), Some(id), None) => id.parse().ok().map(Change::Account),
            (Some("allowlist"), Some(data_center), None) => {
                Some(Change::Allowlist(data_center.to_owned()))
            }
            _ => None,
        };
        parsed.unwrap_or(Change::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::Change;

    #[test]
    fn parses_what_the_triggers_send() {
        assert_eq!(
            Change::parse("domain_settings 42 example.org"),
            Change::DomainSettings {
                account_id: 42,
                domain: "example.org".to_owned()
            }
        );
        assert_eq!(Change::parse("account 7"), Change::Account(7));
        assert_eq!(
            Change::parse("allowlist eu1"),
            Change::Allowlist("eu1".to_owned())
        );
    }

    #[test]
    fn anything_else_is_unknown() {
        for payload in [
            "",
            "account",
            "account x",
            "account 1 2",
            "domain_settings 1",
            "domain_settings x example.org",
            "allowlist",
            "other 1",
        ] {
            assert_eq!(Change::parse(payload), Change::Unknown, "{payload:?}");
        }
    }
}
