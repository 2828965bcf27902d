//! The channel of a team connection (seed 001): how it appears to contacts (sender name, from
//! address), who its incoming conversations go to, whether they become tickets, and, for a
//! hosted channel, the forwarding address the team forwards its mail to.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::directory::Tier;
use super::domain_name::DomainName;
use super::domain_settings::Choice;
use super::email::EmailAddress;
use super::{FieldViolation, Violations};

/// Which name contacts see on mail sent from the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SenderNameFormat {
    #[default]
    AgentName,
    AgentAndCompany,
    Company,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SenderName {
    pub format: SenderNameFormat,
    /// Required (1 to 100 characters) by the formats that show it.
    pub company_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationState {
    NotStarted,
    Pending,
    Verified,
}

/// The address on outgoing mail: the default one, or a custom one once verified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FromAddress {
    /// `None` is DEFAULT.
    pub custom: Option<CustomAddress>,
    /// The custom address verified last: on a LIVE channel it stays in use while a newer custom
    /// address waits for its verification.
    pub verified: Option<EmailAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomAddress {
    pub address: EmailAddress,
    pub state: VerificationState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingMode {
    #[default]
    Unassigned,
    SpecificUsersAndTeams,
    RoundRobin,
    ContactOwner,
}

impl RoutingMode {
    /// Whether the mode assigns among listed users and teams.
    pub fn lists_members(self) -> bool {
        matches!(
            self,
            RoutingMode::SpecificUsersAndTeams | RoutingMode::RoundRobin
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    pub mode: RoutingMode,
    /// Sorted, without duplicates; empty unless the mode lists members.
    pub user_ids: Vec<i64>,
    pub team_ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketRule {
    pub create_tickets: bool,
    pub pipeline_id: String,
    pub stage_id: String,
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    SetupInProgress,
    Live,
}

/// The channel settings of a team connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSettings {
    pub sender_name: SenderName,
    pub from_address: FromAddress,
    pub routing: Routing,
    pub tickets: TicketRule,
    /// For HOSTED channels, `{local part}@{account subdomain}.{hosted domain}`.
    pub forwarding_address: Option<String>,
    pub state: ChannelState,
    /// When mail last arrived through the channel.
    pub last_inbound_time: Option<SystemTime>,
}

impl ChannelSettings {
    /// A channel reached through its own provider: live at once, with the defaults.
    pub fn live() -> Self {
        Self {
            sender_name: SenderName::default(),
            from_address: FromAddress::default(),
            routing: Routing::default(),
            tickets: TicketRule::default(),
            forwarding_address: None,
            state: ChannelState::Live,
            last_inbound_time: None,
        }
    }

    /// A hosted channel just connected: in setup, forwarding to `forwarding_address`.
    pub fn hosted(forwarding_address: String) -> Self {
        Self {
            forwarding_address: Some(forwarding_address),
            state: ChannelState::SetupInProgress,
            ..Self::live()
        }
    }

    /// The address contacts see: the verified custom address, else (on a LIVE channel) the one
    /// verified before it, else the default (`default_address`: the connected or hosted address).
    pub fn effective_address(&self, default_address: &str) -> String {
        let from = &self.from_address;
        match &from.custom {
            Some(custom) if custom.state == VerificationState::Verified => {
                custom.address.as_str().to_owned()
            }
            Some(_) if self.state == ChannelState::Live => from
                .verified
                .as_ref()
                .map_or_else(|| default_address.to_owned(), |a| a.as_str().to_owned()),
            _ => default_address.to_owned(),
        }
    }
}

/// The operator's hosted mail domains (the seed's `hs-inbox.com` / `hubspot-inbox.com` split).
#[derive(Debug, Clone, Default)]
pub struct HostedDomains {
    /// For paid tiers (STARTER and higher).
    pub paid: Option<DomainName>,
    pub free: Option<DomainName>,
}

impl HostedDomains {
    pub fn for_tier(&self, tier: Tier) -> Option<&DomainName> {
        match tier {
            Tier::Free => self.free.as_ref(),
            _ => self.paid.as_ref(),
        }
    }
}

/// The writable settings as a caller sent them (enums still as numbers).
#[derive(Debug, Clone, Default)]
pub struct ChannelInput {
    pub sender_format: Choice<SenderNameFormat>,
    pub company_name: String,
    pub from_kind: Choice<FromKind>,
    pub custom_address: String,
    pub routing_mode: Choice<RoutingMode>,
    pub user_ids: Vec<i64>,
    pub team_ids: Vec<i64>,
    pub create_tickets: bool,
    pub pipeline_id: String,
    pub stage_id: String,
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromKind {
    Default,
    Custom,
}

/// The leaves of the writable settings, as mask paths; a group path names all its leaves.
const LEAVES: &[(&str, &str)] = &[
    ("sender_name", "format"),
    ("sender_name", "company_name"),
    ("from_address", "kind"),
    ("from_address", "custom_address"),
    ("routing", "mode"),
    ("routing", "user_ids"),
    ("routing", "team_ids"),
    ("tickets", "create_tickets"),
    ("tickets", "pipeline_id"),
    ("tickets", "stage_id"),
    ("tickets", "properties"),
];

/// The leaves an update mask names; empty or `*` is every writable leaf.
pub fn mask_leaves(
    field: &str,
    paths: &[String],
    groups: &[&str],
) -> Result<Vec<(&'static str, &'static str)>, FieldViolation> {
    let in_groups = |group: &str| groups.contains(&group);
    if paths.is_empty() || paths.iter().any(|path| path == "*") {
        return Ok(LEAVES
            .iter()
            .copied()
            .filter(|(group, _)| in_groups(group))
            .collect());
    }
    let mut leaves = Vec::new();
    for path in paths {
        let matched: Vec<_> = LEAVES
            .iter()
            .copied()
            .filter(|(group, leaf)| {
                in_groups(group) && (path == group || *path == format!("{group}.{leaf}"))
            })
            .collect();
        if matched.is_empty() {
            return Err(FieldViolation::new(
                field,
                format!(
                    "{path:?} is not a writable path: use {} or their sub-fields (forwarding_address changes with CustomizeForwardingAddress, state with CompleteSetup)",
                    groups.join(", ")
                ),
            ));
        }
        leaves.extend(matched);
    }
    Ok(leaves)
}

impl ChannelInput {
    /// The stored settings in input form, so that a mask can overlay the caller's values.
    pub fn from_settings(settings: &ChannelSettings) -> Self {
        let from = &settings.from_address;
        Self {
            sender_format: Choice::Value(settings.sender_name.format),
            company_name: settings.sender_name.company_name.clone(),
            from_kind: Choice::Value(match from.custom {
                Some(_) => FromKind::Custom,
                None => FromKind::Default,
            }),
            custom_address: from
                .custom
                .as_ref()
                .map(|custom| custom.address.as_str().to_owned())
                .unwrap_or_default(),
            routing_mode: Choice::Value(settings.routing.mode),
            user_ids: settings.routing.user_ids.clone(),
            team_ids: settings.routing.team_ids.clone(),
            create_tickets: settings.tickets.create_tickets,
            pipeline_id: settings.tickets.pipeline_id.clone(),
            stage_id: settings.tickets.stage_id.clone(),
            properties: settings.tickets.properties.clone(),
        }
    }

    /// Copies the named leaves from `input`.
    pub fn overlay(&mut self, input: ChannelInput, leaves: &[(&str, &str)]) {
        let mut input = input;
        for leaf in leaves {
            match *leaf {
                ("sender_name", "format") => self.sender_format = input.sender_format,
                ("sender_name", "company_name") => {
                    self.company_name = std::mem::take(&mut input.company_name)
                }
                ("from_address", "kind") => self.from_kind = input.from_kind,
                ("from_address", "custom_address") => {
                    self.custom_address = std::mem::take(&mut input.custom_address)
                }
                ("routing", "mode") => self.routing_mode = input.routing_mode,
                ("routing", "user_ids") => self.user_ids = std::mem::take(&mut input.user_ids),
                ("routing", "team_ids") => self.team_ids = std::mem::take(&mut input.team_ids),
                ("tickets", "create_tickets") => self.create_tickets = input.create_tickets,
                ("tickets", "pipeline_id") => {
                    self.pipeline_id = std::mem::take(&mut input.pipeline_id)
                }
                ("tickets", "stage_id") => self.stage_id = std::mem::take(&mut input.stage_id),
                ("tickets", "properties") => {
                    self.properties = std::mem::take(&mut input.properties)
                }
                _ => {}
            }
        }
    }

    /// Checks every field; violations are named under `prefix` (e.g. `channel_settings`).
    pub fn parse(self, prefix: &str) -> Result<ParsedChannel, Vec<FieldViolation>> {
        let mut violations = Violations::new();
        let field = |name: &str| format!("{prefix}.{name}");
        let sender_name = parse_sender_name(
            self.sender_format,
            &self.company_name,
            &field("sender_name"),
            &mut violations,
        );
        let custom = match self.from_kind {
            Choice::Value(FromKind::Custom) => violations.check(EmailAddress::parse(
                &field("from_address.custom_address"),
                &self.custom_address,
            )),
            Choice::Value(FromKind::Default) | Choice::Unspecified => None,
            Choice::Unknown(value) => {
                violations.add(
                    field("from_address.kind"),
                    format!("{value} is not a FromAddressKind"),
                );
                None
            }
        };
        let routing = parse_routing(
            self.routing_mode,
            self.user_ids,
            self.team_ids,
            &field("routing"),
            &mut violations,
        );
        let tickets = parse_tickets(
            TicketRule {
                create_tickets: self.create_tickets,
                pipeline_id: self.pipeline_id.trim().to_owned(),
                stage_id: self.stage_id.trim().to_owned(),
                properties: self.properties,
            },
            &field("tickets"),
            &mut violations,
        );
        violations.finish(|| ParsedChannel {
            sender_name,
            custom_address: custom,
            routing,
            tickets,
        })
    }
}

/// Checked writable settings; the caller decides what a new custom address's verification is.
#[derive(Debug, Clone)]
pub struct ParsedChannel {
    pub sender_name: SenderName,
    pub custom_address: Option<EmailAddress>,
    pub routing: Routing,
    pub tickets: TicketRule,
}

impl ParsedChannel {
    /// `current` with these settings; a custom address that changed starts unverified (unless
    /// it is the one verified before).
    pub fn apply_to(self, current: &ChannelSettings) -> ChannelSettings {
        let previous = &current.from_address;
        let custom = self.custom_address.map(|address| {
            let state = match (&previous.custom, &previous.verified) {
                (Some(old), _) if old.address == address => old.state,
                (_, Some(verified)) if *verified == address => VerificationState::Verified,
                _ => VerificationState::NotStarted,
            };
            CustomAddress { address, state }
        });
        ChannelSettings {
            sender_name: self.sender_name,
            from_address: FromAddress {
                custom,
                verified: previous.verified.clone(),
            },
            routing: self.routing,
            tickets: self.tickets,
            ..current.clone()
        }
    }
}

const MAX_COMPANY_NAME: usize = 100;

fn parse_sender_name(
    format: Choice<SenderNameFormat>,
    company_name: &str,
    field: &str,
    violations: &mut Violations,
) -> SenderName {
    let format = match format {
        Choice::Value(format) => format,
        Choice::Unspecified => SenderNameFormat::AgentName,
        Choice::Unknown(value) => {
            violations.add(
                format!("{field}.format"),
                format!("{value} is not a SenderNameFormat"),
            );
            SenderNameFormat::AgentName
        }
    };
    let company_name = company_name.trim().to_owned();
    let shown = format != SenderNameFormat::AgentName;
    let count = company_name.chars().count();
    if company_name.chars().any(char::is_control) {
        violations.add(
            format!("{field}.company_name"),
            "must not contain control characters (line breaks, tabs)",
        );
    } else if count > MAX_COMPANY_NAME || (shown && count == 0) {
        violations.add(
            format!("{field}.company_name"),
            format!(
                "must be 1 to {MAX_COMPANY_NAME} characters with format AGENT_AND_COMPANY or COMPANY (got {count})"
            ),
        );
    }
    SenderName {
        format,
        company_name,
    }
}

fn parse_routing(
    mode: Choice<RoutingMode>,
    user_ids: Vec<i64>,
    team_ids: Vec<i64>,
    field: &str,
    violations: &mut Violations,
) -> Routing {
    let mode = match mode {
        Choice::Value(mode) => mode,
        Choice::Unspecified => RoutingMode::Unassigned,
        Choice::Unknown(value) => {
            violations.add(
                format!("{field}.mode"),
                format!("{value} is not a RoutingMode"),
            );
            RoutingMode::Unassigned
        }
    };
    if !mode.lists_members() {
        return Routing {
            mode,
            ..Routing::default()
        };
    }
    let mut ids = |list: Vec<i64>, name: &str| {
        let mut kept = Vec::new();
        for (index, id) in list.into_iter().enumerate() {
            if let Some(id) = violations.check(super::violation::positive_id(
                &format!("{field}.{name}[{index}]"),
                id,
            )) {
                kept.push(id);
            }
        }
        kept.sort_unstable();
        kept.dedup();
        kept
    };
    let user_ids = ids(user_ids, "user_ids");
    let team_ids = ids(team_ids, "team_ids");
    if user_ids.is_empty() && team_ids.is_empty() {
        violations.add(
            format!("{field}.user_ids"),
            "at least one user or team is required with SPECIFIC_USERS_AND_TEAMS and ROUND_ROBIN",
        );
    }
    Routing {
        mode,
        user_ids,
        team_ids,
    }
}

const MAX_PROPERTIES: usize = 50;
const MAX_PROPERTY_NAME: usize = 100;
const MAX_PROPERTY_VALUE: usize = 1000;

fn parse_tickets(rule: TicketRule, field: &str, violations: &mut Violations) -> TicketRule {
    if rule.create_tickets {
        for (name, value) in [
            ("pipeline_id", &rule.pipeline_id),
            ("stage_id", &rule.stage_id),
        ] {
            if value.is_empty() || value.len() > MAX_PROPERTY_NAME {
                violations.add(
                    format!("{field}.{name}"),
                    format!("is required with create_tickets: 1 to {MAX_PROPERTY_NAME} characters"),
                );
            }
        }
    }
    if rule.properties.len() > MAX_PROPERTIES {
        violations.add(
            format!("{field}.properties"),
            format!(
                "has {} entries: at most {MAX_PROPERTIES}",
                rule.properties.len()
            ),
        );
    }
    for (name, value) in &rule.properties {
        let length = name.chars().count();
        if length == 0 || length > MAX_PROPERTY_NAME {
            violations.add(
                format!("{field}.properties"),
                format!("property names are 1 to {MAX_PROPERTY_NAME} characters, {name:?} is not"),
            );
        }
        if value.chars().count() > MAX_PROPERTY_VALUE {
            violations.add(
                format!("{field}.properties[{name:?}]"),
                format!("is longer than {MAX_PROPERTY_VALUE} characters"),
            );
        }
    }
    rule
}

/// The local part of a forwarding address (proto: 1 to 64 of `[a-z0-9._-]`, no leading,
/// trailing or doubled `.`).
pub fn parse_local_part(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let valid = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !raw.starts_with('.')
        && !raw.ends_with('.')
        && !raw.contains("..");
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(FieldViolation::new(
            field,
            format!(
                "{raw:?} is not a forwarding local part: 1 to 64 lower-case letters, digits, '.', '-' or '_', not starting or ending with '.', no '..'"
            ),
        ))
    }
}

/// A fresh local part for the team address `team`: its own local part, cleaned, and a random
/// suffix so that the address cannot be guessed (`support-7f3k9q`).
pub fn generated_local_part(team: &EmailAddress, suffix: &str) -> String {
    let local = team
        .as_str()
        .rsplit_once('@')
        .map_or("", |(local, _)| local);
    let cleaned: String = local
        .to_ascii_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            _ => '-',
        })
        .take(40)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        suffix.to_owned()
    } else {
        format!("{cleaned}-{suffix}")
    }
}

/// The display name contacts see, for an agent called `agent`.
pub fn display_name(sender: &SenderName, agent: &str) -> String {
    match sender.format {
        SenderNameFormat::AgentName => agent.to_owned(),
        SenderNameFormat::AgentAndCompany => format!("{agent} at {}", sender.company_name),
        SenderNameFormat::Company => sender.company_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: ChannelInput) -> Result<ParsedChannel, Vec<String>> {
        input
            .parse("channel_settings")
            .map_err(|violations| violations.into_iter().map(|v| v.field).collect())
    }

    #[test]
    fn company_name_is_required_where_shown() {
        let input = ChannelInput {
            sender_format: Choice::Value(SenderNameFormat::Company),
            ..Default::default()
        };
        assert_eq!(
            parse(input).unwrap_err(),
            ["channel_settings.sender_name.company_name"]
        );
        let input = ChannelInput {
            sender_format: Choice::Value(SenderNameFormat::AgentAndCompany),
            company_name: "Acme\r\nBcc: x@y.example".into(),
            ..Default::default()
        };
        assert!(parse(input).is_err(), "no header injection");
    }

    #[test]
    fn routing_lists_members_only_for_the_modes_that_use_them() {
        let input = ChannelInput {
            routing_mode: Choice::Value(RoutingMode::RoundRobin),
            user_ids: vec![3, 0, 3],
            ..Default::default()
        };
        assert_eq!(
            parse(input).unwrap_err(),
            ["channel_settings.routing.user_ids[1]"]
        );
        let parsed = parse(ChannelInput {
            routing_mode: Choice::Value(RoutingMode::RoundRobin),
            user_ids: vec![5, 3, 5],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(parsed.routing.user_ids, [3, 5]);
        let parsed = parse(ChannelInput {
            routing_mode: Choice::Value(RoutingMode::ContactOwner),
            user_ids: vec![5],
            ..Default::default()
        })
        .unwrap();
        assert!(parsed.routing.user_ids.is_empty());
    }

    #[test]
    fn tickets_need_pipeline_and_stage_and_at_most_fifty_properties() {
        let properties = (0..51).map(|i| (format!("p{i}"), "v".to_owned())).collect();
        let input = ChannelInput {
            create_tickets: true,
            properties,
            ..Default::default()
        };
        assert_eq!(
            parse(input).unwrap_err(),
            [
                "channel_settings.tickets.pipeline_id",
                "channel_settings.tickets.stage_id",
                "channel_settings.tickets.properties"
            ]
        );
    }

    #[test]
    fn mask_paths_name_groups_or_leaves() {
        let all = ["sender_name", "from_address", "routing", "tickets"];
        assert_eq!(mask_leaves("m", &[], &all).unwrap().len(), LEAVES.len());
        let leaves = mask_leaves("m", &["routing.user_ids".into()], &all).unwrap();
        assert_eq!(leaves, [("routing", "user_ids")]);
        assert!(mask_leaves("m", &["forwarding_address".into()], &all).is_err());
        assert!(mask_leaves("m", &["state".into()], &all).is_err());
        assert!(mask_leaves("m", &["routing".into()], &["sender_name"]).is_err());
    }

    #[test]
    fn local_parts() {
        for good in ["support", "a", "team.support_1-x"] {
            assert!(parse_local_part("local_part", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "Support",
            "a b",
            "a@b",
            &"x".repeat(65),
        ] {
            assert!(parse_local_part("local_part", bad).is_err(), "{bad}");
        }
        let team = EmailAddress::parse("e", "Sup.Port+x@acme.example").unwrap();
        let local = generated_local_part(&team, "7f3k9q");
        assert_eq!(local, "sup-port-x-7f3k9q");
        assert!(parse_local_part("l", &local).is_ok());
    }

    #[test]
    fn a_new_custom_address_keeps_the_verified_one_in_use_on_a_live_channel() {
        let verified = EmailAddress::parse("e", "help@acme.example").unwrap();
        let mut live = ChannelSettings::live();
        live.from_address = FromAddress {
            custom: Some(CustomAddress {
                address: verified.clone(),
                state: VerificationState::Verified,
            }),
            verified: Some(verified),
        };
        let changed = parse(ChannelInput {
            from_kind: Choice::Value(FromKind::Custom),
            custom_address: "new@acme.example".into(),
            ..Default::default()
        })
        .unwrap()
        .apply_to(&live);
        assert_eq!(
            changed.from_address.custom.as_ref().unwrap().state,
            VerificationState::NotStarted
        );
        assert_eq!(
            changed.effective_address("support@acme.example"),
            "help@acme.example"
        );
        let mut setup = changed.clone();
        setup.state = ChannelState::SetupInProgress;
        assert_eq!(
            setup.effective_address("support@acme.example"),
            "support@acme.example"
        );
    }
}
