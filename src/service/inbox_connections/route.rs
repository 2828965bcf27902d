//! RouteInboundEmail: the channel a delivery to a forwarding address belongs to, its original
//! sender (domain::inbound), its assignment and ticket. Stores no content, except a setup
//! channel's test message (sender, subject, confirmation).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::Violations;
use crate::domain::channel::{ChannelState, ForwardingTest, Routing, RoutingMode, TicketRule};
use crate::domain::connection::{Connection, ConnectionState};
use crate::domain::email::EmailAddress;
use crate::domain::inbound::{self, Analysis, Context, MessageKind};
use crate::domain::principal::{Principal, Role};
use crate::service::ServiceError;
use crate::service::probing::Prober;

use super::channels::channel_of;
use super::store::InboxConnectionStore;
use super::{InboxConnectionService, SettingsResolver, TokenRefresher, VERIFICATION_ID_PREFIX};

/// Envelope recipients one delivery may have.
const MAX_RECIPIENTS: usize = 100;
/// How long a Message-ID keeps its round-robin user (redeliveries come within days).
const PICK_MEMORY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Message-ID prefixes of the service's own mail (the dispatcher's and verification's).
/// How fresh a LIVE channel's `last_inbound_time` is kept: a busy channel writes it once a
/// minute rather than once a message (each write takes the connection's row for a moment).
const INBOUND_TIME_RESOLUTION: Duration = Duration::from_secs(60);
const OWN_ID_PREFIXES: &[&str] = &["notification-", VERIFICATION_ID_PREFIX];

/// Who a conversation is assigned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub mode: RoutingMode,
    /// ROUND_ROBIN: the user chosen (none when no listed member is active).
    pub user_id: Option<i64>,
    /// SPECIFIC_USERS_AND_TEAMS: the active listed users, and the teams.
    pub user_ids: Vec<i64>,
    pub team_ids: Vec<i64>,
}

/// Where a delivery goes, and what it is.
pub struct Routed {
    pub connection: Connection,
    pub analysis: Analysis,
    pub assignment: Assignment,
    /// The channel's ticket rule when the message opens a conversation that becomes a ticket.
    pub ticket: Option<TicketRule>,
}

fn precondition(reason: &'static str, message: String, connection: &Connection) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason,
        message,
        metadata: BTreeMap::from([("connection".to_owned(), connection.name())]),
    }
}

impl<S, P, O, R> InboxConnectionService<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    pub async fn route_inbound_email(
        &self,
        principal: &Principal,
        recipients: &[String],
        raw: &[u8],
    ) -> Result<Routed, ServiceError> {
        ServiceError::require_any(&principal.roles, &[Role::Platform], "RouteInboundEmail")?;
        let recipients = parse_recipients(recipients, raw)?;
        let mut found = None;
        for recipient in recipients {
            found = self.store.channel_by_forwarding_address(recipient).await?;
            if found.is_some() {
                break;
            }
        }
        let connection = found.ok_or_else(|| {
            ServiceError::not_found(
                "NO_ROUTE",
                "no recipient is the forwarding address of a hosted channel",
            )
        })?;
        if connection.state != ConnectionState::Active {
            return Err(precondition(
                "CONNECTION_NOT_ACTIVE",
                format!(
                    "{} is {}: its mail is not routed",
                    connection.name(),
                    connection.state.as_str()
                ),
                &connection,
            ));
        }
        let channel = channel_of(&connection)?.clone();
        let users = self.store.user_addresses(connection.account_id).await?;
        let own_domain = self.own_address.rsplit_once('@').map_or("", |(_, d)| d);
        let team_address = connection.email.as_str().to_lowercase();
        let analysis = inbound::analyze(
            raw,
            &Context {
                team_address: &team_address,
                user_addresses: &users,
                own_id_prefixes: OWN_ID_PREFIXES,
                own_domain,
                own_address: &self.own_address,
            },
        )
        .map_err(|error| ServiceError::invalid("raw_message", error.to_string()))?;
        let now = self.clock.now();
        if channel.state == ChannelState::SetupInProgress {
            let test = ForwardingTest {
                sender: analysis.original_sender.clone(),
                subject: analysis.subject.clone(),
                confirmation: analysis.confirmation.clone(),
                receive_time: now,
            };
            self.store
                .record_inbound(connection.account_id, connection.id, now, Some(test))
                .await?;
            return Err(precondition(
                "CHANNEL_NOT_LIVE",
                format!(
                    "{} is still in setup: the message was kept as its last forwarding test (complete the setup to route mail)",
                    connection.name()
                ),
                &connection,
            ));
        }
        let recorded_lately = channel.last_inbound_time.is_some_and(|last| {
            now.duration_since(last)
                .is_ok_and(|age| age < INBOUND_TIME_RESOLUTION)
        });
        if !recorded_lately {
            self.store
                .record_inbound(connection.account_id, connection.id, now, None)
                .await?;
        }
        let conversation = analysis.kind == MessageKind::Conversation;
        let assignment = match conversation {
            true => {
                self.assign(&connection, &channel.routing, &analysis.message_id)
                    .await?
            }
            // Nobody answers an auto-reply, a report or our own mail.
            false => Assignment {
                mode: RoutingMode::Unassigned,
                user_id: None,
                user_ids: Vec::new(),
                team_ids: Vec::new(),
            },
        };
        let ticket = (conversation && !analysis.reply && channel.tickets.create_tickets)
            .then(|| channel.tickets.clone());
        Ok(Routed {
            connection,
            analysis,
            assignment,
            ticket,
        })
    }

    /// The channel's routing for one message; deleted users are skipped.
    async fn assign(
        &self,
        connection: &Connection,
        routing: &Routing,
        message_id: &str,
    ) -> Result<Assignment, ServiceError> {
        let mut assignment = Assignment {
            mode: routing.mode,
            user_id: None,
            user_ids: Vec::new(),
            team_ids: Vec::new(),
        };
        if !routing.mode.lists_members() {
            return Ok(assignment);
        }
        let directory = self
            .store
            .routing_directory(
                connection.account_id,
                routing.user_ids.clone(),
                routing.team_ids.clone(),
            )
            .await?;
        let active = |id: &i64| directory.users.iter().any(|u| u.id == *id && !u.deleted);
        let listed: Vec<i64> = routing.user_ids.iter().copied().filter(active).collect();
        if routing.mode == RoutingMode::SpecificUsersAndTeams {
            assignment.user_ids = listed;
            assignment.team_ids = routing.team_ids.clone();
            return Ok(assignment);
        }
        let mut members: Vec<i64> = listed
            .into_iter()
            .chain(
                directory
                    .teams
                    .iter()
                    .flat_map(|team| team.member_user_ids.clone()),
            )
            .filter(active)
            .collect();
        members.sort_unstable();
        members.dedup();
        let now = self.clock.now();
        assignment.user_id = self
            .store
            .round_robin_pick(
                connection.id,
                message_id.to_owned(),
                members,
                now,
                now - PICK_MEMORY,
            )
            .await?;
        Ok(assignment)
    }
}

/// The recipients, lower-cased, and the message checked for presence.
fn parse_recipients(recipients: &[String], raw: &[u8]) -> Result<Vec<String>, ServiceError> {
    let mut violations = Violations::new();
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        violations.add(
            "envelope_recipients",
            format!("must hold 1 to {MAX_RECIPIENTS} addresses (the RCPT TO of the delivery)"),
        );
    }
    let parsed: Vec<String> = recipients
        .iter()
        .take(MAX_RECIPIENTS)
        .enumerate()
        .filter_map(|(index, recipient)| {
            violations.check(EmailAddress::parse(
                &format!("envelope_recipients[{index}]"),
                recipient,
            ))
        })
        .map(|address| address.as_str().to_lowercase())
        .collect();
    if raw.is_empty() {
        violations.add("raw_message", "is required: the message as received");
    }
    Ok(violations.finish(|| parsed)?)
}
