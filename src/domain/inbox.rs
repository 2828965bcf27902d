//! Conversations inboxes: shared spaces whose channels are team addresses.

use std::str::FromStr;
use std::time::SystemTime;

use super::FieldViolation;
use super::connection::inbox_name;
use super::directory::Tier;
use super::domain_settings::etag_of;

/// Longest display name, in characters.
const MAX_DISPLAY_NAME: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    pub id: i64,
    pub account_id: i64,
    pub display_name: String,
    pub version: i64,
    pub created_by_user_id: i64,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
}

impl Inbox {
    pub fn name(&self) -> String {
        inbox_name(self.id)
    }

    pub fn etag(&self) -> String {
        etag_of(self.version)
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
pub fn parse_display_name(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let name = raw.trim();
    if name.is_empty()
        || name.chars().count() > MAX_DISPLAY_NAME
        || name.chars().any(char::is_control)
    {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be 1 to {MAX_DISPLAY_NAME} characters without control characters, e.g. \"Support\""
            ),
        ));
    }
    Ok(name.to_owned())
}

/// How many inboxes each tier may have (`MAILCONNECT_INBOX_LIMITS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits([u32; 4]);

impl Default for InboxLimits {
    fn default() -> Self {
        Self([1, 1, 100, 100])
    }
}

impl InboxLimits {
    pub fn limit(&self, tier: Tier) -> u32 {
        self.0[Tier::ALL.iter().position(|t| *t == tier).unwrap_or(0)]
    }
}

impl FromStr for InboxLimits {
    type Err = String;

    /// `free=1,starter=1,professional=100,enterprise=100`; tiers not named keep their default.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut limits = Self::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (tier, count) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not tier=count"))?;
            let index = Tier::ALL
                .iter()
                .position(|t| t.as_str() == tier.trim())
                .ok_or_else(|| {
                    format!("{tier:?} is not a tier: use free, starter, professional or enterprise")
                })?;
            limits.0[index] = count
                .trim()
                .parse()
                .map_err(|_| format!("{count:?} is not a count for {tier}"))?;
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_per_tier() {
        let limits: InboxLimits = "free=2, enterprise=500".parse().unwrap();
        assert_eq!(limits.limit(Tier::Free), 2);
        assert_eq!(limits.limit(Tier::Starter), 1);
        assert_eq!(limits.limit(Tier::Professional), 100);
        assert_eq!(limits.limit(Tier::Enterprise), 500);
        assert!("gold=3".parse::<InboxLimits>().is_err());
        assert!("free=-1".parse::<InboxLimits>().is_err());
    }

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(parse_display_name("f", "  Support ").unwrap(), "Support");
        assert_eq!(
            parse_display_name("f", &"é".repeat(100))
                .unwrap()
                .chars()
                .count(),
            100
        );
        for bad in ["", "   ", "a\nb", &"x".repeat(101)] {
            assert_eq!(
                parse_display_name("inbox.display_name", bad)
                    .unwrap_err()
                    .field,
                "inbox.display_name"
            );
        }
    }
}
