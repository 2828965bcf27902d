//! The directory the platform pushes in: accounts, users and teams.

use std::collections::BTreeSet;

use super::domain_name::DomainName;
use super::email::EmailAddress;
use super::violation::positive_id;
use super::{FieldViolation, Violations};

/// A subscription tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Free,
    Starter,
    Professional,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 4] = [
        Tier::Free,
        Tier::Starter,
        Tier::Professional,
        Tier::Enterprise,
    ];

    /// The stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Professional => "professional",
            Tier::Enterprise => "enterprise",
        }
    }

    pub fn from_db(value: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|tier| tier.as_str() == value)
    }
}

/// A role a user holds in an account (plain users hold none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserRole {
    SuperAdmin,
    AccountAccess,
}

/// The id of a data center: `[a-z0-9-]{1,32}`, e.g. `na1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataCenterId(String);

impl DataCenterId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let valid = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldViolation::new(
                field,
                format!(
                    "{raw:?} is not a data center id: use 1 to 32 lower-case letters, digits or hyphens, e.g. \"na1\""
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A customer account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub tier: Tier,
    pub data_center: DataCenterId,
    pub subdomain: String,
    /// Lower-cased, sorted, without duplicates.
    pub sending_domains: Vec<String>,
}

/// A user of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub account_id: i64,
    pub id: i64,
    pub email: EmailAddress,
    /// Sorted, without duplicates.
    pub roles: Vec<UserRole>,
    pub deleted: bool,
}

/// A team of users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub account_id: i64,
    pub id: i64,
    pub name: String,
    /// Sorted, without duplicates.
    pub member_user_ids: Vec<i64>,
}

/// The raw fields of an account as a caller sent them; `parse` turns them into an [`Account`].
pub struct AccountInput<'a> {
    pub id: i64,
    pub tier: Option<Tier>,
    pub data_center: &'a str,
    pub subdomain: &'a str,
    pub sending_domains: &'a [String],
}

impl AccountInput<'_> {
    /// `prefix` is the path of the account message in the request (`account`).
    pub fn parse(
        self,
        prefix: &str,
        default_data_center: &DataCenterId,
    ) -> Result<Account, Vec<FieldViolation>> {
        let mut violations = Violations::new();
        let id = violations.check(positive_id(&format!("{prefix}.id"), self.id));
        if self.tier.is_none() {
            violations.add(
                format!("{prefix}.tier"),
                "is required: one of TIER_FREE, TIER_STARTER, TIER_PROFESSIONAL, TIER_ENTERPRISE",
            );
        }
        let data_center = if self.data_center.is_empty() {
            Some(default_data_center.clone())
        } else {
            violations.check(DataCenterId::parse(
                &format!("{prefix}.data_center"),
                self.data_center,
            ))
        };
        let subdomain = self.subdomain.trim().to_ascii_lowercase();
        if !subdomain.is_empty() && !is_dns_label(&subdomain) {
            violations.add(
                format!("{prefix}.subdomain"),
                format!(
                    "{:?} is not a valid subdomain: use 1 to 63 letters, digits or inner hyphens",
                    self.subdomain
                ),
            );
        }
        let mut sending_domains = BTreeSet::new();
        for (index, raw) in self.sending_domains.iter().enumerate() {
            if let Some(domain) = violations.check(DomainName::parse(
                &format!("{prefix}.sending_domains[{index}]"),
                raw,
            )) {
                sending_domains.insert(domain.as_str().to_owned());
            }
        }
        violations.finish(|| Account {
            id: id.unwrap_or_default(),
            tier: self.tier.unwrap_or(Tier::Free),
            data_center: data_center.unwrap_or_else(|| default_data_center.clone()),
            subdomain,
            sending_domains: sending_domains.into_iter().collect(),
        })
    }
}

/// The raw fields of a user as a caller sent them.
pub struct UserInput<'a> {
    pub account_id: i64,
    pub id: i64,
    pub email: &'a str,
    /// `None` for a role value the caller sent that is not a role (e.g. ROLE_UNSPECIFIED).
    pub roles: Vec<Option<UserRole>>,
}

impl UserInput<'_> {
    pub fn parse(self, prefix: &str) -> Result<User, Vec<FieldViolation>> {
        let mut violations = Violations::new();
        let account_id = violations.check(positive_id(
            &format!("{prefix}.account_id"),
            self.account_id,
        ));
        let id = violations.check(positive_id(&format!("{prefix}.id"), self.id));
        let email = violations.check(EmailAddress::parse(&format!("{prefix}.email"), self.email));
        let mut roles = BTreeSet::new();
        for (index, role) in self.roles.into_iter().enumerate() {
            match role {
                Some(role) => {
                    roles.insert(role);
                }
                None => violations.add(
                    format!("{prefix}.roles[{index}]"),
                    "is not a role: use ROLE_SUPER_ADMIN or ROLE_ACCOUNT_ACCESS (plain users have none)",
                ),
            }
        }
        violations.finish(|| User {
            account_id: account_id.unwrap_or_default(),
            id: id.unwrap_or_default(),
            email: email.expect("checked above"),
            roles: roles.into_iter().collect(),
            deleted: false,
        })
    }
}

/// The raw fields of a team as a caller sent them.
pub struct TeamInput<'a> {
    pub account_id: i64,
    pub id: i64,
    pub name: &'a str,
    pub member_user_ids: &'a [i64],
}

/// Longest team name accepted.
const MAX_TEAM_NAME: usize = 256;

impl TeamInput<'_> {
    pub fn parse(self, prefix: &str) -> Result<Team, Vec<FieldViolation>> {
        let mut violations = Violations::new();
        let account_id = violations.check(positive_id(
            &format!("{prefix}.account_id"),
            self.account_id,
        ));
        let id = violations.check(positive_id(&format!("{prefix}.id"), self.id));
        let name = self.name.trim();
        if name.is_empty() {
            violations.add(format!("{prefix}.name"), "is required");
        } else if name.chars().count() > MAX_TEAM_NAME {
            violations.add(
                format!("{prefix}.name"),
                format!("is longer than {MAX_TEAM_NAME} characters"),
            );
        }
        let mut members = BTreeSet::new();
        for (index, &user_id) in self.member_user_ids.iter().enumerate() {
            if let Some(user_id) = violations.check(positive_id(
                &format!("{prefix}.member_user_ids[{index}]"),
                user_id,
            )) {
                members.insert(user_id);
            }
        }
        violations.finish(|| Team {
            account_id: account_id.unwrap_or_default(),
            id: id.unwrap_or_default(),
            name: name.to_owned(),
            member_user_ids: members.into_iter().collect(),
        })
    }
}

/// A DNS label: 1 to 63 ASCII letters, digits or hyphens, not starting or ending with a hyphen.
pub fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn na1() -> DataCenterId {
        DataCenterId::parse("dc", "na1").unwrap()
    }

    #[test]
    fn data_center_ids() {
        for good in ["na1", "eu-1", "a", &"x".repeat(32)] {
            assert!(DataCenterId::parse("dc", good).is_ok(), "{good}");
        }
        for bad in ["", "NA1", "na_1", "na 1", &"x".repeat(33)] {
            assert!(DataCenterId::parse("dc", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_defaults_and_normalises() {
        let domains = vec![
            "B.example.".to_owned(),
            "a.example".to_owned(),
            "b.example".to_owned(),
        ];
        let account = AccountInput {
            id: 3,
            tier: Some(Tier::Starter),
            data_center: "",
            subdomain: "Acme",
            sending_domains: &domains,
        }
        .parse("account", &na1())
        .unwrap();
        assert_eq!(account.data_center.as_str(), "na1");
        assert_eq!(account.subdomain, "acme");
        assert_eq!(account.sending_domains, ["a.example", "b.example"]);
    }

    #[test]
    fn account_reports_every_violation() {
        let domains = vec!["ok.example".to_owned(), "nope".to_owned()];
        let fields: Vec<String> = AccountInput {
            id: 0,
            tier: None,
            data_center: "NA 1",
            subdomain: "-x",
            sending_domains: &domains,
        }
        .parse("account", &na1())
        .unwrap_err()
        .into_iter()
        .map(|v| v.field)
        .collect();
        assert_eq!(
            fields,
            [
                "account.id",
                "account.tier",
                "account.data_center",
                "account.subdomain",
                "account.sending_domains[1]"
            ]
        );
    }

    #[test]
    fn team_members_are_merged_and_checked() {
        let team = TeamInput {
            account_id: 1,
            id: 2,
            name: " Support ",
            member_user_ids: &[3, 1, 3],
        }
        .parse("team")
        .unwrap();
        assert_eq!(team.member_user_ids, [1, 3]);
        assert_eq!(team.name, "Support");
        let err = TeamInput {
            account_id: 1,
            id: 2,
            name: "x",
            member_user_ids: &[1, -4],
        }
        .parse("team")
        .unwrap_err();
        assert_eq!(err[0].field, "team.member_user_ids[1]");
    }
}
