//! Per-domain server presets: IMAP + SMTP servers or an Exchange URL, never both.

use std::time::SystemTime;

use super::domain_name::{DomainName, parse_host};
use super::probe::{Security, ServerEndpoint};
use super::{FieldViolation, Violations};

/// Longest Exchange URL accepted.
const MAX_URL: usize = 2048;

/// A proto enum value as the caller sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice<T> {
    #[default]
    Unspecified,
    Value(T),
    /// A number that is not a value of the enum.
    Unknown(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExchangeScope {
    Email,
    Calendar,
}

/// Which kind of settings a domain has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsKind {
    Imap,
    Exchange,
}

impl SettingsKind {
    /// The stable name stored in the database and given in error metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            SettingsKind::Imap => "imap",
            SettingsKind::Exchange => "exchange",
        }
    }

    pub fn from_db(value: &str) -> Option<Self> {
        [SettingsKind::Imap, SettingsKind::Exchange]
            .into_iter()
            .find(|kind| kind.as_str() == value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapSettings {
    pub imap_server: ServerEndpoint,
    pub smtp_server: ServerEndpoint,
    pub allow_insecure_certificate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSettings {
    /// An https URL with a host, without credentials or fragment.
    pub exchange_url: String,
    /// Sorted, without duplicates, never empty.
    pub scopes: Vec<ExchangeScope>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSettings {
    Imap(ImapSettings),
    Exchange(ExchangeSettings),
}

impl ServerSettings {
    pub fn kind(&self) -> SettingsKind {
        match self {
            ServerSettings::Imap(_) => SettingsKind::Imap,
            ServerSettings::Exchange(_) => SettingsKind::Exchange,
        }
    }

    /// Whether going from `self` to `next` changes anything the probe checks (servers, security,
    /// URL, the insecure-certificate flag); scopes alone do not.
    pub fn needs_probe_after(&self, next: &ServerSettings) -> bool {
        match (self, next) {
            (ServerSettings::Imap(old), ServerSettings::Imap(new)) => old != new,
            (ServerSettings::Exchange(old), ServerSettings::Exchange(new)) => {
                old.exchange_url != new.exchange_url
            }
            _ => true,
        }
    }
}

/// A stored preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    pub domain: DomainName,
    pub settings: ServerSettings,
    /// Increases with every write; the etag is derived from it.
    pub version: i64,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub updated_by_user_id: i64,
    pub last_verified_time: Option<SystemTime>,
}

impl DomainSettings {
    pub fn name(&self) -> String {
        resource_name(&self.domain)
    }

    pub fn etag(&self) -> String {
        etag_of(self.version)
    }
}

const NAME_PREFIX: &str = "domainSettings/";

pub fn resource_name(domain: &DomainName) -> String {
    format!("{NAME_PREFIX}{domain}")
}

pub fn etag_of(version: i64) -> String {
    format!("\"v{version}\"")
}

/// The version an etag names; `None` for something that is not one of ours.
pub fn parse_etag(etag: &str) -> Option<i64> {
    etag.strip_prefix("\"v")?.strip_suffix('"')?.parse().ok()
}

/// `domainSettings/{domain}` → the domain.
pub fn parse_resource_name(field: &str, name: &str) -> Result<DomainName, FieldViolation> {
    let domain = name.strip_prefix(NAME_PREFIX).ok_or_else(|| {
        FieldViolation::new(
            field,
            format!("{name:?} is not a domain settings name: use \"domainSettings/{{domain}}\", e.g. \"domainSettings/example.com\""),
        )
    })?;
    DomainName::parse(field, domain)
}

/// A server address as the caller sent it.
#[derive(Debug, Clone)]
pub struct ServerInput {
    pub host: String,
    pub port: u32,
    pub security: Choice<Security>,
}

impl ServerInput {
    pub fn parse(&self, prefix: &str, violations: &mut Violations) -> Option<ServerEndpoint> {
        let host = violations.check(parse_host(&format!("{prefix}.host"), &self.host));
        let port = match u16::try_from(self.port) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                violations.add(
                    format!("{prefix}.port"),
                    format!(
                        "{} is not a port: use 1 to 65535, e.g. 993 for IMAPS",
                        self.port
                    ),
                );
                None
            }
        };
        let security = match self.security {
            Choice::Value(security) => Some(security),
            Choice::Unspecified => port.map(Security::infer_from_port),
            Choice::Unknown(value) => {
                violations.add(
                    format!("{prefix}.security"),
                    format!("{value} is not a security mode: use SECURITY_IMPLICIT_TLS, SECURITY_STARTTLS or SECURITY_PLAINTEXT"),
                );
                None
            }
        };
        Some(ServerEndpoint {
            host: host?,
            port: port?,
            security: security?,
        })
    }
}

/// IMAP settings as the caller sent them; a missing server is `None`.
#[derive(Debug, Clone)]
pub struct ImapInput {
    pub imap_server: Option<ServerInput>,
    pub smtp_server: Option<ServerInput>,
    pub allow_insecure_certificate: bool,
}

/// Exchange settings as the caller sent them.
#[derive(Debug, Clone)]
pub struct ExchangeInput {
    pub exchange_url: String,
    pub scopes: Vec<Choice<ExchangeScope>>,
}

/// The `settings` oneof as the caller sent it.
#[derive(Debug, Clone)]
pub enum SettingsInput {
    Missing,
    Imap(ImapInput),
    Exchange(ExchangeInput),
}

fn required_server(
    input: &Option<ServerInput>,
    prefix: &str,
    violations: &mut Violations,
) -> Option<ServerEndpoint> {
    match input {
        Some(server) => server.parse(prefix, violations),
        None => {
            violations.add(prefix, "is required");
            None
        }
    }
}

pub fn parse_exchange_url(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(FieldViolation::new(
            field,
            "is required, e.g. \"https://mail.example.com/EWS/Exchange.asmx\"",
        ));
    }
    if raw.len() > MAX_URL {
        return Err(FieldViolation::new(
            field,
            format!("is longer than {MAX_URL} characters"),
        ));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| FieldViolation::new(field, format!("{raw:?} is not a URL: {e}")))?;
    if url.scheme() != "https" {
        return Err(FieldViolation::new(
            field,
            format!("must be an https:// URL, not {}://", url.scheme()),
        ));
    }
    let Some(host) = url.host_str() else {
        return Err(FieldViolation::new(field, "must name a host"));
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldViolation::new(
            field,
            "must not contain credentials; users enter their own when they connect",
        ));
    }
    if url.fragment().is_some() {
        return Err(FieldViolation::new(field, "must not contain a #fragment"));
    }
    parse_host(field, host)?;
    Ok(url.to_string())
}

impl ImapInput {
    fn parse(&self, prefix: &str, violations: &mut Violations) -> Option<ImapSettings> {
        let imap = required_server(
            &self.imap_server,
            &format!("{prefix}.imap_server"),
            violations,
        );
        let smtp = required_server(
            &self.smtp_server,
            &format!("{prefix}.smtp_server"),
            violations,
        );
        Some(ImapSettings {
            imap_server: imap?,
            smtp_server: smtp?,
            allow_insecure_certificate: self.allow_insecure_certificate,
        })
    }
}

impl ExchangeInput {
    fn parse_url(&self, prefix: &str, violations: &mut Violations) -> Option<String> {
        violations.check(parse_exchange_url(
            &format!("{prefix}.exchange_url"),
            &self.exchange_url,
        ))
    }

    fn parse_scopes(&self, prefix: &str, violations: &mut Violations) -> Vec<ExchangeScope> {
        let mut scopes = Vec::new();
        for (index, scope) in self.scopes.iter().enumerate() {
            match scope {
                Choice::Value(scope) => scopes.push(*scope),
                _ => violations.add(
                    format!("{prefix}.scopes[{index}]"),
                    "is not a scope: use EXCHANGE_SCOPE_EMAIL or EXCHANGE_SCOPE_CALENDAR",
                ),
            }
        }
        if scopes.is_empty() {
            scopes = vec![ExchangeScope::Email, ExchangeScope::Calendar];
        }
        scopes.sort();
        scopes.dedup();
        scopes
    }

    fn parse(&self, prefix: &str, violations: &mut Violations) -> Option<ExchangeSettings> {
        let url = self.parse_url(prefix, violations);
        let scopes = self.parse_scopes(prefix, violations);
        Some(ExchangeSettings {
            exchange_url: url?,
            scopes,
        })
    }
}

impl SettingsInput {
    /// Parses complete settings; `prefix` is the path of the DomainSettings message.
    pub fn parse(&self, prefix: &str, violations: &mut Violations) -> Option<ServerSettings> {
        match self {
            SettingsInput::Missing => {
                violations.add(
                    format!("{prefix}.imap"),
                    "one of imap (IMAP + SMTP servers) or exchange (an Exchange URL) is required",
                );
                None
            }
            SettingsInput::Imap(imap) => imap
                .parse(&format!("{prefix}.imap"), violations)
                .map(ServerSettings::Imap),
            SettingsInput::Exchange(exchange) => exchange
                .parse(&format!("{prefix}.exchange"), violations)
                .map(ServerSettings::Exchange),
        }
    }
}

/// Why an update cannot be applied.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateError {
    Invalid(Vec<FieldViolation>),
    /// The update would switch between IMAP and Exchange.
    KindMismatch {
        existing: SettingsKind,
        requested: SettingsKind,
    },
}

/// Applies `input` to `existing` along the update mask (AIP-134). An empty mask or `*` replaces
/// the whole settings.
pub fn apply_update(
    existing: &ServerSettings,
    input: &SettingsInput,
    paths: &[String],
) -> Result<ServerSettings, UpdateError> {
    const PREFIX: &str = "domain_settings";
    let mut violations = Violations::new();
    let requested_kind = |path: &str| {
        if path == "imap" || path.starts_with("imap.") {
            Some(SettingsKind::Imap)
        } else if path == "exchange" || path.starts_with("exchange.") {
            Some(SettingsKind::Exchange)
        } else {
            None
        }
    };
    if paths.is_empty() || paths.iter().any(|path| path == "*") {
        let replacement = input.parse(PREFIX, &mut violations);
        let replacement = violations
            .finish(|| replacement)
            .map_err(UpdateError::Invalid)?;
        let replacement = replacement.expect("no violations means parsed");
        if replacement.kind() != existing.kind() {
            return Err(UpdateError::KindMismatch {
                existing: existing.kind(),
                requested: replacement.kind(),
            });
        }
        return Ok(replacement);
    }
    for path in paths {
        if let Some(kind) = requested_kind(path)
            && kind != existing.kind()
        {
            return Err(UpdateError::KindMismatch {
                existing: existing.kind(),
                requested: kind,
            });
        }
    }
    let mut next = existing.clone();
    for (index, path) in paths.iter().enumerate() {
        let mask_field = format!("update_mask.paths[{index}]");
        match (&mut next, input, path.as_str()) {
            (ServerSettings::Imap(next), SettingsInput::Imap(imap), "imap") => {
                if let Some(parsed) = imap.parse(&format!("{PREFIX}.imap"), &mut violations) {
                    *next = parsed;
                }
            }
            (ServerSettings::Imap(next), SettingsInput::Imap(imap), "imap.imap_server") => {
                if let Some(server) = required_server(
                    &imap.imap_server,
                    &format!("{PREFIX}.imap.imap_server"),
                    &mut violations,
                ) {
                    next.imap_server = server;
                }
            }
            (ServerSettings::Imap(next), SettingsInput::Imap(imap), "imap.smtp_server") => {
                if let Some(server) = required_server(
                    &imap.smtp_server,
                    &format!("{PREFIX}.imap.smtp_server"),
                    &mut violations,
                ) {
                    next.smtp_server = server;
                }
            }
            (
                ServerSettings::Imap(next),
                SettingsInput::Imap(imap),
                "imap.allow_insecure_certificate",
            ) => next.allow_insecure_certificate = imap.allow_insecure_certificate,
            (ServerSettings::Exchange(next), SettingsInput::Exchange(exchange), "exchange") => {
                if let Some(parsed) = exchange.parse(&format!("{PREFIX}.exchange"), &mut violations)
                {
                    *next = parsed;
                }
            }
            (
                ServerSettings::Exchange(next),
                SettingsInput::Exchange(exchange),
                "exchange.exchange_url",
            ) => {
                if let Some(url) = exchange.parse_url(&format!("{PREFIX}.exchange"), &mut violations)
                {
                    next.exchange_url = url;
                }
            }
            (
                ServerSettings::Exchange(next),
                SettingsInput::Exchange(exchange),
                "exchange.scopes",
            ) => next.scopes = exchange.parse_scopes(&format!("{PREFIX}.exchange"), &mut violations),
            (_, _, "domain" | "name" | "etag" | "create_time" | "update_time"
                | "updated_by_user_id" | "last_verified_time") => violations.add(
                mask_field,
                format!("{path:?} cannot be changed; to move settings to another domain, delete and create them"),
            ),
            (_, _, path) if requested_kind(path).is_some() && is_known_path(path) => violations.add(
                format!("{PREFIX}.{}", path.split('.').next().unwrap_or(path)),
                format!("is required by the update_mask path {path:?}"),
            ),
            _ => violations.add(
                mask_field,
                format!(
                    "{path:?} is not a field of DomainSettings that can be updated: use imap, imap.imap_server, imap.smtp_server, imap.allow_insecure_certificate, exchange, exchange.exchange_url or exchange.scopes"
                ),
            ),
        }
    }
    violations.finish(|| next).map_err(UpdateError::Invalid)
}

fn is_known_path(path: &str) -> bool {
    matches!(
        path,
        "imap"
            | "imap.imap_server"
            | "imap.smtp_server"
            | "imap.allow_insecure_certificate"
            | "exchange"
            | "exchange.exchange_url"
            | "exchange.scopes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(host: &str, port: u32) -> ServerInput {
        ServerInput {
            host: host.into(),
            port,
            security: Choice::Unspecified,
        }
    }

    fn imap_input() -> SettingsInput {
        SettingsInput::Imap(ImapInput {
            imap_server: Some(server("imap.example.com", 993)),
            smtp_server: Some(server("smtp.example.com", 587)),
            allow_insecure_certificate: false,
        })
    }

    fn parse(input: &SettingsInput) -> Result<ServerSettings, Vec<FieldViolation>> {
        let mut violations = Violations::new();
        let parsed = input.parse("domain_settings", &mut violations);
        violations.finish(|| parsed.unwrap())
    }

    #[test]
    fn security_is_inferred_from_the_port() {
        let ServerSettings::Imap(imap) = parse(&imap_input()).unwrap() else {
            panic!("imap expected")
        };
        assert_eq!(imap.imap_server.security, Security::ImplicitTls);
        assert_eq!(imap.smtp_server.security, Security::StartTls);
    }

    #[test]
    fn every_violation_has_its_path() {
        let input = SettingsInput::Imap(ImapInput {
            imap_server: Some(ServerInput {
                host: "bad host".into(),
                port: 70000,
                security: Choice::Unknown(9),
            }),
            smtp_server: None,
            allow_insecure_certificate: false,
        });
        let fields: Vec<String> = parse(&input)
            .unwrap_err()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "domain_settings.imap.imap_server.host",
                "domain_settings.imap.imap_server.port",
                "domain_settings.imap.imap_server.security",
                "domain_settings.imap.smtp_server",
            ]
        );
    }

    #[test]
    fn exchange_urls() {
        for good in [
            "https://mail.example.com/EWS/Exchange.asmx",
            "https://10.0.0.1/EWS/Exchange.asmx",
        ] {
            assert!(parse_exchange_url("u", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "http://mail.example.com/EWS/Exchange.asmx",
            "https://user:pw@mail.example.com/EWS",
            "https://mail.example.com/EWS#x",
            "mail.example.com/EWS",
            "https://mail/EWS",
        ] {
            assert!(parse_exchange_url("u", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_default_to_both_and_merge() {
        let input = SettingsInput::Exchange(ExchangeInput {
            exchange_url: "https://mail.example.com/EWS/Exchange.asmx".into(),
            scopes: vec![],
        });
        let ServerSettings::Exchange(exchange) = parse(&input).unwrap() else {
            panic!()
        };
        assert_eq!(
            exchange.scopes,
            [ExchangeScope::Email, ExchangeScope::Calendar]
        );
    }

    #[test]
    fn updates_follow_the_mask_and_keep_the_kind() {
        let existing = parse(&imap_input()).unwrap();
        let patch = SettingsInput::Imap(ImapInput {
            imap_server: None,
            smtp_server: Some(server("smtp2.example.com", 465)),
            allow_insecure_certificate: true,
        });
        let next = apply_update(&existing, &patch, &["imap.smtp_server".into()]).unwrap();
        let ServerSettings::Imap(next) = next else {
            panic!()
        };
        assert_eq!(next.smtp_server.host, "smtp2.example.com");
        assert_eq!(next.smtp_server.security, Security::ImplicitTls);
        assert!(!next.allow_insecure_certificate, "not in the mask");

        let exchange = SettingsInput::Exchange(ExchangeInput {
            exchange_url: "https://mail.example.com/EWS/Exchange.asmx".into(),
            scopes: vec![],
        });
        assert!(matches!(
            apply_update(&existing, &exchange, &[]),
            Err(UpdateError::KindMismatch { .. })
        ));
        assert!(matches!(
            apply_update(&existing, &exchange, &["exchange.exchange_url".into()]),
            Err(UpdateError::KindMismatch { .. })
        ));
        let Err(UpdateError::Invalid(violations)) =
            apply_update(&existing, &patch, &["domain".into(), "bogus".into()])
        else {
            panic!()
        };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["update_mask.paths[0]", "update_mask.paths[1]"]);
    }

    #[test]
    fn probing_is_needed_only_for_what_the_probe_checks() {
        let exchange = |url: &str, scopes: Vec<ExchangeScope>| {
            ServerSettings::Exchange(ExchangeSettings {
                exchange_url: url.into(),
                scopes,
            })
        };
        let a = exchange(
            "https://a.example/EWS/Exchange.asmx",
            vec![ExchangeScope::Email],
        );
        let b = exchange(
            "https://a.example/EWS/Exchange.asmx",
            vec![ExchangeScope::Calendar],
        );
        let c = exchange(
            "https://c.example/EWS/Exchange.asmx",
            vec![ExchangeScope::Email],
        );
        assert!(!a.needs_probe_after(&b));
        assert!(a.needs_probe_after(&c));
    }
}
