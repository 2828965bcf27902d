//! Channel settings of team connections: proto ⇄ domain.

use super::proto;
use crate::domain::channel::{
    ChannelInput, ChannelSettings, ChannelState, FromKind, RoutingMode, SenderNameFormat,
    VerificationState,
};
use crate::domain::connection::Connection;
use crate::domain::domain_settings::Choice;
use crate::service::inbox_connections::default_address;

fn choice<P, T>(value: i32, map: impl Fn(P) -> Option<T>) -> Choice<T>
where
    P: TryFrom<i32>,
{
    match P::try_from(value) {
        Ok(known) => map(known).map_or(Choice::Unspecified, Choice::Value),
        Err(_) => Choice::Unknown(value),
    }
}

fn format_from_proto(value: i32) -> Choice<SenderNameFormat> {
    choice(value, |format| match format {
        proto::SenderNameFormat::Unspecified => None,
        proto::SenderNameFormat::AgentName => Some(SenderNameFormat::AgentName),
        proto::SenderNameFormat::AgentAndCompany => Some(SenderNameFormat::AgentAndCompany),
        proto::SenderNameFormat::Company => Some(SenderNameFormat::Company),
    })
}

fn format_to_proto(format: SenderNameFormat) -> proto::SenderNameFormat {
    match format {
        SenderNameFormat::AgentName => proto::SenderNameFormat::AgentName,
        SenderNameFormat::AgentAndCompany => proto::SenderNameFormat::AgentAndCompany,
        SenderNameFormat::Company => proto::SenderNameFormat::Company,
    }
}

fn kind_from_proto(value: i32) -> Choice<FromKind> {
    choice(value, |kind| match kind {
        proto::FromAddressKind::Unspecified => None,
        proto::FromAddressKind::Default => Some(FromKind::Default),
        proto::FromAddressKind::Custom => Some(FromKind::Custom),
    })
}

pub fn mode_from_proto(value: i32) -> Choice<RoutingMode> {
    choice(value, |mode| match mode {
        proto::RoutingMode::Unspecified => None,
        proto::RoutingMode::Unassigned => Some(RoutingMode::Unassigned),
        proto::RoutingMode::SpecificUsersAndTeams => Some(RoutingMode::SpecificUsersAndTeams),
        proto::RoutingMode::RoundRobin => Some(RoutingMode::RoundRobin),
        proto::RoutingMode::ContactOwner => Some(RoutingMode::ContactOwner),
    })
}

pub fn mode_to_proto(mode: RoutingMode) -> proto::RoutingMode {
    match mode {
        RoutingMode::Unassigned => proto::RoutingMode::Unassigned,
        RoutingMode::SpecificUsersAndTeams => proto::RoutingMode::SpecificUsersAndTeams,
        RoutingMode::RoundRobin => proto::RoutingMode::RoundRobin,
        RoutingMode::ContactOwner => proto::RoutingMode::ContactOwner,
    }
}

fn verification_to_proto(state: VerificationState) -> proto::VerificationState {
    match state {
        VerificationState::NotStarted => proto::VerificationState::NotStarted,
        VerificationState::Pending => proto::VerificationState::Pending,
        VerificationState::Verified => proto::VerificationState::Verified,
    }
}

/// The writable fields of a ChannelSettings message as sent (output-only ones are ignored).
pub fn channel_input(settings: proto::ChannelSettings) -> ChannelInput {
    let sender = settings.sender_name.unwrap_or_default();
    let from = settings.from_address.unwrap_or_default();
    let routing = settings.routing.unwrap_or_default();
    let tickets = settings.tickets.unwrap_or_default();
    ChannelInput {
        sender_format: format_from_proto(sender.format),
        company_name: sender.company_name,
        from_kind: kind_from_proto(from.kind),
        custom_address: from.custom_address,
        routing_mode: mode_from_proto(routing.mode),
        user_ids: routing.user_ids,
        team_ids: routing.team_ids,
        create_tickets: tickets.create_tickets,
        pipeline_id: tickets.pipeline_id,
        stage_id: tickets.stage_id,
        properties: tickets.properties.into_iter().collect(),
    }
}

pub fn channel_to_proto(
    connection: &Connection,
    channel: &ChannelSettings,
) -> proto::ChannelSettings {
    let from = &channel.from_address;
    proto::ChannelSettings {
        sender_name: Some(proto::SenderName {
            format: format_to_proto(channel.sender_name.format).into(),
            company_name: channel.sender_name.company_name.clone(),
        }),
        from_address: Some(proto::FromAddress {
            kind: match from.custom {
                Some(_) => proto::FromAddressKind::Custom,
                None => proto::FromAddressKind::Default,
            }
            .into(),
            custom_address: from
                .custom
                .as_ref()
                .map(|custom| custom.address.as_str().to_owned())
                .unwrap_or_default(),
            verification_state: from
                .custom
                .as_ref()
                .map_or(proto::VerificationState::Unspecified, |custom| {
                    verification_to_proto(custom.state)
                })
                .into(),
            effective_address: channel.effective_address(&default_address(connection)),
        }),
        routing: Some(proto::Routing {
            mode: mode_to_proto(channel.routing.mode).into(),
            user_ids: channel.routing.user_ids.clone(),
            team_ids: channel.routing.team_ids.clone(),
        }),
        tickets: Some(proto::TicketRule {
            create_tickets: channel.tickets.create_tickets,
            pipeline_id: channel.tickets.pipeline_id.clone(),
            stage_id: channel.tickets.stage_id.clone(),
            properties: channel
                .tickets
                .properties
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        }),
        forwarding_address: channel.forwarding_address.clone().unwrap_or_default(),
        state: match channel.state {
            ChannelState::SetupInProgress => proto::ChannelState::SetupInProgress,
            ChannelState::Live => proto::ChannelState::Live,
        }
        .into(),
    }
}
