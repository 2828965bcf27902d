//! Connected mailboxes (seed articles 004 and 002): who holds an address, how the service reaches
//! it, what it is used for, and where it is in its life.

use std::time::SystemTime;

use super::channel::ChannelSettings;
use super::domain_settings::{Choice, ExchangeScope, ServerSettings, etag_of};
use super::email::EmailAddress;
use super::{FieldViolation, Violations};

/// Whose address a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionKind {
    Personal,
    Team,
}

/// How the service reaches a mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Gmail,
    Office365,
    Imap,
    Exchange,
    Hosted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    Active,
    Deactivated,
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    CredentialsExpired,
    UserDeactivated,
    ProviderMigration,
    AccessRevoked,
    ServerUnreachable,
}

/// A tool a connected address is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Usage {
    CrmEmail,
    Meetings,
    Calendar,
    Sequences,
    Conversations,
}

/// Stable names for the database, one table per enum so each maps both ways from one list.
macro_rules! db_names {
    ($ty:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$(<$ty>::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $name),*
                }
            }

            pub fn from_db(value: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|item| item.as_str() == value)
            }
        }
    };
}

db_names!(ConnectionKind { Personal => "personal", Team => "team" });
db_names!(Provider {
    Gmail => "gmail",
    Office365 => "office365",
    Imap => "imap",
    Exchange => "exchange",
    Hosted => "hosted",
});
db_names!(ConnectionState {
    Active => "active",
    Deactivated => "deactivated",
    Disconnected => "disconnected",
});
db_names!(DisconnectReason {
    CredentialsExpired => "credentials_expired",
    UserDeactivated => "user_deactivated",
    ProviderMigration => "provider_migration",
    AccessRevoked => "access_revoked",
    ServerUnreachable => "server_unreachable",
});
db_names!(Usage {
    CrmEmail => "crm_email",
    Meetings => "meetings",
    Calendar => "calendar",
    Sequences => "sequences",
    Conversations => "conversations",
});

impl Provider {
    /// Whether the mailbox is reached with an OAuth grant (else a password, or nothing for HOSTED).
    pub fn uses_oauth(self) -> bool {
        matches!(self, Provider::Gmail | Provider::Office365)
    }

    /// Whether the mailbox has servers the service logs in to.
    pub fn has_servers(self) -> bool {
        matches!(self, Provider::Imap | Provider::Exchange)
    }

    /// How people call it.
    pub fn display_name(self) -> &'static str {
        match self {
            Provider::Gmail => "Gmail",
            Provider::Office365 => "Office 365",
            Provider::Imap => "IMAP",
            Provider::Exchange => "Exchange",
            Provider::Hosted => "hosted forwarding",
        }
    }
}

impl Usage {
    /// The product rule (seed 004): personal addresses serve the one-to-one tools, team addresses
    /// only the conversations inbox, and never meetings.
    pub fn allowed_for(self, kind: ConnectionKind) -> bool {
        match kind {
            ConnectionKind::Personal => self != Usage::Conversations,
            ConnectionKind::Team => self == Usage::Conversations,
        }
    }
}

/// A usage list as sent: each entry checked against the kind; empty means the kind's default
/// unless `required`. Violations name `{field}[i]`.
pub fn parse_usages(
    field: &str,
    kind: ConnectionKind,
    usages: &[Choice<Usage>],
    default: &[Usage],
    required: bool,
) -> Result<Vec<Usage>, Vec<FieldViolation>> {
    let mut violations = Violations::new();
    let mut parsed = Vec::new();
    for (index, usage) in usages.iter().enumerate() {
        let path = format!("{field}[{index}]");
        match usage {
            Choice::Value(usage) if usage.allowed_for(kind) => parsed.push(*usage),
            Choice::Value(usage) => violations.add(path, not_allowed(*usage, kind)),
            Choice::Unspecified | Choice::Unknown(_) => violations.add(
                path,
                "is not a usage: use USAGE_CRM_EMAIL, USAGE_MEETINGS, USAGE_CALENDAR or USAGE_SEQUENCES (personal), USAGE_CONVERSATIONS (team)",
            ),
        }
    }
    if usages.is_empty() && required {
        violations.add(field, "must name at least one usage");
    }
    violations.finish(|| {
        if parsed.is_empty() {
            parsed = default.to_vec();
        }
        parsed.sort();
        parsed.dedup();
        parsed
    })
}

/// The usages an Exchange preset's scopes pre-fill on a personal connection (README, "Inbox
/// connections"): EMAIL gives CRM email and sequences, CALENDAR gives calendar sync and meetings.
pub fn usages_for_scopes(scopes: &[ExchangeScope]) -> Vec<Usage> {
    let mut usages: Vec<Usage> = scopes
        .iter()
        .flat_map(|scope| match scope {
            ExchangeScope::Email => [Usage::CrmEmail, Usage::Sequences],
            ExchangeScope::Calendar => [Usage::Calendar, Usage::Meetings],
        })
        .collect();
    usages.sort();
    usages.dedup();
    usages
}

fn not_allowed(usage: Usage, kind: ConnectionKind) -> String {
    match (kind, usage) {
        (ConnectionKind::Team, Usage::Meetings) => {
            "USAGE_MEETINGS is not allowed on a team address: the meetings tool needs a personal address (connect one with ConnectPersonalInbox)".to_owned()
        }
        (ConnectionKind::Team, _) => {
            "a team address is used for USAGE_CONVERSATIONS only; connect a personal address for the one-to-one tools".to_owned()
        }
        (ConnectionKind::Personal, _) => {
            "USAGE_CONVERSATIONS belongs to team addresses (ConnectTeamEmail); a personal address cannot be a channel of an inbox".to_owned()
        }
    }
}

/// Where a connection's servers came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSource {
    /// The caller sent them.
    Request,
    /// Copied from the domain's admin preset, `domainSettings/{domain}`.
    AdminPreset(String),
    /// A well-known provider's documented servers.
    BuiltinProvider(String),
}

/// The servers of an IMAP or Exchange connection, copied at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionServers {
    pub settings: ServerSettings,
    pub source: ServerSource,
}

/// What the connection monitor last found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub last_check_time: Option<SystemTime>,
    pub last_success_time: Option<SystemTime>,
    pub consecutive_failures: i32,
    /// When the current run of failures began.
    pub first_failure_time: Option<SystemTime>,
    pub last_error: String,
}

/// What one monitor check of a mailbox found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Passed,
    /// The server refused the login (the password changed), or the provider refused the grant.
    Refused {
        revoked: bool,
        error: String,
    },
    /// The server could not be reached or misbehaved: maybe a short outage.
    Failed(String),
}

/// When failures that may be an outage disconnect: after `threshold` in a row spanning at least
/// `min_span`, so that a short outage raises no false alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    pub threshold: i32,
    pub min_span: std::time::Duration,
}

impl Health {
    /// The health after a check at `now`, and the reason to disconnect, if it is time.
    pub fn after(
        &self,
        result: &CheckResult,
        now: SystemTime,
        policy: FailurePolicy,
    ) -> (Health, Option<DisconnectReason>) {
        let checked = Health {
            last_check_time: Some(now),
            ..self.clone()
        };
        match result {
            CheckResult::Passed => (
                Health {
                    last_success_time: Some(now),
                    consecutive_failures: 0,
                    first_failure_time: None,
                    last_error: String::new(),
                    ..checked
                },
                None,
            ),
            CheckResult::Refused { revoked, error } => (
                Health {
                    consecutive_failures: self.consecutive_failures.saturating_add(1),
                    first_failure_time: self.first_failure_time.or(Some(now)),
                    last_error: error.clone(),
                    ..checked
                },
                Some(if *revoked {
                    DisconnectReason::AccessRevoked
                } else {
                    DisconnectReason::CredentialsExpired
                }),
            ),
            CheckResult::Failed(error) => {
                let first = self.first_failure_time.unwrap_or(now);
                let failures = self.consecutive_failures.saturating_add(1);
                let span = now.duration_since(first).unwrap_or_default();
                let give_up = failures >= policy.threshold && span >= policy.min_span;
                (
                    Health {
                        consecutive_failures: failures,
                        first_failure_time: Some(first),
                        last_error: error.clone(),
                        ..checked
                    },
                    give_up.then_some(DisconnectReason::ServerUnreachable),
                )
            }
        }
    }
}

/// A connected address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: i64,
    pub account_id: i64,
    pub email: EmailAddress,
    pub kind: ConnectionKind,
    pub provider: Provider,
    /// The owner (personal) or the user who connected it (team).
    pub owner_user_id: i64,
    /// For team connections, the inbox it is a channel of.
    pub inbox_id: Option<i64>,
    pub state: ConnectionState,
    pub disconnect_reason: Option<DisconnectReason>,
    /// Sorted, without duplicates.
    pub usages: Vec<Usage>,
    pub servers: Option<ConnectionServers>,
    /// Whether the connection counts as holding its address; only a connection replaced by a
    /// provider migration stops holding it before it is deleted.
    pub holds_address: bool,
    pub version: i64,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub state_change_time: SystemTime,
    pub health: Health,
    /// The channel of a team connection; `None` for personal connections.
    pub channel: Option<ChannelSettings>,
}

const CONNECTION_PREFIX: &str = "connections/";
const INBOX_PREFIX: &str = "inboxes/";

impl Connection {
    pub fn name(&self) -> String {
        connection_name(self.id)
    }

    pub fn etag(&self) -> String {
        etag_of(self.version)
    }

    /// Whether a user may manage it: the owner of a personal connection, the user who connected
    /// a team one (admins may manage every connection; the caller checks that).
    pub fn managed_by(&self, user_id: Option<i64>) -> bool {
        user_id == Some(self.owner_user_id)
    }
}

pub fn connection_name(id: i64) -> String {
    format!("{CONNECTION_PREFIX}{id}")
}

pub fn inbox_name(id: i64) -> String {
    format!("{INBOX_PREFIX}{id}")
}

fn parse_name(field: &str, name: &str, prefix: &str, example: &str) -> Result<i64, FieldViolation> {
    name.strip_prefix(prefix)
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0 && name == format!("{prefix}{id}"))
        .ok_or_else(|| {
            FieldViolation::new(
                field,
                format!("{name:?} is not a resource name of this kind: use \"{prefix}{{id}}\", e.g. \"{example}\""),
            )
        })
}

/// `connections/{id}` → the id.
pub fn parse_connection_name(field: &str, name: &str) -> Result<i64, FieldViolation> {
    parse_name(field, name, CONNECTION_PREFIX, "connections/42")
}

/// `inboxes/{id}` → the id.
pub fn parse_inbox_name(field: &str, name: &str) -> Result<i64, FieldViolation> {
    parse_name(field, name, INBOX_PREFIX, "inboxes/42")
}

/// The key under which an address is connected at most once per account: the whole address
/// lower-cased (mail systems treat local parts case-insensitively in practice, and one mailbox
/// must not be connected twice by changing the case).
pub fn address_key(email: &EmailAddress) -> String {
    email.as_str().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meetings_is_refused_on_a_team_address_with_its_index() {
        let err = parse_usages(
            "usages",
            ConnectionKind::Team,
            &[
                Choice::Value(Usage::Conversations),
                Choice::Value(Usage::Meetings),
            ],
            &[Usage::Conversations],
            false,
        )
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].field, "usages[1]");
        assert!(err[0].description.contains("meetings"), "{err:?}");
    }

    #[test]
    fn personal_usages_default_sort_and_dedup() {
        let parsed = parse_usages(
            "usages",
            ConnectionKind::Personal,
            &[],
            &[Usage::CrmEmail],
            false,
        )
        .unwrap();
        assert_eq!(parsed, vec![Usage::CrmEmail]);
        let parsed = parse_usages(
            "usages",
            ConnectionKind::Personal,
            &[
                Choice::Value(Usage::Sequences),
                Choice::Value(Usage::CrmEmail),
                Choice::Value(Usage::Sequences),
            ],
            &[Usage::CrmEmail],
            false,
        )
        .unwrap();
        assert_eq!(parsed, vec![Usage::CrmEmail, Usage::Sequences]);
        let err = parse_usages(
            "usages",
            ConnectionKind::Personal,
            &[Choice::Value(Usage::Conversations), Choice::Unspecified],
            &[],
            true,
        )
        .unwrap_err();
        let fields: Vec<_> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["usages[0]", "usages[1]"]);
        assert!(parse_usages("usages", ConnectionKind::Personal, &[], &[], true).is_err());
    }

    #[test]
    fn outages_disconnect_only_after_the_threshold_and_the_span() {
        let policy = FailurePolicy {
            threshold: 3,
            min_span: std::time::Duration::from_secs(1800),
        };
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let minutes = |m: u64| start + std::time::Duration::from_secs(60 * m);
        let down = CheckResult::Failed("connection refused".into());
        let (health, reason) = Health::default().after(&down, minutes(0), policy);
        assert_eq!((health.consecutive_failures, reason), (1, None));
        let (health, reason) = health.after(&down, minutes(1), policy);
        let (health, reason2) = health.after(&down, minutes(2), policy);
        assert_eq!(
            (reason, reason2),
            (None, None),
            "three failures within minutes"
        );
        let (healed, reason) = health.after(&CheckResult::Passed, minutes(3), policy);
        assert_eq!(reason, None);
        assert_eq!(healed.consecutive_failures, 0);
        assert_eq!(healed.first_failure_time, None);
        let (health, _) = healed.after(&down, minutes(10), policy);
        let (health, _) = health.after(&down, minutes(25), policy);
        let (health, reason) = health.after(&down, minutes(40), policy);
        assert_eq!(reason, Some(DisconnectReason::ServerUnreachable));
        assert_eq!(health.consecutive_failures, 3);
        assert_eq!(health.last_error, "connection refused");
        let refused = CheckResult::Refused {
            revoked: false,
            error: "authentication failed".into(),
        };
        let (_, reason) = Health::default().after(&refused, minutes(0), policy);
        assert_eq!(
            reason,
            Some(DisconnectReason::CredentialsExpired),
            "at once"
        );
    }

    #[test]
    fn exchange_scopes_prefill_usages() {
        assert_eq!(
            usages_for_scopes(&[ExchangeScope::Calendar]),
            [Usage::Meetings, Usage::Calendar]
        );
        assert_eq!(
            usages_for_scopes(&[ExchangeScope::Email, ExchangeScope::Calendar]),
            [
                Usage::CrmEmail,
                Usage::Meetings,
                Usage::Calendar,
                Usage::Sequences
            ]
        );
    }

    #[test]
    fn names_round_trip_and_refuse_other_shapes() {
        assert_eq!(parse_connection_name("name", "connections/42").unwrap(), 42);
        assert_eq!(parse_inbox_name("inbox", &inbox_name(7)).unwrap(), 7);
        for bad in [
            "",
            "connections/",
            "connections/-1",
            "connections/0",
            "connections/042",
            "connections/4 2",
            "inboxes/42",
            "connections/42/x",
        ] {
            assert!(parse_connection_name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn db_names_round_trip() {
        for usage in Usage::ALL {
            assert_eq!(Usage::from_db(usage.as_str()), Some(*usage));
        }
        for reason in DisconnectReason::ALL {
            assert_eq!(DisconnectReason::from_db(reason.as_str()), Some(*reason));
        }
        assert_eq!(Provider::from_db("pop3"), None);
    }
}
