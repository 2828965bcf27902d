//! A team connection's channel settings as stored in `connections.channel_settings` (JSON with
//! stable names); the forwarding address also has a column of its own, for its unique index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{StoreError, from_micros, to_micros};
use crate::domain::channel::{
    ChannelSettings, ChannelState, CustomAddress, FromAddress, Routing, RoutingMode, SenderName,
    SenderNameFormat, TicketRule, VerificationState,
};
use crate::domain::email::EmailAddress;

#[derive(Serialize, Deserialize)]
pub(super) struct ChannelJson {
    sender_format: String,
    company_name: String,
    custom_address: Option<String>,
    verification: Option<String>,
    verified_address: Option<String>,
    routing_mode: String,
    user_ids: Vec<i64>,
    team_ids: Vec<i64>,
    create_tickets: bool,
    pipeline_id: String,
    stage_id: String,
    properties: BTreeMap<String, String>,
    state: String,
    last_inbound_time: Option<i64>,
}

/// Each enum's stored names, one list per enum so that both directions agree.
const FORMATS: &[(SenderNameFormat, &str)] = &[
    (SenderNameFormat::AgentName, "agent"),
    (SenderNameFormat::AgentAndCompany, "agent_and_company"),
    (SenderNameFormat::Company, "company"),
];
const VERIFICATIONS: &[(VerificationState, &str)] = &[
    (VerificationState::NotStarted, "not_started"),
    (VerificationState::Pending, "pending"),
    (VerificationState::Verified, "verified"),
];
const MODES: &[(RoutingMode, &str)] = &[
    (RoutingMode::Unassigned, "unassigned"),
    (RoutingMode::SpecificUsersAndTeams, "specific"),
    (RoutingMode::RoundRobin, "round_robin"),
    (RoutingMode::ContactOwner, "contact_owner"),
];
const STATES: &[(ChannelState, &str)] = &[
    (ChannelState::SetupInProgress, "setup"),
    (ChannelState::Live, "live"),
];

fn name_of<T: PartialEq + Copy>(table: &[(T, &'static str)], value: T) -> String {
    table
        .iter()
        .find(|(item, _)| *item == value)
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_default()
}

fn value_of<T: Copy>(table: &[(T, &str)], name: &str) -> Result<T, StoreError> {
    table
        .iter()
        .find(|(_, item)| *item == name)
        .map(|(value, _)| *value)
        .ok_or_else(|| StoreError::Internal(format!("stored channel value {name:?}")))
}

fn address(text: &str) -> Result<EmailAddress, StoreError> {
    EmailAddress::parse("channel", text)
        .map_err(|_| StoreError::Internal("a stored channel has an invalid address".into()))
}

pub(super) fn encode(settings: &ChannelSettings) -> String {
    let from = &settings.from_address;
    let json = ChannelJson {
        sender_format: name_of(FORMATS, settings.sender_name.format),
        company_name: settings.sender_name.company_name.clone(),
        custom_address: from.custom.as_ref().map(|c| c.address.as_str().to_owned()),
        verification: from
            .custom
            .as_ref()
            .map(|c| name_of(VERIFICATIONS, c.state)),
        verified_address: from.verified.as_ref().map(|a| a.as_str().to_owned()),
        routing_mode: name_of(MODES, settings.routing.mode),
        user_ids: settings.routing.user_ids.clone(),
        team_ids: settings.routing.team_ids.clone(),
        create_tickets: settings.tickets.create_tickets,
        pipeline_id: settings.tickets.pipeline_id.clone(),
        stage_id: settings.tickets.stage_id.clone(),
        properties: settings.tickets.properties.clone(),
        state: name_of(STATES, settings.state),
        last_inbound_time: settings.last_inbound_time.map(to_micros),
    };
    serde_json::to_string(&json).expect("channel settings always serialise")
}

pub(super) fn decode(
    text: &str,
    forwarding_address: Option<String>,
) -> Result<ChannelSettings, StoreError> {
    let json: ChannelJson = serde_json::from_str(text)
        .map_err(|_| StoreError::Internal("stored channel settings are not valid JSON".into()))?;
    let custom = match (json.custom_address, json.verification) {
        (Some(custom), Some(state)) => Some(CustomAddress {
            address: address(&custom)?,
            state: value_of(VERIFICATIONS, &state)?,
        }),
        _ => None,
    };
    Ok(ChannelSettings {
        sender_name: SenderName {
            format: value_of(FORMATS, &json.sender_format)?,
            company_name: json.company_name,
        },
        from_address: FromAddress {
            custom,
            verified: json.verified_address.as_deref().map(address).transpose()?,
        },
        routing: Routing {
            mode: value_of(MODES, &json.routing_mode)?,
            user_ids: json.user_ids,
            team_ids: json.team_ids,
        },
        tickets: TicketRule {
            create_tickets: json.create_tickets,
            pipeline_id: json.pipeline_id,
            stage_id: json.stage_id,
            properties: json.properties,
        },
        forwarding_address,
        state: value_of(STATES, &json.state)?,
        last_inbound_time: json.last_inbound_time.map(from_micros),
    })
}
