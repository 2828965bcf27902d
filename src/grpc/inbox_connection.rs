//! InboxConnectionService over gRPC: proto ⇄ domain conversion around the use cases.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use super::auth::principal;
use super::channel::{channel_input, channel_to_proto};
use super::domain_settings::{exchange_to_proto, imap_to_proto, probe_context, server_input};
use super::probe_report::report_to_proto;
use super::proto;
use super::proto::inbox_connection_service_server::InboxConnectionService as InboxConnectionRpc;
use super::status::status;
use crate::domain::connection::{
    Connection, ConnectionKind, ConnectionServers, ConnectionState, DisconnectReason, Provider,
    ServerSource, Usage, inbox_name,
};
use crate::domain::credentials::CredentialsInput;
use crate::domain::domain_settings::{Choice, ServerSettings};
use crate::domain::inbox::Inbox;
use crate::domain::notification::{Notification, NotificationKind};
use crate::domain::secret::Secret;
use crate::service::ServiceError;
use crate::service::inbox_connections::store::InboxConnectionStore;
use crate::service::inbox_connections::{
    ConnectRequest, Connected, InboxConnectionService, ListFilter, ServersInput, SettingsResolver,
    TokenRefresher,
};
use crate::service::pagination::PageRequest;
use crate::service::probing::Prober;

pub struct InboxConnectionApi<S, P, O, R> {
    service: Arc<InboxConnectionService<S, P, O, R>>,
}

impl<S, P, O, R> InboxConnectionApi<S, P, O, R> {
    pub fn new(service: Arc<InboxConnectionService<S, P, O, R>>) -> Self {
        Self { service }
    }
}

fn provider_from_proto(value: i32) -> Choice<Provider> {
    match proto::Provider::try_from(value) {
        Ok(proto::Provider::Unspecified) => Choice::Unspecified,
        Ok(proto::Provider::Gmail) => Choice::Value(Provider::Gmail),
        Ok(proto::Provider::Office365) => Choice::Value(Provider::Office365),
        Ok(proto::Provider::Imap) => Choice::Value(Provider::Imap),
        Ok(proto::Provider::Exchange) => Choice::Value(Provider::Exchange),
        Ok(proto::Provider::Hosted) => Choice::Value(Provider::Hosted),
        Err(_) => Choice::Unknown(value),
    }
}

fn provider_to_proto(provider: Provider) -> proto::Provider {
    match provider {
        Provider::Gmail => proto::Provider::Gmail,
        Provider::Office365 => proto::Provider::Office365,
        Provider::Imap => proto::Provider::Imap,
        Provider::Exchange => proto::Provider::Exchange,
        Provider::Hosted => proto::Provider::Hosted,
    }
}

fn usage_from_proto(value: i32) -> Choice<Usage> {
    match proto::Usage::try_from(value) {
        Ok(proto::Usage::Unspecified) => Choice::Unspecified,
        Ok(proto::Usage::CrmEmail) => Choice::Value(Usage::CrmEmail),
        Ok(proto::Usage::Meetings) => Choice::Value(Usage::Meetings),
        Ok(proto::Usage::Calendar) => Choice::Value(Usage::Calendar),
        Ok(proto::Usage::Sequences) => Choice::Value(Usage::Sequences),
        Ok(proto::Usage::Conversations) => Choice::Value(Usage::Conversations),
        Err(_) => Choice::Unknown(value),
    }
}

fn usage_to_proto(usage: Usage) -> proto::Usage {
    match usage {
        Usage::CrmEmail => proto::Usage::CrmEmail,
        Usage::Meetings => proto::Usage::Meetings,
        Usage::Calendar => proto::Usage::Calendar,
        Usage::Sequences => proto::Usage::Sequences,
        Usage::Conversations => proto::Usage::Conversations,
    }
}

fn kind_from_proto(value: i32) -> Choice<ConnectionKind> {
    match proto::ConnectionKind::try_from(value) {
        Ok(proto::ConnectionKind::Unspecified) => Choice::Unspecified,
        Ok(proto::ConnectionKind::Personal) => Choice::Value(ConnectionKind::Personal),
        Ok(proto::ConnectionKind::Team) => Choice::Value(ConnectionKind::Team),
        Err(_) => Choice::Unknown(value),
    }
}

fn kind_to_proto(kind: ConnectionKind) -> proto::ConnectionKind {
    match kind {
        ConnectionKind::Personal => proto::ConnectionKind::Personal,
        ConnectionKind::Team => proto::ConnectionKind::Team,
    }
}

fn state_from_proto(value: i32) -> Choice<ConnectionState> {
    match proto::ConnectionState::try_from(value) {
        Ok(proto::ConnectionState::Unspecified) => Choice::Unspecified,
        Ok(proto::ConnectionState::Active) => Choice::Value(ConnectionState::Active),
        Ok(proto::ConnectionState::Deactivated) => Choice::Value(ConnectionState::Deactivated),
        Ok(proto::ConnectionState::Disconnected) => Choice::Value(ConnectionState::Disconnected),
        Err(_) => Choice::Unknown(value),
    }
}

fn state_to_proto(state: ConnectionState) -> proto::ConnectionState {
    match state {
        ConnectionState::Active => proto::ConnectionState::Active,
        ConnectionState::Deactivated => proto::ConnectionState::Deactivated,
        ConnectionState::Disconnected => proto::ConnectionState::Disconnected,
    }
}

fn reason_to_proto(reason: Option<DisconnectReason>) -> proto::DisconnectReason {
    match reason {
        None => proto::DisconnectReason::Unspecified,
        Some(DisconnectReason::CredentialsExpired) => proto::DisconnectReason::CredentialsExpired,
        Some(DisconnectReason::UserDeactivated) => proto::DisconnectReason::UserDeactivated,
        Some(DisconnectReason::ProviderMigration) => proto::DisconnectReason::ProviderMigration,
        Some(DisconnectReason::AccessRevoked) => proto::DisconnectReason::AccessRevoked,
        Some(DisconnectReason::ServerUnreachable) => proto::DisconnectReason::ServerUnreachable,
    }
}

fn inbox_to_proto(inbox: Inbox) -> proto::Inbox {
    proto::Inbox {
        name: inbox.name(),
        etag: inbox.etag(),
        display_name: inbox.display_name,
        create_time: Some(inbox.create_time.into()),
        update_time: Some(inbox.update_time.into()),
        created_by_user_id: inbox.created_by_user_id,
    }
}

fn servers_to_proto(servers: ConnectionServers) -> proto::ServerSettings {
    let mut message = proto::ServerSettings::default();
    match servers.settings {
        ServerSettings::Imap(imap) => {
            let imap = imap_to_proto(imap);
            message.imap_server = imap.imap_server;
            message.smtp_server = imap.smtp_server;
            message.allow_insecure_certificate = imap.allow_insecure_certificate;
        }
        ServerSettings::Exchange(exchange) => {
            message.exchange_url = exchange_to_proto(exchange).exchange_url;
        }
    }
    match servers.source {
        ServerSource::Request => {}
        ServerSource::AdminPreset(name) => {
            message.source = proto::SettingsSource::AdminPreset.into();
            message.domain_settings = name;
        }
        ServerSource::BuiltinProvider(name) => {
            message.source = proto::SettingsSource::BuiltinProvider.into();
            message.provider_name = name;
        }
    }
    message
}

fn connection_to_proto(connection: Connection) -> proto::Connection {
    let channel_settings = connection
        .channel
        .as_ref()
        .map(|channel| channel_to_proto(&connection, channel));
    let (name, etag) = (connection.name(), connection.etag());
    let health = connection.health;
    proto::Connection {
        name,
        etag,
        email_address: connection.email.as_str().to_owned(),
        kind: kind_to_proto(connection.kind).into(),
        provider: provider_to_proto(connection.provider).into(),
        owner_user_id: connection.owner_user_id,
        inbox: connection.inbox_id.map(inbox_name).unwrap_or_default(),
        state: state_to_proto(connection.state).into(),
        disconnect_reason: reason_to_proto(connection.disconnect_reason).into(),
        usages: connection
            .usages
            .into_iter()
            .map(|usage| usage_to_proto(usage).into())
            .collect(),
        servers: connection.servers.map(servers_to_proto),
        channel_settings,
        create_time: Some(connection.create_time.into()),
        update_time: Some(connection.update_time.into()),
        state_change_time: Some(connection.state_change_time.into()),
        last_check_time: health.last_check_time.map(Into::into),
        last_success_time: health.last_success_time.map(Into::into),
        consecutive_failures: health.consecutive_failures,
        last_error: health.last_error,
    }
}

/// A connection that was only validated has no identity yet.
fn candidate_to_proto(connection: Connection, stored: bool) -> proto::Connection {
    let mut message = connection_to_proto(connection);
    if !stored {
        message.name.clear();
        message.etag.clear();
    }
    message
}

fn notification_to_proto(stored: Notification) -> proto::Notification {
    let notification = stored.notification;
    proto::Notification {
        name: format!("notifications/{}", stored.id),
        kind: match notification.kind {
            NotificationKind::ConnectionDisconnected => {
                proto::NotificationKind::ConnectionDisconnected
            }
            NotificationKind::ConnectionDeleted => proto::NotificationKind::ConnectionDeleted,
            NotificationKind::ConnectingUserDeleted => {
                proto::NotificationKind::ConnectingUserDeleted
            }
        }
        .into(),
        connection: crate::domain::connection::connection_name(notification.connection_id),
        email_address: notification.email_address,
        connection_kind: kind_to_proto(notification.connection_kind).into(),
        disconnect_reason: reason_to_proto(notification.disconnect_reason).into(),
        recipient_user_id: notification.recipient_user_id,
        actor_user_id: notification.actor_user_id,
        message: notification.message,
        create_time: Some(stored.create_time.into()),
    }
}

fn credentials_input(credentials: Option<proto::Credentials>) -> CredentialsInput {
    use proto::credentials::Method;
    match credentials.and_then(|credentials| credentials.method) {
        None => CredentialsInput::Missing,
        Some(Method::Password(password)) => CredentialsInput::Password {
            username: password.username,
            password: Secret::new(password.password),
        },
        Some(Method::Oauth(grant)) => CredentialsInput::OAuth {
            refresh_token: Secret::new(grant.refresh_token),
            access_token: Secret::new(grant.access_token),
            access_token_expire_time: grant
                .access_token_expire_time
                .and_then(|time| std::time::SystemTime::try_from(time).ok()),
            scopes: grant.scopes,
            account_email: grant.account_email,
        },
    }
}

fn servers_input(servers: Option<proto::ServerSettings>) -> Option<ServersInput> {
    servers.map(|servers| ServersInput {
        imap_server: servers.imap_server.map(server_input),
        smtp_server: servers.smtp_server.map(server_input),
        allow_insecure_certificate: servers.allow_insecure_certificate,
        exchange_url: servers.exchange_url,
    })
}

fn usages_input(usages: &[i32]) -> Vec<Choice<Usage>> {
    usages
        .iter()
        .map(|usage| usage_from_proto(*usage))
        .collect()
}

fn reports_to_proto(connected: &mut Connected) -> Vec<proto::ProbeReport> {
    std::mem::take(&mut connected.reports)
        .into_iter()
        .map(report_to_proto)
        .collect()
}

/// The hosted-channel methods arrive with their own work (seed 001).
fn not_yet(method: &str) -> Status {
    status(
        Code::Unimplemented,
        "NOT_IMPLEMENTED",
        format!(
            "mailconnect.v1.InboxConnectionService/{method} is not implemented yet: it arrives with hosted channels"
        ),
        [(
            "method".to_owned(),
            format!("mailconnect.v1.InboxConnectionService/{method}"),
        )]
        .into(),
    )
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| ServiceError::invalid(field, "is required").into())
}

#[tonic::async_trait]
impl<S, P, O, R> InboxConnectionRpc for InboxConnectionApi<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    async fn create_inbox(
        &self,
        request: Request<proto::CreateInboxRequest>,
    ) -> Result<Response<proto::CreateInboxResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let inbox = required(request.inbox, "inbox")?;
        let created = self
            .service
            .create_inbox(&principal, &inbox.display_name, &request.request_id)
            .await?;
        Ok(Response::new(proto::CreateInboxResponse {
            inbox: Some(inbox_to_proto(created)),
        }))
    }

    async fn get_inbox(
        &self,
        request: Request<proto::GetInboxRequest>,
    ) -> Result<Response<proto::GetInboxResponse>, Status> {
        let principal = principal(&request)?;
        let inbox = self
            .service
            .get_inbox(&principal, &request.get_ref().name)
            .await?;
        Ok(Response::new(proto::GetInboxResponse {
            inbox: Some(inbox_to_proto(inbox)),
        }))
    }

    async fn list_inboxes(
        &self,
        request: Request<proto::ListInboxesRequest>,
    ) -> Result<Response<proto::ListInboxesResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let page = self
            .service
            .list_inboxes(
                &principal,
                PageRequest {
                    page_size: request.page_size,
                    page_token: &request.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListInboxesResponse {
            inboxes: page.items.into_iter().map(inbox_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_inbox(
        &self,
        request: Request<proto::UpdateInboxRequest>,
    ) -> Result<Response<proto::UpdateInboxResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let inbox = required(request.inbox, "inbox")?;
        let mask = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        let updated = self
            .service
            .update_inbox(
                &principal,
                &inbox.name,
                &inbox.etag,
                &inbox.display_name,
                &mask,
            )
            .await?;
        Ok(Response::new(proto::UpdateInboxResponse {
            inbox: Some(inbox_to_proto(updated)),
        }))
    }

    async fn delete_inbox(
        &self,
        request: Request<proto::DeleteInboxRequest>,
    ) -> Result<Response<proto::DeleteInboxResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        self.service
            .delete_inbox(&principal, &request.name, &request.etag, request.force)
            .await?;
        Ok(Response::new(proto::DeleteInboxResponse {}))
    }

    async fn connect_personal_inbox(
        &self,
        request: Request<proto::ConnectPersonalInboxRequest>,
    ) -> Result<Response<proto::ConnectPersonalInboxResponse>, Status> {
        let principal = principal(&request)?;
        let context = probe_context(&request);
        let request = request.into_inner();
        let mut connected = self
            .service
            .connect_personal(
                &principal,
                ConnectRequest {
                    email_address: &request.email_address,
                    provider: provider_from_proto(request.provider),
                    credentials: credentials_input(request.credentials),
                    servers: servers_input(request.servers),
                    usages: usages_input(&request.usages),
                    inbox: "",
                    channel_settings: None,
                    validate_only: request.validate_only,
                    request_id: &request.request_id,
                },
                &context,
            )
            .await?;
        let reports = reports_to_proto(&mut connected);
        Ok(Response::new(proto::ConnectPersonalInboxResponse {
            connection: Some(candidate_to_proto(
                connected.connection,
                !request.validate_only,
            )),
            reports,
        }))
    }

    async fn connect_team_email(
        &self,
        request: Request<proto::ConnectTeamEmailRequest>,
    ) -> Result<Response<proto::ConnectTeamEmailResponse>, Status> {
        let principal = principal(&request)?;
        let context = probe_context(&request);
        let mut request = request.into_inner();
        let mut connected = self
            .service
            .connect_team(
                &principal,
                ConnectRequest {
                    email_address: &request.email_address,
                    provider: provider_from_proto(request.provider),
                    credentials: credentials_input(request.credentials),
                    servers: servers_input(request.servers),
                    usages: Vec::new(),
                    inbox: &request.inbox,
                    channel_settings: request.channel_settings.take().map(channel_input),
                    validate_only: request.validate_only,
                    request_id: &request.request_id,
                },
                &context,
            )
            .await?;
        let reports = reports_to_proto(&mut connected);
        Ok(Response::new(proto::ConnectTeamEmailResponse {
            connection: Some(candidate_to_proto(
                connected.connection,
                !request.validate_only,
            )),
            reports,
        }))
    }

    async fn get_connection(
        &self,
        request: Request<proto::GetConnectionRequest>,
    ) -> Result<Response<proto::GetConnectionResponse>, Status> {
        let principal = principal(&request)?;
        let connection = self
            .service
            .get_connection(&principal, &request.get_ref().name)
            .await?;
        Ok(Response::new(proto::GetConnectionResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn list_connections(
        &self,
        request: Request<proto::ListConnectionsRequest>,
    ) -> Result<Response<proto::ListConnectionsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let page = self
            .service
            .list_connections(
                &principal,
                ListFilter {
                    kind: kind_from_proto(request.kind),
                    inbox: &request.inbox,
                    owner_user_id: request.owner_user_id,
                    state: state_from_proto(request.state),
                },
                PageRequest {
                    page_size: request.page_size,
                    page_token: &request.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListConnectionsResponse {
            connections: page.items.into_iter().map(connection_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn deactivate_connection(
        &self,
        request: Request<proto::DeactivateConnectionRequest>,
    ) -> Result<Response<proto::DeactivateConnectionResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let connection = self
            .service
            .deactivate(&principal, &request.name, &request.etag)
            .await?;
        Ok(Response::new(proto::DeactivateConnectionResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn delete_connection(
        &self,
        request: Request<proto::DeleteConnectionRequest>,
    ) -> Result<Response<proto::DeleteConnectionResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        self.service
            .delete_connection(&principal, &request.name, &request.etag)
            .await?;
        Ok(Response::new(proto::DeleteConnectionResponse {}))
    }

    async fn reauthorize_connection(
        &self,
        request: Request<proto::ReauthorizeConnectionRequest>,
    ) -> Result<Response<proto::ReauthorizeConnectionResponse>, Status> {
        let principal = principal(&request)?;
        let context = probe_context(&request);
        let request = request.into_inner();
        let mut connected = self
            .service
            .reauthorize(
                &principal,
                &request.name,
                &request.etag,
                credentials_input(request.credentials),
                request.validate_only,
                &context,
            )
            .await?;
        let reports = reports_to_proto(&mut connected);
        Ok(Response::new(proto::ReauthorizeConnectionResponse {
            connection: Some(connection_to_proto(connected.connection)),
            reports,
        }))
    }

    async fn set_usages(
        &self,
        request: Request<proto::SetUsagesRequest>,
    ) -> Result<Response<proto::SetUsagesResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let connection = self
            .service
            .set_usages(
                &principal,
                &request.name,
                &request.etag,
                &usages_input(&request.usages),
            )
            .await?;
        Ok(Response::new(proto::SetUsagesResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn release_address(
        &self,
        request: Request<proto::ReleaseAddressRequest>,
    ) -> Result<Response<proto::ReleaseAddressResponse>, Status> {
        let principal = principal(&request)?;
        let released = self
            .service
            .release_address(&principal, &request.get_ref().email_address)
            .await?;
        Ok(Response::new(proto::ReleaseAddressResponse {
            released_connection: Some(connection_to_proto(released)),
        }))
    }

    async fn update_channel_settings(
        &self,
        request: Request<proto::UpdateChannelSettingsRequest>,
    ) -> Result<Response<proto::UpdateChannelSettingsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let mask = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        let connection = self
            .service
            .update_channel_settings(
                &principal,
                &request.name,
                channel_input(request.channel_settings.unwrap_or_default()),
                &mask,
                &request.etag,
            )
            .await?;
        Ok(Response::new(proto::UpdateChannelSettingsResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn preview_sender(
        &self,
        request: Request<proto::PreviewSenderRequest>,
    ) -> Result<Response<proto::PreviewSenderResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        let preview = self
            .service
            .preview_sender(
                &principal,
                &request.name,
                request.channel_settings.map(channel_input),
                &request.agent_name,
            )
            .await?;
        Ok(Response::new(proto::PreviewSenderResponse {
            display_name: preview.display_name,
            email_address: preview.email_address,
            from_header: preview.from_header,
        }))
    }

    async fn customize_forwarding_address(
        &self,
        request: Request<proto::CustomizeForwardingAddressRequest>,
    ) -> Result<Response<proto::CustomizeForwardingAddressResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let connection = self
            .service
            .customize_forwarding_address(
                &principal,
                &request.name,
                &request.local_part,
                &request.etag,
            )
            .await?;
        Ok(Response::new(proto::CustomizeForwardingAddressResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn start_address_verification(
        &self,
        request: Request<proto::StartAddressVerificationRequest>,
    ) -> Result<Response<proto::StartAddressVerificationResponse>, Status> {
        let principal = principal(&request)?;
        let started = self
            .service
            .start_address_verification(&principal, &request.get_ref().name)
            .await?;
        Ok(Response::new(proto::StartAddressVerificationResponse {
            connection: Some(connection_to_proto(started.connection)),
            sent_to: started.sent_to,
            expire_time: started.expire_time.map(Into::into),
        }))
    }

    async fn verify_address(
        &self,
        request: Request<proto::VerifyAddressRequest>,
    ) -> Result<Response<proto::VerifyAddressResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let connection = self
            .service
            .verify_address(&principal, &request.name, &request.code)
            .await?;
        Ok(Response::new(proto::VerifyAddressResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn complete_setup(
        &self,
        request: Request<proto::CompleteSetupRequest>,
    ) -> Result<Response<proto::CompleteSetupResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let connection = self
            .service
            .complete_setup(&principal, &request.name, &request.etag)
            .await?;
        Ok(Response::new(proto::CompleteSetupResponse {
            connection: Some(connection_to_proto(connection)),
        }))
    }

    async fn route_inbound_email(
        &self,
        _request: Request<proto::RouteInboundEmailRequest>,
    ) -> Result<Response<proto::RouteInboundEmailResponse>, Status> {
        Err(not_yet("RouteInboundEmail"))
    }

    async fn list_notifications(
        &self,
        request: Request<proto::ListNotificationsRequest>,
    ) -> Result<Response<proto::ListNotificationsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let page = self
            .service
            .list_notifications(
                &principal,
                PageRequest {
                    page_size: request.page_size,
                    page_token: &request.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListNotificationsResponse {
            notifications: page.items.into_iter().map(notification_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
