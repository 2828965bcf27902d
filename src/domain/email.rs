//! Email addresses, parsed once at the edge.

use std::fmt;

use super::FieldViolation;

/// A syntactically valid email address (RFC 5322 addr-spec), with its domain lower-cased.
/// The local part keeps its case: some servers treat it as case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        let parsed = email_address::EmailAddress::parse_with_options(
            raw,
            email_address::Options::default().without_display_text(),
        )
        .map_err(|e| {
            FieldViolation::new(field, format!("{raw:?} is not a valid email address: {e}"))
        })?;
        Ok(Self(format!(
            "{}@{}",
            parsed.local_part(),
            parsed.domain().to_ascii_lowercase()
        )))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cases_the_domain_only() {
        let email = EmailAddress::parse("email", " Jane.Doe@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "Jane.Doe@example.com");
        assert_eq!(email.domain(), "example.com");
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for bad in [
            "",
            "jane",
            "jane@",
            "@example.com",
            "Jane <jane@example.com>",
            "a b@c.d",
        ] {
            let err = EmailAddress::parse("user.email", bad).unwrap_err();
            assert_eq!(err.field, "user.email", "{bad:?}");
        }
    }
}
