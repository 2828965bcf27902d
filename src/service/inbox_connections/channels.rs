//! Channel settings of team connections and the setup of hosted channels (seed 001): sender
//! name and from address, routing and tickets, the forwarding address, and completing setup.

use std::collections::BTreeMap;

use lettre::message::header::{From as FromHeader, Headers};
use lettre::message::{Mailbox, Mailboxes};

use crate::domain::channel::{
    ChannelInput, ChannelSettings, ChannelState, Routing, VerificationState, display_name,
    generated_local_part, mask_leaves, parse_local_part,
};
use crate::domain::connection::{Connection, ConnectionKind, Provider};
use crate::domain::email::EmailAddress;
use crate::domain::principal::Principal;
use crate::service::probing::Prober;
use crate::service::{ServiceError, StoreError};

use super::manage::{name_and_version, outcome};
use super::store::{ConnectionChange, InboxConnectionStore};
use super::{InboxConnectionService, SettingsResolver, TokenRefresher, stale};

/// The groups UpdateChannelSettings writes, and the ones PreviewSender reads from a draft.
const WRITABLE: &[&str] = &["sender_name", "from_address", "routing", "tickets"];
const SENDER: &[&str] = &["sender_name", "from_address"];

/// What a contact sees as the sender of mail from a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderPreview {
    pub display_name: String,
    pub email_address: String,
    /// The `From` header value as sent: RFC 5322 quoting, RFC 2047 encoding (unfolded).
    pub from_header: String,
}

fn precondition(reason: &'static str, message: String) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason,
        message,
        metadata: BTreeMap::new(),
    }
}

fn not_team(connection: &Connection) -> ServiceError {
    precondition(
        "NOT_A_TEAM_CONNECTION",
        format!(
            "{} is a personal connection: only team connections have channel settings",
            connection.name()
        ),
    )
}

fn not_hosted(connection: &Connection) -> ServiceError {
    precondition(
        "NOT_A_HOSTED_CHANNEL",
        format!(
            "{} is reached through {}: only PROVIDER_HOSTED channels have a forwarding address and a setup to complete",
            connection.name(),
            connection.provider.display_name()
        ),
    )
}

/// The channel of a team connection.
pub(super) fn channel_of(connection: &Connection) -> Result<&ChannelSettings, ServiceError> {
    connection
        .channel
        .as_ref()
        .filter(|_| connection.kind == ConnectionKind::Team)
        .ok_or_else(|| not_team(connection))
}

/// The address contacts see by default: the hosted address, or the connected one.
pub fn default_address(connection: &Connection) -> String {
    connection
        .channel
        .as_ref()
        .and_then(|channel| channel.forwarding_address.clone())
        .unwrap_or_else(|| connection.email.as_str().to_owned())
}

/// The `From` header value lettre writes for `name <address>`, unfolded.
fn from_header(name: &str, address: &str) -> Result<String, ServiceError> {
    let address = address
        .parse()
        .map_err(|_| ServiceError::Internal(format!("{address} is not an address lettre takes")))?;
    let mut headers = Headers::new();
    headers.set(FromHeader::from(Mailboxes::from(Mailbox::new(
        Some(name.to_owned()),
        address,
    ))));
    let line = headers.to_string();
    let value = line
        .strip_prefix("From: ")
        .unwrap_or(&line)
        .trim_end_matches("\r\n");
    // RFC 5322 unfolding: a line break followed by white space is that white space.
    Ok(value.replace("\r\n", ""))
}

impl<S, P, O, R> InboxConnectionService<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    /// The channel a new team connection starts with: live for mailbox providers; for HOSTED,
    /// in setup with a new forwarding address on the account's hosted domain for its tier.
    pub(super) async fn new_channel(
        &self,
        account_id: i64,
        provider: Provider,
        team_address: &EmailAddress,
    ) -> Result<ChannelSettings, ServiceError> {
        if provider != Provider::Hosted {
            return Ok(ChannelSettings::live());
        }
        let account = self.store.directory_account(account_id).await?;
        let tier = account.as_ref().map(|account| account.tier);
        let Some(domain) = tier.and_then(|tier| self.hosted.for_tier(tier)) else {
            return Err(precondition(
                "HOSTED_MAIL_NOT_CONFIGURED",
                "this server has no hosted mail domain for the account's tier: the operator sets MAILCONNECT_HOSTED_DOMAIN (paid tiers) and MAILCONNECT_HOSTED_DOMAIN_FREE (free tier)".to_owned(),
            ));
        };
        let subdomain = account
            .map(|account| account.subdomain)
            .filter(|subdomain| !subdomain.is_empty())
            .ok_or_else(|| {
                precondition(
                    "ACCOUNT_SUBDOMAIN_REQUIRED",
                    "the account has no subdomain, which hosted forwarding addresses are made of: the platform sets it with DirectoryService/UpsertAccount".to_owned(),
                )
            })?;
        let suffix: String = (0..6)
            .map(|_| {
                let n = rand::random_range(0..36u32);
                char::from_digit(n, 36).expect("a base-36 digit")
            })
            .collect();
        Ok(ChannelSettings::hosted(format!(
            "{}@{subdomain}.{}",
            generated_local_part(team_address, &suffix),
            domain.as_str()
        )))
    }

    /// Users and teams of a routing exist in the directory (deleted users are refused).
    pub(super) async fn check_routing(
        &self,
        account_id: i64,
        routing: &Routing,
    ) -> Result<(), ServiceError> {
        if routing.user_ids.is_empty() && routing.team_ids.is_empty() {
            return Ok(());
        }
        let directory = self
            .store
            .routing_directory(
                account_id,
                routing.user_ids.clone(),
                routing.team_ids.clone(),
            )
            .await?;
        let mut violations = crate::domain::Violations::new();
        for id in &routing.user_ids {
            match directory.users.iter().find(|user| user.id == *id) {
                Some(user) if !user.deleted => {}
                Some(_) => violations.add(
                    "channel_settings.routing.user_ids",
                    format!("user {id} was deleted in the directory"),
                ),
                None => violations.add(
                    "channel_settings.routing.user_ids",
                    format!("user {id} is not a user of the account"),
                ),
            }
        }
        for id in &routing.team_ids {
            if !directory.teams.iter().any(|team| team.id == *id) {
                violations.add(
                    "channel_settings.routing.team_ids",
                    format!("team {id} is not a team of the account"),
                );
            }
        }
        Ok(violations.finish(|| ())?)
    }

    pub async fn update_channel_settings(
        &self,
        principal: &Principal,
        name: &str,
        input: ChannelInput,
        mask: &[String],
        etag: &str,
    ) -> Result<Connection, ServiceError> {
        let (id, expected) = name_and_version(name, etag)?;
        let leaves = mask_leaves("update_mask", mask, WRITABLE)?;
        let connection = self
            .managed_connection(principal, id, "UpdateChannelSettings")
            .await?;
        let current = channel_of(&connection)?;
        if expected.is_some_and(|version| version != connection.version) {
            return Err(stale(name));
        }
        let mut draft = ChannelInput::from_settings(current);
        draft.overlay(input, &leaves);
        let parsed = draft.parse("channel_settings")?;
        self.check_routing(connection.account_id, &parsed.routing)
            .await?;
        let channel = parsed.apply_to(current);
        self.change(
            &connection,
            Some(connection.version),
            ConnectionChange::SetChannel(channel),
            name,
        )
        .await
    }

    pub async fn preview_sender(
        &self,
        principal: &Principal,
        name: &str,
        draft: Option<ChannelInput>,
        agent_name: &str,
    ) -> Result<SenderPreview, ServiceError> {
        let id = crate::domain::connection::parse_connection_name("name", name)?;
        let connection = self.visible_connection(principal, id).await?;
        let current = channel_of(&connection)?;
        let mut settings = ChannelInput::from_settings(current);
        if let Some(draft) = draft {
            settings.overlay(draft, &mask_leaves("channel_settings", &[], SENDER)?);
        }
        let parsed = settings.parse("channel_settings")?;
        let agent = match agent_name.trim() {
            "" => "Agent Name",
            agent if agent.chars().any(char::is_control) || agent.chars().count() > 100 => {
                return Err(ServiceError::invalid(
                    "agent_name",
                    "must be at most 100 characters without control characters",
                ));
            }
            agent => agent,
        };
        let display = display_name(&parsed.sender_name, agent);
        // The draft's custom address is what contacts will see once it is verified.
        let email_address = match &parsed.custom_address {
            Some(address) => address.as_str().to_owned(),
            None => default_address(&connection),
        };
        Ok(SenderPreview {
            from_header: from_header(&display, &email_address)?,
            display_name: display,
            email_address,
        })
    }

    pub async fn customize_forwarding_address(
        &self,
        principal: &Principal,
        name: &str,
        local_part: &str,
        etag: &str,
    ) -> Result<Connection, ServiceError> {
        let (id, expected) = name_and_version(name, etag)?;
        let local_part = parse_local_part("local_part", local_part).map_err(|violation| {
            ServiceError::InvalidValue {
                reason: "INVALID_LOCAL_PART",
                violations: vec![violation],
            }
        })?;
        let connection = self
            .managed_connection(principal, id, "CustomizeForwardingAddress")
            .await?;
        let current = hosted_channel(&connection)?;
        if current.state == ChannelState::Live {
            return Err(locked(&connection));
        }
        if expected.is_some_and(|version| version != connection.version) {
            return Err(stale(name));
        }
        let domain = current
            .forwarding_address
            .as_deref()
            .and_then(|address| address.rsplit_once('@'))
            .map(|(_, domain)| domain.to_owned())
            .ok_or_else(|| ServiceError::Internal("a hosted channel without an address".into()))?;
        let address = format!("{local_part}@{domain}");
        if current.forwarding_address.as_deref() == Some(address.as_str()) {
            return Ok(connection);
        }
        let channel = ChannelSettings {
            forwarding_address: Some(address.clone()),
            ..current.clone()
        };
        let result = self
            .store
            .change_connection(
                connection.account_id,
                connection.id,
                Some(connection.version),
                ConnectionChange::SetChannel(channel),
                self.clock.now(),
            )
            .await;
        match result {
            Err(StoreError::Conflict(_)) => Err(ServiceError::AlreadyExists {
                reason: "FORWARDING_ADDRESS_TAKEN",
                message: format!(
                    "{address} is already the forwarding address of another channel: choose another local part"
                ),
                metadata: BTreeMap::from([("forwarding_address".to_owned(), address)]),
            }),
            other => outcome(other?, id, name),
        }
    }

    pub async fn complete_setup(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
    ) -> Result<Connection, ServiceError> {
        let (id, expected) = name_and_version(name, etag)?;
        let connection = self
            .managed_connection(principal, id, "CompleteSetup")
            .await?;
        let current = hosted_channel(&connection)?;
        if expected.is_some_and(|version| version != connection.version) {
            return Err(stale(name));
        }
        if current.state == ChannelState::Live {
            return Ok(connection);
        }
        if let Some(custom) = &current.from_address.custom
            && custom.state != VerificationState::Verified
        {
            return Err(precondition(
                "FROM_ADDRESS_NOT_VERIFIED",
                format!(
                    "the custom from address {} is not verified: verify it (StartAddressVerification, VerifyAddress) or use the default address",
                    custom.address
                ),
            ));
        }
        let channel = ChannelSettings {
            state: ChannelState::Live,
            ..current.clone()
        };
        self.change(
            &connection,
            Some(connection.version),
            ConnectionChange::SetChannel(channel),
            name,
        )
        .await
    }
}

/// The channel of a HOSTED team connection.
fn hosted_channel(connection: &Connection) -> Result<&ChannelSettings, ServiceError> {
    let channel = channel_of(connection)?;
    if connection.provider == Provider::Hosted {
        Ok(channel)
    } else {
        Err(not_hosted(connection))
    }
}

fn locked(connection: &Connection) -> ServiceError {
    precondition(
        "FORWARDING_ADDRESS_LOCKED",
        format!(
            "the setup of {} is complete: its forwarding address is fixed for good",
            connection.name()
        ),
    )
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::from_header;

    /// The display name a mail client shows for a header value of encoded words.
    fn decoded_name(value: &str) -> String {
        let (words, address) = value.rsplit_once(' ').unwrap();
        assert_eq!(address, "<help@acme.example>");
        let bytes: Vec<u8> = words
            .split(' ')
            .flat_map(|word| {
                let payload = word
                    .strip_prefix("=?utf-8?b?")
                    .and_then(|w| w.strip_suffix("?="))
                    .unwrap_or_else(|| panic!("not an encoded word: {word}"));
                base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .unwrap()
            })
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn from_headers_quote_and_encode_as_lettre_sends_them() {
        assert_eq!(
            from_header("Ada Lovelace at Acme Support", "help@acme.example").unwrap(),
            "\"Ada Lovelace at Acme Support\" <help@acme.example>"
        );
        for name in ["Ada at \"Acme\", Inc.", "Zoë at Café Ünïcode"] {
            let value = from_header(name, "help@acme.example").unwrap();
            assert!(value.is_ascii(), "{value}");
            assert_eq!(decoded_name(&value), name);
        }
    }
}
