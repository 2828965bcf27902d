//! Well-known mail providers, for users whose domain has no admin preset: their documented
//! IMAP/SMTP servers, or, for Google and Microsoft, whose servers no longer take passwords, the
//! OAuth provider to connect with. Only consumer domains are listed: a company's own domain on
//! Google Workspace or Office 365 is not knowable without DNS, which the hot path does not do.

use super::domain_settings::ImapSettings;
use super::probe::{Security, ServerEndpoint};

/// The OAuth authorization server a mailbox connects through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OAuthProvider {
    Google,
    Microsoft,
}

/// A server as a provider documents it: host, port, security.
type Server = (&'static str, u16, Security);

/// How a provider's mailboxes are reached.
pub enum Access {
    Servers { imap: Server, smtp: Server },
    OAuth(OAuthProvider),
}

/// One provider: its name, the domains of its addresses, and how to reach them.
pub struct Provider {
    pub name: &'static str,
    pub domains: &'static [&'static str],
    pub access: Access,
}

/// What a user connecting to a provider is told: its servers, or its OAuth provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    Servers(ImapSettings),
    OAuth(OAuthProvider),
}

impl Provider {
    pub fn reach(&self) -> Reach {
        let endpoint = |(host, port, security): Server| ServerEndpoint {
            host: host.to_owned(),
            port,
            security,
        };
        match self.access {
            Access::Servers { imap, smtp } => Reach::Servers(ImapSettings {
                imap_server: endpoint(imap),
                smtp_server: endpoint(smtp),
                allow_insecure_certificate: false,
            }),
            Access::OAuth(provider) => Reach::OAuth(provider),
        }
    }
}

use Security::{ImplicitTls, StartTls};

const fn servers(imap: Server, smtp: Server) -> Access {
    Access::Servers { imap, smtp }
}

/// Servers as each provider documents them for IMAP clients.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        name: "Gmail",
        domains: &["gmail.com", "googlemail.com"],
        access: Access::OAuth(OAuthProvider::Google),
    },
    Provider {
        name: "Outlook.com",
        domains: &["outlook.com", "hotmail.com", "live.com", "msn.com"],
        access: Access::OAuth(OAuthProvider::Microsoft),
    },
    Provider {
        name: "Yahoo Mail",
        domains: &["yahoo.com", "ymail.com", "rocketmail.com"],
        access: servers(
            ("imap.mail.yahoo.com", 993, ImplicitTls),
            ("smtp.mail.yahoo.com", 465, ImplicitTls),
        ),
    },
    Provider {
        name: "iCloud Mail",
        domains: &["icloud.com", "me.com", "mac.com"],
        access: servers(
            ("imap.mail.me.com", 993, ImplicitTls),
            ("smtp.mail.me.com", 587, StartTls),
        ),
    },
    Provider {
        name: "Fastmail",
        domains: &["fastmail.com", "fastmail.fm"],
        access: servers(
            ("imap.fastmail.com", 993, ImplicitTls),
            ("smtp.fastmail.com", 465, ImplicitTls),
        ),
    },
    Provider {
        name: "AOL Mail",
        domains: &["aol.com"],
        access: servers(
            ("imap.aol.com", 993, ImplicitTls),
            ("smtp.aol.com", 465, ImplicitTls),
        ),
    },
    Provider {
        name: "Zoho Mail",
        domains: &["zoho.com", "zohomail.com"],
        access: servers(
            ("imap.zoho.com", 993, ImplicitTls),
            ("smtp.zoho.com", 465, ImplicitTls),
        ),
    },
    Provider {
        name: "GMX",
        domains: &["gmx.com", "gmx.net", "gmx.de"],
        access: servers(
            ("imap.gmx.com", 993, ImplicitTls),
            ("mail.gmx.com", 587, StartTls),
        ),
    },
    Provider {
        name: "Yandex Mail",
        domains: &["yandex.com", "yandex.ru"],
        access: servers(
            ("imap.yandex.com", 993, ImplicitTls),
            ("smtp.yandex.com", 465, ImplicitTls),
        ),
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
        assert_eq!(
            provider_for("hotmail.com").unwrap().reach(),
            Reach::OAuth(OAuthProvider::Microsoft)
        );
        assert!(matches!(
            provider_for("yahoo.com").unwrap().reach(),
            Reach::Servers(_)
        ));
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
