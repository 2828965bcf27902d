//! Connecting mailboxes and giving them new credentials: servers resolved as
//! ResolveConnectionSettings finds them, credentials proved (a login probe, or a token refresh)
//! before anything is stored, then sealed.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::domain::Violations;
use crate::domain::channel::{ChannelInput, ParsedChannel};
use crate::domain::connection::{
    Connection, ConnectionKind, ConnectionServers, ConnectionState, DisconnectReason, Health,
    Provider, ServerSource, Usage, address_key, parse_connection_name, parse_inbox_name,
    parse_usages, usages_for_scopes,
};
use crate::domain::credentials::{Credentials, CredentialsError, CredentialsInput};
use crate::domain::domain_settings::{
    Choice, ExchangeScope, ExchangeSettings, ImapSettings, ServerInput, ServerSettings,
    SettingsKind, parse_exchange_url,
};
use crate::domain::email::EmailAddress;
use crate::domain::principal::Principal;
use crate::domain::probe::{ProbeContext, ProbeCredentials, ProbeReport};
use crate::domain::providers::OAuthProvider;
use crate::service::ServiceError;
use crate::service::conditions;
use crate::service::domain_settings::{BuiltinAccess, Resolution};
use crate::service::probing::{ProbeFields, Prober, probe_refused, probe_requests};

use super::store::{
    ConnectionChange, ConnectionInsert, ConnectionInsertOutcome, InboxConnectionStore,
    RequestRecord, StoredRequest,
};
use super::{
    GrantCheck, InboxConnectionService, SettingsResolver, TokenRefresher, address_taken,
    admin_account, caller_user, connection_not_found, inbox_not_found, new_id, request_reused,
    stale,
};

/// Where a connect or reauthorize request holds its servers.
const SERVER_FIELDS: ProbeFields = ProbeFields {
    imap_server: "servers.imap_server",
    smtp_server: "servers.smtp_server",
    exchange_url: "servers.exchange_url",
};

/// The `ServerSettings` message as sent.
#[derive(Debug, Clone)]
pub struct ServersInput {
    pub imap_server: Option<ServerInput>,
    pub smtp_server: Option<ServerInput>,
    pub allow_insecure_certificate: bool,
    pub exchange_url: String,
}

/// A connect request as sent (personal or team).
pub struct ConnectRequest<'a> {
    pub email_address: &'a str,
    pub provider: Choice<Provider>,
    pub credentials: CredentialsInput,
    pub servers: Option<ServersInput>,
    pub usages: Vec<Choice<Usage>>,
    /// `inboxes/{id}` for a team connection.
    pub inbox: &'a str,
    /// Initial channel settings of a team connection (unset: the defaults).
    pub channel_settings: Option<ChannelInput>,
    pub validate_only: bool,
    pub request_id: &'a str,
}

/// A connection and the reports of the probes that proved it.
pub struct Connected {
    pub connection: Connection,
    pub reports: Vec<ProbeReport>,
}

/// The request, checked.
struct Parsed {
    email: EmailAddress,
    provider: Provider,
    /// `None` for HOSTED, which reaches no mailbox.
    credentials: Option<Credentials>,
    /// The channel settings of a team connection.
    channel: Option<ParsedChannel>,
    servers: Option<ServerSettings>,
    usages: Option<Vec<Usage>>,
    inbox_id: Option<i64>,
    request: Option<RequestRecord>,
}

fn method(kind: ConnectionKind) -> &'static str {
    match kind {
        ConnectionKind::Personal => "ConnectPersonalInbox",
        ConnectionKind::Team => "ConnectTeamEmail",
    }
}

fn parse_provider(
    kind: ConnectionKind,
    provider: Choice<Provider>,
) -> Result<Provider, (String, String)> {
    let field = "provider".to_owned();
    match provider {
        Choice::Value(Provider::Hosted) if kind == ConnectionKind::Personal => Err((
            field,
            "PROVIDER_HOSTED is for team addresses only (ConnectTeamEmail)".to_owned(),
        )),
        Choice::Value(provider) => Ok(provider),
        _ => Err((
            field,
            "is required: PROVIDER_GMAIL, PROVIDER_OFFICE365, PROVIDER_IMAP or PROVIDER_EXCHANGE"
                .to_owned(),
        )),
    }
}

/// Servers sent with the request, for the provider they must suit.
fn parse_servers(
    input: &ServersInput,
    provider: Provider,
    violations: &mut Violations,
) -> Option<ServerSettings> {
    match provider {
        Provider::Imap => {
            let mut server = |input: &Option<ServerInput>, field: &str| match input {
                Some(server) => server.parse(field, violations),
                None => {
                    violations.add(field, "is required with provider IMAP");
                    None
                }
            };
            let imap = server(&input.imap_server, SERVER_FIELDS.imap_server);
            let smtp = server(&input.smtp_server, SERVER_FIELDS.smtp_server);
            Some(ServerSettings::Imap(ImapSettings {
                imap_server: imap?,
                smtp_server: smtp?,
                allow_insecure_certificate: input.allow_insecure_certificate,
            }))
        }
        Provider::Exchange => {
            let url = violations.check(parse_exchange_url(
                SERVER_FIELDS.exchange_url,
                &input.exchange_url,
            ))?;
            Some(ServerSettings::Exchange(ExchangeSettings {
                exchange_url: url,
                scopes: vec![ExchangeScope::Email, ExchangeScope::Calendar],
            }))
        }
        Provider::Hosted => {
            violations.add(
                "servers",
                "must be unset for PROVIDER_HOSTED: no mailbox is reached, the team forwards its mail",
            );
            None
        }
        _ => {
            violations.add(
                "servers",
                format!(
                    "must be unset for provider {}, which connects with OAuth",
                    provider.display_name()
                ),
            );
            None
        }
    }
}

fn credentials_error(error: CredentialsError) -> ServiceError {
    match error {
        CredentialsError::Invalid(violations) => ServiceError::InvalidArgument(violations),
        CredentialsError::AccountMismatch(violation) => ServiceError::InvalidValue {
            reason: "OAUTH_ACCOUNT_MISMATCH",
            violations: vec![violation],
        },
    }
}

fn settings_required(domain: &str, provider: Provider, hint: String) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: "SERVER_SETTINGS_REQUIRED",
        message: format!(
            "no {} servers are known for {domain}: {hint}",
            provider.display_name()
        ),
        metadata: BTreeMap::from([("domain".to_owned(), domain.to_owned())]),
    }
}

fn oauth_provider_name(provider: OAuthProvider) -> &'static str {
    match provider {
        OAuthProvider::Google => "PROVIDER_GMAIL",
        OAuthProvider::Microsoft => "PROVIDER_OFFICE365",
    }
}

/// What proving credentials found: the probe reports, and whether they were proved at all (an
/// OAuth grant without a configured client is stored unproved).
struct Proof {
    reports: Vec<ProbeReport>,
    proved: bool,
}

/// The health of a connection whose credentials were proved at `at` (or not at all).
fn health_after(proof: &Proof, at: SystemTime) -> Health {
    Health {
        last_success_time: proof.proved.then_some(at),
        ..Health::default()
    }
}

impl<S, P, O, R> InboxConnectionService<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    pub async fn connect_personal(
        &self,
        principal: &Principal,
        request: ConnectRequest<'_>,
        context: &ProbeContext,
    ) -> Result<Connected, ServiceError> {
        let (account_id, user_id) = caller_user(principal, "ConnectPersonalInbox")?;
        self.connect(
            principal,
            account_id,
            user_id,
            ConnectionKind::Personal,
            request,
            context,
        )
        .await
    }

    pub async fn connect_team(
        &self,
        principal: &Principal,
        request: ConnectRequest<'_>,
        context: &ProbeContext,
    ) -> Result<Connected, ServiceError> {
        let account_id = admin_account(principal, "ConnectTeamEmail")?;
        let user_id = principal.user_id.unwrap_or_default();
        self.connect(
            principal,
            account_id,
            user_id,
            ConnectionKind::Team,
            request,
            context,
        )
        .await
    }

    fn parse(kind: ConnectionKind, request: ConnectRequest<'_>) -> Result<Parsed, ServiceError> {
        let mut violations = Violations::new();
        let email = violations.check(EmailAddress::parse("email_address", request.email_address));
        let provider = match parse_provider(kind, request.provider) {
            Ok(provider) => Some(provider),
            Err((field, description)) => {
                violations.add(field, description);
                None
            }
        };
        let default = match kind {
            ConnectionKind::Personal => &[][..],
            ConnectionKind::Team => &[Usage::Conversations][..],
        };
        let usages = match parse_usages("usages", kind, &request.usages, default, false) {
            Ok(usages) => Some(usages).filter(|usages| !usages.is_empty()),
            Err(found) => {
                return Err(ServiceError::InvalidValue {
                    reason: "USAGE_NOT_ALLOWED",
                    violations: found,
                });
            }
        };
        let inbox_id = match kind {
            ConnectionKind::Team => violations.check(parse_inbox_name("inbox", request.inbox)),
            ConnectionKind::Personal => None,
        };
        let channel = match (kind, request.channel_settings) {
            (ConnectionKind::Team, input) => {
                match input.unwrap_or_default().parse("channel_settings") {
                    Ok(channel) => Some(channel),
                    Err(found) => {
                        found
                            .into_iter()
                            .for_each(|v| violations.add(v.field, v.description));
                        None
                    }
                }
            }
            (ConnectionKind::Personal, _) => None,
        };
        let servers = match (&request.servers, provider) {
            (Some(input), Some(provider)) => parse_servers(input, provider, &mut violations),
            _ => None,
        };
        let request_id = conditions::request_id(request.request_id)?;
        let (email, provider) =
            violations.finish(|| (email.expect("checked"), provider.expect("checked")))?;
        let credentials = match (provider, request.credentials) {
            (Provider::Hosted, CredentialsInput::Missing) => None,
            (Provider::Hosted, _) => {
                return Err(ServiceError::invalid(
                    "credentials",
                    "must be unset for PROVIDER_HOSTED: the service never logs in to a hosted channel's mailbox",
                ));
            }
            (provider, input) => Some(
                input
                    .parse("credentials", provider, &email)
                    .map_err(credentials_error)?,
            ),
        };
        let request = request_id.map(|request_id| RequestRecord {
            request_id,
            method: method(kind),
            // A retry must ask for the same connection.
            fingerprint: format!(
                "{}|{}|{}",
                address_key(&email),
                provider.as_str(),
                inbox_id.unwrap_or_default()
            ),
        });
        Ok(Parsed {
            email,
            provider,
            credentials,
            channel,
            servers,
            usages,
            inbox_id,
            request,
        })
    }

    async fn connect(
        &self,
        principal: &Principal,
        account_id: i64,
        user_id: i64,
        kind: ConnectionKind,
        request: ConnectRequest<'_>,
        context: &ProbeContext,
    ) -> Result<Connected, ServiceError> {
        let validate_only = request.validate_only;
        let parsed = Self::parse(kind, request)?;
        if let Some(request) = &parsed.request
            && let Some(first) = self
                .store
                .find_request(account_id, request.request_id.clone())
                .await?
        {
            return self.replayed(account_id, request, first).await;
        }
        let key = address_key(&parsed.email);
        if kind == ConnectionKind::Personal {
            self.check_not_another_users_address(account_id, user_id, &parsed.email)
                .await?;
        }
        let replaces = match self.store.address_holder(account_id, key).await? {
            None => None,
            Some(holder) => Some(
                self.replaceable(account_id, user_id, kind, &parsed, holder)
                    .await?,
            ),
        };
        if let Some(inbox_id) = parsed.inbox_id
            && self.store.get_inbox(account_id, inbox_id).await?.is_none()
        {
            return Err(inbox_not_found(inbox_id));
        }
        let servers = match parsed.provider.has_servers() {
            true => Some(self.servers(principal, &parsed).await?),
            false => None,
        };
        let channel = match &parsed.channel {
            Some(channel) => {
                self.check_routing(account_id, &channel.routing).await?;
                Some(
                    channel.clone().apply_to(
                        &self
                            .new_channel(account_id, parsed.provider, &parsed.email)
                            .await?,
                    ),
                )
            }
            None => None,
        };
        let (proof, sealed) = match &parsed.credentials {
            Some(credentials) => {
                let keys = self.keys()?;
                let proof = self
                    .prove(
                        account_id,
                        credentials,
                        parsed.provider,
                        servers.as_ref(),
                        context,
                    )
                    .await?;
                (proof, Some((credentials, keys)))
            }
            None => (
                Proof {
                    reports: Vec::new(),
                    proved: false,
                },
                None,
            ),
        };
        let now = self.clock.now();
        let usages = match (&parsed.usages, &servers) {
            (Some(usages), _) => usages.clone(),
            (
                None,
                Some(ConnectionServers {
                    settings: ServerSettings::Exchange(exchange),
                    source: ServerSource::AdminPreset(_),
                }),
            ) if kind == ConnectionKind::Personal => usages_for_scopes(&exchange.scopes),
            (None, _) => match kind {
                ConnectionKind::Personal => vec![Usage::CrmEmail],
                ConnectionKind::Team => vec![Usage::Conversations],
            },
        };
        let connection = Connection {
            id: new_id(),
            account_id,
            email: parsed.email,
            kind,
            provider: parsed.provider,
            owner_user_id: user_id,
            inbox_id: parsed.inbox_id,
            state: ConnectionState::Active,
            disconnect_reason: None,
            usages,
            servers,
            holds_address: true,
            version: 1,
            create_time: now,
            update_time: now,
            state_change_time: now,
            health: health_after(&proof, now),
            channel,
        };
        let reports = proof.reports;
        if validate_only {
            return Ok(Connected {
                connection,
                reports,
            });
        }
        let insert = ConnectionInsert {
            // The monitor checks mailboxes it logs in to; a hosted channel has none.
            next_check_time: sealed.is_some().then(|| now + self.schedule.interval),
            credentials: sealed
                .map(|(credentials, keys)| credentials.seal(keys, account_id, connection.id)),
            replaces: replaces.flatten(),
            request: parsed.request.clone(),
            connection,
        };
        match self.store.insert_connection(insert).await? {
            ConnectionInsertOutcome::Created(connection) => {
                tracing::info!(
                    account_id,
                    connection = %connection.name(),
                    kind = kind.as_str(),
                    provider = connection.provider.as_str(),
                    "connection created"
                );
                Ok(Connected {
                    connection,
                    reports,
                })
            }
            ConnectionInsertOutcome::Held(holder) => {
                let deleted = self.user_deleted(account_id, holder.owner_user_id).await?;
                Err(address_taken(&holder, kind, deleted))
            }
            ConnectionInsertOutcome::InboxMissing => {
                Err(inbox_not_found(parsed.inbox_id.unwrap_or_default()))
            }
            ConnectionInsertOutcome::ReplacedChanged => Err(ServiceError::Aborted {
                reason: "CONCURRENT_CHANGE",
                message: "the connection this one replaces changed meanwhile: retry".to_owned(),
            }),
            ConnectionInsertOutcome::Replayed(first) => {
                let request = parsed.request.expect("only a request id replays");
                self.replayed(account_id, &request, first).await
            }
            // A generated forwarding address another channel has: 36^6 suffixes make this
            // rare enough that asking the caller to retry is the honest answer.
            ConnectionInsertOutcome::ForwardingTaken => Err(ServiceError::Aborted {
                reason: "CONCURRENT_CHANGE",
                message:
                    "the generated forwarding address was just taken by another channel: retry"
                        .to_owned(),
            }),
        }
    }

    async fn replayed(
        &self,
        account_id: i64,
        request: &RequestRecord,
        first: StoredRequest,
    ) -> Result<Connected, ServiceError> {
        if first.method != request.method || first.fingerprint != request.fingerprint {
            return Err(request_reused(&first));
        }
        let connection = self
            .store
            .get_connection(account_id, first.resource_id)
            .await?
            .ok_or_else(|| connection_not_found(first.resource_id))?;
        Ok(Connected {
            connection,
            reports: Vec::new(),
        })
    }

    /// "A personal address must be specific to one user" (seed 004): another user's login
    /// address is theirs.
    async fn check_not_another_users_address(
        &self,
        account_id: i64,
        user_id: i64,
        email: &EmailAddress,
    ) -> Result<(), ServiceError> {
        let users = self
            .store
            .users_with_address(account_id, address_key(email))
            .await?;
        match users
            .iter()
            .find(|user| user.id != user_id && !user.deleted)
        {
            Some(other) => Err(ServiceError::FailedPrecondition {
                reason: "ADDRESS_OF_ANOTHER_USER",
                message: format!(
                    "{email} is the login address of user {}: a personal address must be specific to one user",
                    other.id
                ),
                metadata: BTreeMap::from([("user_id".to_owned(), other.id.to_string())]),
            }),
            None => Ok(()),
        }
    }

    /// What to do about the connection holding the address: replace it (the caller moved the
    /// same personal address to another provider, seed 002), or refuse.
    async fn replaceable(
        &self,
        account_id: i64,
        user_id: i64,
        kind: ConnectionKind,
        parsed: &Parsed,
        holder: Connection,
    ) -> Result<Option<(i64, i64)>, ServiceError> {
        let same_owner = kind == ConnectionKind::Personal
            && holder.kind == ConnectionKind::Personal
            && holder.owner_user_id == user_id;
        if same_owner && holder.provider != parsed.provider {
            return Ok(Some((holder.id, holder.version)));
        }
        let deleted = self.user_deleted(account_id, holder.owner_user_id).await?;
        Err(address_taken(&holder, kind, deleted))
    }

    /// The servers of an IMAP or Exchange connection: the request's, else the domain's preset
    /// or a built-in provider's.
    async fn servers(
        &self,
        principal: &Principal,
        parsed: &Parsed,
    ) -> Result<ConnectionServers, ServiceError> {
        if let Some(settings) = &parsed.servers {
            return Ok(ConnectionServers {
                settings: settings.clone(),
                source: ServerSource::Request,
            });
        }
        let provider = parsed.provider;
        let wanted = match provider {
            Provider::Exchange => SettingsKind::Exchange,
            _ => SettingsKind::Imap,
        };
        let (domain, resolution) = self
            .resolver
            .resolve(principal, parsed.email.as_str())
            .await?;
        let domain = domain.as_str();
        match resolution {
            Resolution::AdminPreset(preset) if preset.settings.kind() == wanted => {
                Ok(ConnectionServers {
                    source: ServerSource::AdminPreset(preset.name()),
                    settings: preset.settings,
                })
            }
            Resolution::AdminPreset(preset) => Err(settings_required(
                domain,
                provider,
                format!(
                    "the admins preset {} settings for it ({}): connect with that provider, or send servers",
                    preset.settings.kind().as_str(),
                    preset.name()
                ),
            )),
            Resolution::BuiltinProvider {
                name,
                access: BuiltinAccess::Servers(settings),
            } if settings.kind() == wanted => Ok(ConnectionServers {
                settings,
                source: ServerSource::BuiltinProvider(name.to_owned()),
            }),
            Resolution::BuiltinProvider {
                name,
                access: BuiltinAccess::OAuth(oauth),
            } => Err(settings_required(
                domain,
                provider,
                format!(
                    "{name} mailboxes no longer accept passwords: connect with {}",
                    oauth_provider_name(oauth)
                ),
            )),
            Resolution::BuiltinProvider { name, .. } => Err(settings_required(
                domain,
                provider,
                format!("{name} is reached over IMAP: connect with PROVIDER_IMAP, or send servers"),
            )),
            Resolution::None => Err(settings_required(
                domain,
                provider,
                "send servers, or ask an admin to preset them for the domain (it is now on their list of attempted domains)".to_owned(),
            )),
        }
    }

    fn keys(&self) -> Result<&crate::domain::sealing::Keyring, ServiceError> {
        self.keys.as_ref().ok_or_else(|| ServiceError::FailedPrecondition {
            reason: "ENCRYPTION_NOT_CONFIGURED",
            message: "this server has no encryption key to store mailbox credentials: the operator must set MAILCONNECT_ENCRYPTION_KEYS".to_owned(),
            metadata: BTreeMap::new(),
        })
    }

    /// Proves the credentials: a login on every server, or a refresh of the OAuth grant (when
    /// the provider's OAuth client is configured). Refuses unless they work.
    async fn prove(
        &self,
        account_id: i64,
        credentials: &Credentials,
        provider: Provider,
        servers: Option<&ConnectionServers>,
        context: &ProbeContext,
    ) -> Result<Proof, ServiceError> {
        match (credentials, servers) {
            (Credentials::Password(login), Some(servers)) => {
                let login = ProbeCredentials {
                    username: login.username.clone(),
                    password: login.password.clone(),
                };
                let context = ProbeContext {
                    account_id: Some(account_id),
                    ..context.clone()
                };
                let reports = self
                    .prober
                    .probe_all(
                        probe_requests(&servers.settings, Some(&login), &SERVER_FIELDS),
                        context,
                    )
                    .await
                    .map_err(probe_refused)?;
                if reports.iter().all(|report| report.outcome.is_success()) {
                    Ok(Proof {
                        reports,
                        proved: true,
                    })
                } else {
                    Err(ServiceError::ProbeFailed { reports })
                }
            }
            (Credentials::OAuth(grant), _) => {
                match self.oauth.check(provider, &grant.refresh_token).await {
                    GrantCheck::Valid => Ok(Proof {
                        reports: Vec::new(),
                        proved: true,
                    }),
                    GrantCheck::NotConfigured => {
                        tracing::warn!(
                            provider = provider.as_str(),
                            "no OAuth client configured for the provider: the grant is stored unverified"
                        );
                        Ok(Proof {
                            reports: Vec::new(),
                            proved: false,
                        })
                    }
                    GrantCheck::Invalid(why) => Err(ServiceError::FailedPrecondition {
                        reason: "OAUTH_GRANT_INVALID",
                        message: format!(
                            "{} refused the grant ({why}): authorize again and send the new refresh token",
                            provider.display_name()
                        ),
                        metadata: BTreeMap::new(),
                    }),
                    GrantCheck::Unavailable(why) => Err(ServiceError::Unavailable(format!(
                        "the {} token endpoint could not prove the grant ({why}); retry with backoff",
                        provider.display_name()
                    ))),
                }
            }
            (Credentials::Password(_), None) => Err(ServiceError::Internal(
                "a password connection without servers".to_owned(),
            )),
        }
    }

    /// New credentials for a connection: proved like a connect, then ACTIVE again.
    pub async fn reauthorize(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
        credentials: CredentialsInput,
        validate_only: bool,
        context: &ProbeContext,
    ) -> Result<Connected, ServiceError> {
        let mut violations = Violations::new();
        let id = violations.check(parse_connection_name("name", name));
        let expected = conditions::expected_version("etag", etag);
        let id = violations.finish(|| id.expect("checked"))?;
        let expected = expected?;
        let connection = self
            .managed_connection(principal, id, "ReauthorizeConnection")
            .await?;
        if connection.disconnect_reason == Some(DisconnectReason::ProviderMigration) {
            return Err(ServiceError::FailedPrecondition {
                reason: "PROVIDER_MIGRATED",
                message: format!(
                    "{} was replaced when {} was connected with another provider: use the new connection",
                    connection.name(),
                    connection.email
                ),
                metadata: BTreeMap::new(),
            });
        }
        if expected.is_some_and(|version| version != connection.version) {
            return Err(stale(name));
        }
        let credentials = credentials
            .parse("credentials", connection.provider, &connection.email)
            .map_err(credentials_error)?;
        let keys = self.keys()?;
        let proof = self
            .prove(
                connection.account_id,
                &credentials,
                connection.provider,
                connection.servers.as_ref(),
                context,
            )
            .await?;
        let now = self.clock.now();
        let reports = proof.reports;
        if validate_only {
            return Ok(Connected {
                connection,
                reports,
            });
        }
        let change = ConnectionChange::Reactivate {
            credentials: credentials.seal(keys, connection.account_id, connection.id),
            verified_at: proof.proved.then_some(now),
            next_check_time: Some(now + self.schedule.interval),
        };
        let connection = self.change(&connection, expected, change, name).await?;
        Ok(Connected {
            connection,
            reports,
        })
    }
}
