//! Email domains and server host names, normalised the way mail servers compare them: lower case,
//! internationalised names in punycode (IDNA), no trailing dot.

use std::fmt;
use std::net::IpAddr;

use super::FieldViolation;
use super::directory::is_dns_label;

/// Longest domain name DNS allows (RFC 1035, in its textual form without the trailing dot).
const MAX_NAME: usize = 253;

/// A normalised email domain: `Bücher.Example.` → `xn--bcher-kva.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldViolation::new(
                field,
                "is required, e.g. \"example.com\"",
            ));
        }
        if parse_ip_literal(trimmed).is_some() {
            return Err(FieldViolation::new(
                field,
                format!(
                    "{raw:?} is an IP address; an email domain is a name such as \"example.com\""
                ),
            ));
        }
        let without_dot = trimmed.strip_suffix('.').unwrap_or(trimmed);
        let ascii = idna::domain_to_ascii(without_dot).map_err(|_| {
            FieldViolation::new(
                field,
                format!("{raw:?} is not a valid internationalised domain name"),
            )
        })?;
        check_name(field, raw, &ascii)?;
        Ok(Self(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The DNS rules every name must meet once in ASCII.
fn check_name(field: &str, raw: &str, ascii: &str) -> Result<(), FieldViolation> {
    if ascii.len() > MAX_NAME {
        return Err(FieldViolation::new(
            field,
            format!(
                "is {} characters long; a domain name has at most {MAX_NAME}",
                ascii.len()
            ),
        ));
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err(FieldViolation::new(
            field,
            format!("{raw:?} has a single label; use the full name, e.g. \"example.com\""),
        ));
    }
    if let Some(label) = labels.iter().find(|label| label.len() > 63) {
        return Err(FieldViolation::new(
            field,
            format!("the label {label:?} is longer than 63 characters"),
        ));
    }
    if let Some(label) = labels.iter().find(|label| !is_dns_label(label)) {
        return Err(FieldViolation::new(
            field,
            format!(
                "the label {label:?} is not valid: use letters, digits and hyphens, not at the start or end"
            ),
        ));
    }
    Ok(())
}

/// An IP literal, bare or in brackets (`[::1]`).
fn parse_ip_literal(raw: &str) -> Option<IpAddr> {
    let inner = raw
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(raw);
    inner.parse().ok()
}

/// A mail server host: a name under the same rules as a domain, or an IP literal. Whether the
/// address may be reached is the probe's egress guard's decision, not the parser's.
pub fn parse_host(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let trimmed = raw.trim();
    if let Some(ip) = parse_ip_literal(trimmed) {
        return Ok(ip.to_string());
    }
    if trimmed.is_empty() {
        return Err(FieldViolation::new(
            field,
            "is required, e.g. \"imap.example.com\"",
        ));
    }
    DomainName::parse(field, trimmed).map(|name| name.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        for (raw, expected) in [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("Bücher.example", "xn--bcher-kva.example"),
            (" mail.example.org ", "mail.example.org"),
        ] {
            assert_eq!(DomainName::parse("domain", raw).unwrap().as_str(), expected);
        }
    }

    #[test]
    fn rejects() {
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = format!("{}.example", vec!["a".repeat(60); 5].join("."));
        for bad in [
            "",
            "localhost",
            "192.0.2.1",
            "[::1]",
            "-bad.example",
            "bad-.example",
            "a..example",
            "under_score.example",
            "spa ce.example",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            let err = DomainName::parse("domain_settings.domain", bad).unwrap_err();
            assert_eq!(err.field, "domain_settings.domain", "{bad:?}");
        }
    }

    #[test]
    fn hosts_may_be_ip_literals() {
        assert_eq!(parse_host("h", "127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(parse_host("h", "[::1]").unwrap(), "::1");
        assert_eq!(
            parse_host("h", "IMAP.Example.com").unwrap(),
            "imap.example.com"
        );
        assert!(parse_host("h", "imap").is_err());
        assert!(parse_host("h", "").is_err());
    }
}
