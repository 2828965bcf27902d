//! DomainSettingsService over gRPC: proto ⇄ domain conversion around the use cases.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::principal;
use super::probe_report::report_to_proto;
use super::proto;
use super::proto::domain_settings_service_server::DomainSettingsService as DomainSettingsRpc;
use crate::domain::domain_settings::{
    Choice, DomainSettings, ExchangeInput, ExchangeScope, ImapInput, ServerInput, ServerSettings,
    SettingsInput, SettingsKind, resource_name,
};
use crate::domain::probe::{ProbeContext, ProbeCredentials, Security, ServerEndpoint};
use crate::domain::providers::OAuthProvider;
use crate::domain::secret::Secret;
use crate::service::ServiceError;
use crate::service::domain_settings::{
    BuiltinAccess, DomainSettingsService, DomainSettingsStore, Resolution, SettingsRequest,
    UpdateRequest, authorize_write,
};
use crate::service::pagination::PageRequest;
use crate::service::probing::Prober;

pub struct DomainSettingsApi<S, P> {
    service: Arc<DomainSettingsService<S, P>>,
}

impl<S, P> DomainSettingsApi<S, P> {
    pub fn new(service: Arc<DomainSettingsService<S, P>>) -> Self {
        Self { service }
    }
}

fn security_from_proto(value: i32) -> Choice<Security> {
    match proto::Security::try_from(value) {
        Ok(proto::Security::Unspecified) => Choice::Unspecified,
        Ok(proto::Security::ImplicitTls) => Choice::Value(Security::ImplicitTls),
        Ok(proto::Security::Starttls) => Choice::Value(Security::StartTls),
        Ok(proto::Security::Plaintext) => Choice::Value(Security::Plaintext),
        Err(_) => Choice::Unknown(value),
    }
}

fn security_to_proto(security: Security) -> proto::Security {
    match security {
        Security::ImplicitTls => proto::Security::ImplicitTls,
        Security::StartTls => proto::Security::Starttls,
        Security::Plaintext => proto::Security::Plaintext,
    }
}

fn scope_from_proto(value: i32) -> Choice<ExchangeScope> {
    match proto::ExchangeScope::try_from(value) {
        Ok(proto::ExchangeScope::Unspecified) => Choice::Unspecified,
        Ok(proto::ExchangeScope::Email) => Choice::Value(ExchangeScope::Email),
        Ok(proto::ExchangeScope::Calendar) => Choice::Value(ExchangeScope::Calendar),
        Err(_) => Choice::Unknown(value),
    }
}

fn scope_to_proto(scope: ExchangeScope) -> proto::ExchangeScope {
    match scope {
        ExchangeScope::Email => proto::ExchangeScope::Email,
        ExchangeScope::Calendar => proto::ExchangeScope::Calendar,
    }
}

fn oauth_provider_to_proto(provider: OAuthProvider) -> proto::OauthProvider {
    match provider {
        OAuthProvider::Google => proto::OauthProvider::Google,
        OAuthProvider::Microsoft => proto::OauthProvider::Microsoft,
    }
}

pub(super) fn server_input(address: proto::ServerAddress) -> ServerInput {
    ServerInput {
        host: address.host,
        port: address.port,
        security: security_from_proto(address.security),
    }
}

fn settings_input(settings: Option<proto::domain_settings::Settings>) -> SettingsInput {
    use proto::domain_settings::Settings;
    match settings {
        None => SettingsInput::Missing,
        Some(Settings::Imap(imap)) => SettingsInput::Imap(ImapInput {
            imap_server: imap.imap_server.map(server_input),
            smtp_server: imap.smtp_server.map(server_input),
            allow_insecure_certificate: imap.allow_insecure_certificate,
        }),
        Some(Settings::Exchange(exchange)) => SettingsInput::Exchange(ExchangeInput {
            exchange_url: exchange.exchange_url,
            scopes: exchange.scopes.into_iter().map(scope_from_proto).collect(),
        }),
    }
}

fn endpoint_to_proto(endpoint: ServerEndpoint) -> proto::ServerAddress {
    proto::ServerAddress {
        host: endpoint.host,
        port: u32::from(endpoint.port),
        security: security_to_proto(endpoint.security).into(),
    }
}

pub(super) fn imap_to_proto(
    imap: crate::domain::domain_settings::ImapSettings,
) -> proto::ImapSettings {
    proto::ImapSettings {
        imap_server: Some(endpoint_to_proto(imap.imap_server)),
        smtp_server: Some(endpoint_to_proto(imap.smtp_server)),
        allow_insecure_certificate: imap.allow_insecure_certificate,
    }
}

pub(super) fn exchange_to_proto(
    exchange: crate::domain::domain_settings::ExchangeSettings,
) -> proto::ExchangeSettings {
    proto::ExchangeSettings {
        exchange_url: exchange.exchange_url,
        scopes: exchange
            .scopes
            .into_iter()
            .map(|scope| scope_to_proto(scope).into())
            .collect(),
    }
}

fn settings_to_proto(value: DomainSettings, stored: bool) -> proto::DomainSettings {
    use proto::domain_settings::Settings;
    proto::DomainSettings {
        name: resource_name(&value.domain),
        etag: if stored { value.etag() } else { String::new() },
        domain: value.domain.to_string(),
        settings: Some(match value.settings {
            ServerSettings::Imap(imap) => Settings::Imap(imap_to_proto(imap)),
            ServerSettings::Exchange(exchange) => Settings::Exchange(exchange_to_proto(exchange)),
        }),
        create_time: stored.then(|| value.create_time.into()),
        update_time: stored.then(|| value.update_time.into()),
        updated_by_user_id: value.updated_by_user_id,
        last_verified_time: value.last_verified_time.map(Into::into),
    }
}

/// A DomainSettings message the caller must send.
fn required_settings(
    value: Option<proto::DomainSettings>,
) -> Result<proto::DomainSettings, Status> {
    value.ok_or_else(|| ServiceError::invalid("domain_settings", "is required").into())
}

fn settings_request(value: proto::DomainSettings) -> SettingsRequest {
    SettingsRequest {
        domain: value.domain,
        settings: settings_input(value.settings),
    }
}

/// The caller's deadline from the `grpc-timeout` header, so probes end before it.
pub(super) fn probe_context<T>(request: &Request<T>) -> ProbeContext {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(super::deadline::parse_grpc_timeout);
    ProbeContext {
        account_id: None,
        // A deadline past what the clock can hold is no deadline (the probe's own bounds apply).
        deadline: timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout)),
    }
}

fn kind_filter(value: i32) -> Result<Option<SettingsKind>, Status> {
    match proto::DomainSettingsKind::try_from(value) {
        Ok(proto::DomainSettingsKind::Unspecified) => Ok(None),
        Ok(proto::DomainSettingsKind::Imap) => Ok(Some(SettingsKind::Imap)),
        Ok(proto::DomainSettingsKind::Exchange) => Ok(Some(SettingsKind::Exchange)),
        Err(_) => Err(ServiceError::invalid(
            "kind",
            format!("{value} is not a kind: use DOMAIN_SETTINGS_KIND_IMAP or DOMAIN_SETTINGS_KIND_EXCHANGE"),
        )
        .into()),
    }
}

#[tonic::async_trait]
impl<S: DomainSettingsStore, P: Prober> DomainSettingsRpc for DomainSettingsApi<S, P> {
    async fn create_domain_settings(
        &self,
        request: Request<proto::CreateDomainSettingsRequest>,
    ) -> Result<Response<proto::CreateDomainSettingsResponse>, Status> {
        let principal = principal(&request)?;
        authorize_write(&principal, "CreateDomainSettings")?;
        let context = probe_context(&request);
        let request = request.into_inner();
        let settings = required_settings(request.domain_settings)?;
        let created = self
            .service
            .create(
                &principal,
                settings_request(settings),
                request.validate_only,
                &request.request_id,
                &context,
            )
            .await?;
        Ok(Response::new(proto::CreateDomainSettingsResponse {
            domain_settings: Some(settings_to_proto(created.value, !request.validate_only)),
            reports: created.reports.into_iter().map(report_to_proto).collect(),
        }))
    }

    async fn get_domain_settings(
        &self,
        request: Request<proto::GetDomainSettingsRequest>,
    ) -> Result<Response<proto::GetDomainSettingsResponse>, Status> {
        let principal = principal(&request)?;
        let settings = self
            .service
            .get(&principal, &request.get_ref().name)
            .await?;
        Ok(Response::new(proto::GetDomainSettingsResponse {
            domain_settings: Some(settings_to_proto(settings, true)),
        }))
    }

    async fn update_domain_settings(
        &self,
        request: Request<proto::UpdateDomainSettingsRequest>,
    ) -> Result<Response<proto::UpdateDomainSettingsResponse>, Status> {
        let principal = principal(&request)?;
        authorize_write(&principal, "UpdateDomainSettings")?;
        let context = probe_context(&request);
        let request = request.into_inner();
        let settings = required_settings(request.domain_settings)?;
        let mask = request
            .update_mask
            .map(|mask| mask.paths)
            .unwrap_or_default();
        let input = settings_input(settings.settings);
        let updated = self
            .service
            .update(
                &principal,
                UpdateRequest {
                    name: &settings.name,
                    etag: &settings.etag,
                    input: &input,
                    mask: &mask,
                    validate_only: request.validate_only,
                },
                &context,
            )
            .await?;
        Ok(Response::new(proto::UpdateDomainSettingsResponse {
            domain_settings: Some(settings_to_proto(updated.value, !request.validate_only)),
            reports: updated.reports.into_iter().map(report_to_proto).collect(),
        }))
    }

    async fn delete_domain_settings(
        &self,
        request: Request<proto::DeleteDomainSettingsRequest>,
    ) -> Result<Response<proto::DeleteDomainSettingsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        self.service
            .delete(&principal, &request.name, &request.etag)
            .await?;
        Ok(Response::new(proto::DeleteDomainSettingsResponse {}))
    }

    async fn list_domain_settings(
        &self,
        request: Request<proto::ListDomainSettingsRequest>,
    ) -> Result<Response<proto::ListDomainSettingsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let page = self
            .service
            .list(
                &principal,
                kind_filter(request.kind)?,
                PageRequest {
                    page_size: request.page_size,
                    page_token: &request.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListDomainSettingsResponse {
            domain_settings: page
                .items
                .into_iter()
                .map(|settings| settings_to_proto(settings, true))
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn resolve_connection_settings(
        &self,
        request: Request<proto::ResolveConnectionSettingsRequest>,
    ) -> Result<Response<proto::ResolveConnectionSettingsResponse>, Status> {
        use proto::resolve_connection_settings_response::Settings;
        let principal = principal(&request)?;
        let (domain, resolution) = self
            .service
            .resolve(&principal, &request.get_ref().email_address)
            .await?;
        let to_oneof = |settings: ServerSettings| match settings {
            ServerSettings::Imap(imap) => Settings::Imap(imap_to_proto(imap)),
            ServerSettings::Exchange(exchange) => Settings::Exchange(exchange_to_proto(exchange)),
        };
        let mut response = proto::ResolveConnectionSettingsResponse {
            domain: domain.to_string(),
            source: proto::SettingsSource::None.into(),
            ..Default::default()
        };
        match resolution {
            Resolution::AdminPreset(preset) => {
                response.source = proto::SettingsSource::AdminPreset.into();
                response.domain_settings = preset.name();
                response.settings = Some(to_oneof(preset.settings));
            }
            Resolution::BuiltinProvider { name, access } => {
                response.source = proto::SettingsSource::BuiltinProvider.into();
                response.provider_name = name.to_owned();
                match access {
                    BuiltinAccess::Servers(settings) => {
                        response.settings = Some(to_oneof(settings))
                    }
                    BuiltinAccess::OAuth(provider) => {
                        response.oauth_provider = oauth_provider_to_proto(provider).into();
                    }
                }
            }
            Resolution::None => {}
        }
        Ok(Response::new(response))
    }

    async fn list_attempted_domains(
        &self,
        request: Request<proto::ListAttemptedDomainsRequest>,
    ) -> Result<Response<proto::ListAttemptedDomainsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.get_ref();
        let page = self
            .service
            .list_attempted(
                &principal,
                PageRequest {
                    page_size: request.page_size,
                    page_token: &request.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListAttemptedDomainsResponse {
            attempted_domains: page
                .items
                .into_iter()
                .map(|attempt| proto::AttemptedDomain {
                    domain: attempt.domain,
                    attempts: attempt.attempts,
                    first_attempt_time: Some(attempt.first_attempt_time.into()),
                    last_attempt_time: Some(attempt.last_attempt_time.into()),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn probe_domain_settings(
        &self,
        request: Request<proto::ProbeDomainSettingsRequest>,
    ) -> Result<Response<proto::ProbeDomainSettingsResponse>, Status> {
        let principal = principal(&request)?;
        authorize_write(&principal, "ProbeDomainSettings")?;
        let context = probe_context(&request);
        let request = request.into_inner();
        let settings = required_settings(request.domain_settings)?;
        let credentials = request
            .test_credentials
            .map(|credentials| {
                ProbeCredentials::parse(
                    "test_credentials",
                    credentials.username,
                    Secret::new(credentials.password),
                )
            })
            .transpose()
            .map_err(ServiceError::InvalidArgument)?;
        let reports = self
            .service
            .probe_settings(
                &principal,
                settings_request(settings),
                credentials,
                &context,
            )
            .await?;
        Ok(Response::new(proto::ProbeDomainSettingsResponse {
            reports: reports.into_iter().map(report_to_proto).collect(),
        }))
    }
}
