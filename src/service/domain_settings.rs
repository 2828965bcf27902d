//! The domain settings use cases (seed article 003): admins preset IMAP + SMTP or Exchange servers
//! per email domain, accepted only after the probe proves they answer; every user then resolves
//! them when connecting a mailbox.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::Violations;
use crate::domain::domain_name::DomainName;
use crate::domain::domain_settings::{
    DomainSettings, ServerSettings, SettingsInput, SettingsKind, UpdateError, apply_update,
    parse_resource_name,
};
use crate::domain::email::EmailAddress;
use crate::domain::principal::{Principal, Role};
use crate::domain::probe::{ProbeContext, ProbeCredentials, ProbeRefused, ProbeReport};
use crate::domain::providers::{OAuthProvider, Reach, provider_for};
use crate::service::StoreError;

use super::ServiceError;
use super::attempts::{AttemptRecorder, AttemptStore};
use super::clock::Clock;
use super::conditions;
use super::pagination::{Page, PageRequest, bad_token, paginate};
use super::probing::{ProbeFields, Prober, probe_refused, probe_requests};

/// What an insert found.
pub enum InsertOutcome {
    Created(DomainSettings),
    /// The domain already has settings of this kind.
    Exists(SettingsKind),
    /// The request id was used before; here is the first result.
    Replayed(DomainSettings),
}

/// What a conditional write found.
pub enum WriteOutcome<T> {
    Done(T),
    NotFound,
    /// The etag was stale.
    Stale,
}

/// A domain users tried to connect without a preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptedDomain {
    pub domain: String,
    pub attempts: i64,
    pub first_attempt_time: SystemTime,
    pub last_attempt_time: SystemTime,
}

/// Where presets are kept, and the attempts at domains without one.
pub trait DomainSettingsStore: AttemptStore {
    /// Inserts new settings (version 1) unless the domain has some; records the request id with the
    /// result; removes the domain from the attempted list.
    fn insert(
        &self,
        account_id: i64,
        settings: DomainSettings,
        request_id: Option<String>,
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send;
    /// The first result of a create with this request id, and its domain.
    fn find_request(
        &self,
        account_id: i64,
        request_id: String,
    ) -> impl Future<Output = Result<Option<DomainSettings>, StoreError>> + Send;
    fn get(
        &self,
        account_id: i64,
        domain: DomainName,
    ) -> impl Future<Output = Result<Option<DomainSettings>, StoreError>> + Send;
    /// Replaces the servers (bumping the version) if the current version is `expected_version`
    /// (any version when `None`).
    fn update(
        &self,
        account_id: i64,
        settings: DomainSettings,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<WriteOutcome<DomainSettings>, StoreError>> + Send;
    fn delete(
        &self,
        account_id: i64,
        domain: DomainName,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<WriteOutcome<()>, StoreError>> + Send;
    /// Settings ordered by domain, after `after_domain`, at most `limit`.
    fn list(
        &self,
        account_id: i64,
        kind: Option<SettingsKind>,
        after_domain: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DomainSettings>, StoreError>> + Send;
    /// Attempted domains without settings, newest attempt first, after the key
    /// `(last_attempt_micros, domain)`, at most `limit`.
    fn list_attempts(
        &self,
        account_id: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AttemptedDomain>, StoreError>> + Send;
}

/// The raw fields of a DomainSettings message.
pub struct SettingsRequest {
    pub domain: String,
    pub settings: SettingsInput,
}

/// An update as the caller sent it.
pub struct UpdateRequest<'a> {
    pub name: &'a str,
    pub etag: &'a str,
    pub input: &'a SettingsInput,
    pub mask: &'a [String],
    pub validate_only: bool,
}

/// What a write returns: the settings and the probe reports behind them.
pub struct Probed<T> {
    pub value: T,
    pub reports: Vec<ProbeReport>,
}

/// Where resolved settings came from.
pub enum Resolution {
    AdminPreset(DomainSettings),
    BuiltinProvider {
        name: &'static str,
        access: BuiltinAccess,
    },
    None,
}

/// How a well-known provider's mailboxes connect.
pub enum BuiltinAccess {
    Servers(ServerSettings),
    OAuth(OAuthProvider),
}

pub struct DomainSettingsService<S, P> {
    store: S,
    attempts: Arc<AttemptRecorder<S>>,
    prober: P,
    clock: Arc<dyn Clock>,
}

const WRITERS: &[Role] = &[Role::SuperAdmin, Role::AccountAccess];

/// The caller's account; a token without one cannot use per-account methods.
fn account_of(principal: &Principal) -> Result<i64, ServiceError> {
    principal
        .account_id
        .ok_or_else(|| ServiceError::PermissionDenied {
            message: "domain settings belong to an account and the token names none".to_owned(),
            required: WRITERS.to_vec(),
        })
}

fn writer_account(principal: &Principal, action: &str) -> Result<i64, ServiceError> {
    ServiceError::require_any(&principal.roles, WRITERS, action)?;
    account_of(principal)
}

/// Refuses a caller who may not write or probe settings, before the transport reads the request:
/// a caller without the role learns nothing about what it sent (PERMISSION_DENIED comes before
/// INVALID_ARGUMENT).
pub fn authorize_write(principal: &Principal, action: &str) -> Result<(), ServiceError> {
    writer_account(principal, action).map(drop)
}

fn not_found(domain: &DomainName) -> ServiceError {
    ServiceError::not_found(
        "DOMAIN_SETTINGS_NOT_FOUND",
        format!("no settings for the domain {domain} in this account"),
    )
}

fn stale(domain: &DomainName) -> ServiceError {
    ServiceError::Aborted {
        reason: "ETAG_MISMATCH",
        message: format!(
            "the settings of {domain} changed since the etag was read: get them again and retry"
        ),
    }
}

fn already_exists(domain: &DomainName, kind: SettingsKind) -> ServiceError {
    let other = match kind {
        SettingsKind::Imap => "IMAP",
        SettingsKind::Exchange => "Exchange",
    };
    ServiceError::AlreadyExists {
        reason: "DOMAIN_ALREADY_CONFIGURED",
        message: format!(
            "{domain} already has {other} settings; a domain has IMAP or Exchange settings, never both: update or delete domainSettings/{domain}"
        ),
        metadata: BTreeMap::from([
            ("existing_kind".to_owned(), kind.as_str().to_owned()),
            ("domain".to_owned(), domain.to_string()),
        ]),
    }
}

/// Where the servers of a DomainSettings message are, for the reports' field paths.
const SETTINGS_FIELDS: ProbeFields = ProbeFields {
    imap_server: "domain_settings.imap.imap_server",
    smtp_server: "domain_settings.imap.smtp_server",
    exchange_url: "domain_settings.exchange.exchange_url",
};

impl<S: DomainSettingsStore, P: Prober> DomainSettingsService<S, P> {
    /// For the use-case tests (in storage, which holds the real store) to script the prober.
    #[cfg(test)]
    pub(crate) fn prober(&self) -> &P {
        &self.prober
    }

    /// `attempts` counts the attempts at domains without a preset; its flusher is the
    /// application's to run.
    pub fn new(
        store: S,
        attempts: Arc<AttemptRecorder<S>>,
        prober: P,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            attempts,
            prober,
            clock,
        }
    }

    /// Runs every probe the settings need, concurrently.
    async fn probe(
        &self,
        account_id: i64,
        settings: &ServerSettings,
        credentials: Option<&ProbeCredentials>,
        context: &ProbeContext,
    ) -> Result<Vec<ProbeReport>, ServiceError> {
        let context = ProbeContext {
            account_id: Some(account_id),
            ..context.clone()
        };
        self.prober
            .probe_all(
                probe_requests(settings, credentials, &SETTINGS_FIELDS),
                context,
            )
            .await
            .map_err(probe_refused)
    }

    /// Probes and refuses unless every server passed.
    async fn probe_or_refuse(
        &self,
        account_id: i64,
        settings: &ServerSettings,
        context: &ProbeContext,
    ) -> Result<Vec<ProbeReport>, ServiceError> {
        let reports = self.probe(account_id, settings, None, context).await?;
        if reports.iter().all(|report| report.outcome.is_success()) {
            Ok(reports)
        } else {
            Err(ServiceError::ProbeFailed { reports })
        }
    }

    fn parse_settings(
        request: &SettingsRequest,
    ) -> Result<(DomainName, ServerSettings), ServiceError> {
        let mut violations = Violations::new();
        let domain = violations.check(DomainName::parse("domain_settings.domain", &request.domain));
        let settings = request.settings.parse("domain_settings", &mut violations);
        Ok(violations
            .finish(|| (domain, settings))
            .map(|(d, s)| (d.expect("checked"), s.expect("checked")))?)
    }

    pub async fn create(
        &self,
        principal: &Principal,
        request: SettingsRequest,
        validate_only: bool,
        request_id: &str,
        context: &ProbeContext,
    ) -> Result<Probed<DomainSettings>, ServiceError> {
        let account_id = writer_account(principal, "CreateDomainSettings")?;
        let request_id = conditions::request_id(request_id)?;
        let (domain, settings) = Self::parse_settings(&request)?;
        if let Some(id) = &request_id
            && let Some(first) = self.store.find_request(account_id, id.clone()).await?
        {
            return replay(first, &domain);
        }
        // A herd retrying while the probes are busy would otherwise each read the database
        // first, taking it from the calls being served.
        if !self
            .prober
            .has_room(probe_requests(&settings, None, &SETTINGS_FIELDS).len())
        {
            return Err(probe_refused(ProbeRefused::Busy));
        }
        if let Some(existing) = self.store.get(account_id, domain.clone()).await? {
            // A concurrent call with this request id may have created it since the lookup
            // above: that caller's answer, not ALREADY_EXISTS (races::one_request_id_*).
            if let Some(id) = request_id
                && let Some(first) = self.store.find_request(account_id, id).await?
            {
                return replay(first, &domain);
            }
            return Err(already_exists(&domain, existing.settings.kind()));
        }
        let reports = self.probe_or_refuse(account_id, &settings, context).await?;
        let now = self.clock.now();
        let candidate = DomainSettings {
            domain: domain.clone(),
            settings,
            version: 1,
            create_time: now,
            update_time: now,
            updated_by_user_id: principal.user_id.unwrap_or_default(),
            last_verified_time: Some(now),
        };
        if validate_only {
            return Ok(Probed {
                value: candidate,
                reports,
            });
        }
        match self.store.insert(account_id, candidate, request_id).await? {
            InsertOutcome::Created(value) => {
                tracing::info!(account_id, domain = %domain, kind = value.settings.kind().as_str(), "domain settings created");
                Ok(Probed { value, reports })
            }
            InsertOutcome::Exists(kind) => Err(already_exists(&domain, kind)),
            InsertOutcome::Replayed(first) => replay(first, &domain),
        }
    }

    pub async fn get(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<DomainSettings, ServiceError> {
        let account_id = account_of(principal)?;
        let domain = parse_resource_name("name", name)?;
        self.store
            .get(account_id, domain.clone())
            .await?
            .ok_or_else(|| not_found(&domain))
    }

    pub async fn update(
        &self,
        principal: &Principal,
        request: UpdateRequest<'_>,
        context: &ProbeContext,
    ) -> Result<Probed<DomainSettings>, ServiceError> {
        let UpdateRequest {
            name,
            etag,
            input,
            mask,
            validate_only,
        } = request;
        let account_id = writer_account(principal, "UpdateDomainSettings")?;
        let mut violations = Violations::new();
        let domain = violations.check(parse_resource_name("domain_settings.name", name));
        let expected = conditions::expected_version("domain_settings.etag", etag);
        let domain = violations.finish(|| domain.expect("checked"))?;
        let expected = expected?;
        let existing = self
            .store
            .get(account_id, domain.clone())
            .await?
            .ok_or_else(|| not_found(&domain))?;
        if expected.is_some_and(|version| version != existing.version) {
            return Err(stale(&domain));
        }
        let next = apply_update(&existing.settings, input, mask).map_err(|error| match error {
            UpdateError::Invalid(violations) => ServiceError::InvalidArgument(violations),
            UpdateError::KindMismatch { existing, requested } => ServiceError::FailedPrecondition {
                reason: "SETTINGS_KIND_MISMATCH",
                message: format!(
                    "{domain} has {} settings and an update cannot switch it to {}: delete domainSettings/{domain} and create it again",
                    existing.as_str(),
                    requested.as_str()
                ),
                metadata: BTreeMap::from([
                    ("existing_kind".to_owned(), existing.as_str().to_owned()),
                    ("requested_kind".to_owned(), requested.as_str().to_owned()),
                ]),
            },
        })?;
        let reports = if existing.settings.needs_probe_after(&next) {
            self.probe_or_refuse(account_id, &next, context).await?
        } else {
            Vec::new()
        };
        let now = self.clock.now();
        let candidate = DomainSettings {
            settings: next,
            update_time: now,
            updated_by_user_id: principal.user_id.unwrap_or_default(),
            last_verified_time: if reports.is_empty() {
                existing.last_verified_time
            } else {
                Some(now)
            },
            ..existing.clone()
        };
        if validate_only {
            return Ok(Probed {
                value: candidate,
                reports,
            });
        }
        match self
            .store
            .update(account_id, candidate, Some(existing.version))
            .await?
        {
            WriteOutcome::Done(value) => Ok(Probed { value, reports }),
            WriteOutcome::NotFound => Err(not_found(&domain)),
            // Someone wrote between our read and our write.
            WriteOutcome::Stale => Err(stale(&domain)),
        }
    }

    pub async fn delete(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
    ) -> Result<(), ServiceError> {
        let account_id = writer_account(principal, "DeleteDomainSettings")?;
        let mut violations = Violations::new();
        let domain = violations.check(parse_resource_name("name", name));
        let expected = conditions::expected_version("etag", etag);
        let domain = violations.finish(|| domain.expect("checked"))?;
        match self
            .store
            .delete(account_id, domain.clone(), expected?)
            .await?
        {
            WriteOutcome::Done(()) => Ok(()),
            WriteOutcome::NotFound => Err(not_found(&domain)),
            WriteOutcome::Stale => Err(stale(&domain)),
        }
    }

    pub async fn list(
        &self,
        principal: &Principal,
        kind: Option<SettingsKind>,
        page: PageRequest<'_>,
    ) -> Result<Page<DomainSettings>, ServiceError> {
        let account_id = account_of(principal)?;
        let filter = format!(
            "domain_settings:{}",
            kind.map_or("any", SettingsKind::as_str)
        );
        let (size, after) = page.decode(&filter)?;
        let items = self.store.list(account_id, kind, after, size + 1).await?;
        Ok(paginate(items, size, &filter, |last| {
            last.domain.to_string()
        }))
    }

    /// The hot path: one read; an attempt at a domain without a preset is counted in memory and
    /// written behind (see `attempts`).
    pub async fn resolve(
        &self,
        principal: &Principal,
        email_address: &str,
    ) -> Result<(DomainName, Resolution), ServiceError> {
        let account_id = account_of(principal)?;
        let email = EmailAddress::parse("email_address", email_address)?;
        let domain = DomainName::parse("email_address", email.domain())?;
        if let Some(preset) = self.store.get(account_id, domain.clone()).await? {
            return Ok((domain, Resolution::AdminPreset(preset)));
        }
        let resolution = match provider_for(domain.as_str()) {
            Some(provider) => Resolution::BuiltinProvider {
                name: provider.name,
                access: match provider.reach() {
                    Reach::Servers(imap) => BuiltinAccess::Servers(ServerSettings::Imap(imap)),
                    Reach::OAuth(oauth) => BuiltinAccess::OAuth(oauth),
                },
            },
            None => {
                // Only what nobody knows goes on the admins' to-do list.
                self.attempts.record(account_id, &domain);
                Resolution::None
            }
        };
        Ok((domain, resolution))
    }

    pub async fn list_attempted(
        &self,
        principal: &Principal,
        page: PageRequest<'_>,
    ) -> Result<Page<AttemptedDomain>, ServiceError> {
        let account_id = writer_account(principal, "ListAttemptedDomains")?;
        const FILTER: &str = "attempted_domains";
        let (size, after) = page.decode(FILTER)?;
        let after = after
            .map(|key| {
                key.split_once(':')
                    .and_then(|(time, domain)| Some((time.parse().ok()?, domain.to_owned())))
                    .ok_or_else(bad_token)
            })
            .transpose()?;
        // This replica's pending counts first, so that they are part of what is read.
        self.attempts.flush().await?;
        let items = self
            .store
            .list_attempts(account_id, after, size + 1)
            .await?;
        Ok(paginate(items, size, FILTER, |last| {
            let micros = crate::domain::time::to_micros(last.last_attempt_time);
            format!("{micros}:{}", last.domain)
        }))
    }

    /// Probes settings without storing anything; failures are reported, not raised.
    pub async fn probe_settings(
        &self,
        principal: &Principal,
        request: SettingsRequest,
        credentials: Option<ProbeCredentials>,
        context: &ProbeContext,
    ) -> Result<Vec<ProbeReport>, ServiceError> {
        let account_id = writer_account(principal, "ProbeDomainSettings")?;
        let (_, settings) = Self::parse_settings(&request)?;
        self.probe(account_id, &settings, credentials.as_ref(), context)
            .await
    }
}

/// The first result of a create, for a retry with the same request id.
fn replay(
    first: DomainSettings,
    domain: &DomainName,
) -> Result<Probed<DomainSettings>, ServiceError> {
    if &first.domain != domain {
        return Err(ServiceError::invalid(
            "request_id",
            format!(
                "was already used to create the settings of {}; use a new request_id for another domain",
                first.domain
            ),
        ));
    }
    Ok(Probed {
        value: first,
        reports: Vec::new(),
    })
}
