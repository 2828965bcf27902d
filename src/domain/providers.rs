//! Well-known mail providers and their documented IMAP/SMTP servers, for users whose domain has no
//! admin preset. Only consumer domains are listed: a company's own domain on Google Workspace or
//! Office 365 is not knowable without DNS, which the hot path does not do.

use super::domain_settings::ImapSettings;
use super::probe::{Security, ServerEndpoint};

/// One provider: its name, the domains of its addresses, and its servers.
pub struct Provider {
    pub name: &'static str,
    pub domains: &'static [&'static str],
    pub imap: (&'static str, u16, Security),
    pub smtp: (&'static str, u16, Security),
}

impl Provider {
    pub fn imap_settings(&self) -> ImapSettings {
        let endpoint = |(host, port, security): (&str, u16, Security)| ServerEndpoint {
            host: host.to_owned(),
            port,
            security,
        };
        ImapSettings {
            imap_server: endpoint(self.imap),
            smtp_server: endpoint(self.smtp),
            allow_insecure_certificate: false,
        }
    }
}

use Security::{ImplicitTls, StartTls};

/// Servers as each provider documents them for IMAP clients.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        name: "Gmail",
        domains: &["gmail.com", "googlemail.com"],
        imap: ("imap.gmail.com", 993, ImplicitTls),
        smtp: ("smtp.gmail.com", 465, ImplicitTls),
    },
    Provider {
        name: "Outlook.com",
        domains: &["outlook.com", "hotmail.com", "live.com", "msn.com"],
        imap: ("outlook.office365.com", 993, ImplicitTls),
        smtp: ("smtp-mail.outlook.com", 587, StartTls),
    },
    Provider {
        name: "Yahoo Mail",
        domains: &["yahoo.com", "ymail.com", "rocketmail.com"],
        imap: ("imap.mail.yahoo.com", 993, ImplicitTls),
        smtp: ("smtp.mail.yahoo.com", 465, ImplicitTls),
    },
    Provider {
        name: "iCloud Mail",
        domains: &["icloud.com", "me.com", "mac.com"],
        imap: ("imap.mail.me.com", 993, ImplicitTls),
        smtp: ("smtp.mail.me.com", 587, StartTls),
    },
    Provider {
        name: "Fastmail",
        domains: &["fastmail.com", "fastmail.fm"],
        imap: ("imap.fastmail.com", 993, ImplicitTls),
        smtp: ("smtp.fastmail.com", 465, ImplicitTls),
    },
    Provider {
        name: "AOL Mail",
        domains: &["aol.com"],
        imap: ("imap.aol.com", 993, ImplicitTls),
        smtp: ("smtp.aol.com", 465, ImplicitTls),
    },
    Provider {
        name: "Zoho Mail",
        domains: &["zoho.com", "zohomail.com"],
        imap: ("imap.zoho.com", 993, ImplicitTls),
        smtp: ("smtp.zoho.com", 465, ImplicitTls),
    },
    Provider {
        name: "GMX",
        domains: &["gmx.com", "gmx.net", "gmx.de"],
        imap: ("imap.gmx.com", 993, ImplicitTls),
        smtp: ("mail.gmx.com", 587, StartTls),
    },
    Provider {
        name: "Yandex Mail",
        domains: &["yandex.com", "yandex.ru"],
        imap: ("imap.yandex.com", 993, ImplicitTls),
        smtp: ("smtp.yandex.com", 465, ImplicitTls),
    },
];

/// The provider of an (already normalised) email domain.
pub fn provider_for(domain: &str) -> Option<&'static Provider> {
    PROVIDERS
        .iter()
        .find(|provider| provider.domains.contains(&domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_providers_by_domain() {
        assert_eq!(provider_for("gmail.com").unwrap().name, "Gmail");
        assert_eq!(provider_for("me.com").unwrap().name, "iCloud Mail");
        assert!(provider_for("example.com").is_none());
    }

    #[test]
    fn every_domain_belongs_to_one_provider() {
        let mut seen = std::collections::HashSet::new();
        for provider in PROVIDERS {
            for domain in provider.domains {
                assert!(seen.insert(*domain), "{domain} listed twice");
                assert_eq!(*domain, domain.to_ascii_lowercase());
            }
        }
    }
}
