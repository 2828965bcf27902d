//! The inbox and connection use cases (seed articles 004, 002 and the connection parts of 003):
//! conversations inboxes, personal and team mailboxes, their sealed credentials, their
//! lifecycle, and the notifications it writes.

mod channels;
mod connect;
mod inboxes;
mod manage;
pub mod store;
mod verify;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::domain::channel::HostedDomains;
use crate::domain::connection::{Connection, ConnectionKind, connection_name, inbox_name};
use crate::domain::domain_name::DomainName;
use crate::domain::inbox::InboxLimits;
use crate::domain::principal::{Principal, Role};
use crate::domain::sealing::Keyring;
use crate::domain::secret::Secret;

use super::ServiceError;
use super::clock::Clock;
use super::domain_settings::{DomainSettingsService, DomainSettingsStore, Resolution};
use super::probing::Prober;
use store::{InboxConnectionStore, StoredRequest};

pub use channels::{SenderPreview, default_address};
pub use connect::{ConnectRequest, Connected, ServersInput};
pub use manage::ListFilter;
pub use store::{ConnectionFilter, TimeKey};
pub use verify::{CodeMailer, RelayMailer, VERIFICATION_ID_PREFIX, VerificationStarted};

/// What the connect use cases need from domain settings: the servers a user's address resolves
/// to, as ResolveConnectionSettings finds them (recording an attempt when nothing is found).
pub trait SettingsResolver: Send + Sync + 'static {
    fn resolve(
        &self,
        principal: &Principal,
        email_address: &str,
    ) -> impl Future<Output = Result<(DomainName, Resolution), ServiceError>> + Send;
}

impl<S: DomainSettingsStore, P: Prober> SettingsResolver for Arc<DomainSettingsService<S, P>> {
    async fn resolve(
        &self,
        principal: &Principal,
        email_address: &str,
    ) -> Result<(DomainName, Resolution), ServiceError> {
        DomainSettingsService::resolve(self, principal, email_address).await
    }
}

/// What proving an OAuth grant at the provider's token endpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantCheck {
    /// The refresh worked.
    Valid,
    /// The provider refused the grant (`invalid_grant`): revoked or expired.
    Invalid(String),
    /// No OAuth client is configured for the provider: the grant cannot be proved.
    NotConfigured,
    /// The endpoint could not be reached or answered something else; nothing is known.
    Unavailable(String),
}

/// Proves OAuth grants by refreshing them at the provider's token endpoint.
pub trait TokenRefresher: Send + Sync + 'static {
    fn check(
        &self,
        provider: crate::domain::connection::Provider,
        refresh_token: &Secret,
    ) -> impl Future<Output = GrantCheck> + Send;
}

/// How the monitor schedules the connections it checks.
#[derive(Debug, Clone, Copy)]
pub struct CheckSchedule {
    pub interval: std::time::Duration,
}

pub struct InboxConnectionService<S, P, O, R> {
    store: S,
    prober: P,
    oauth: O,
    resolver: R,
    clock: Arc<dyn Clock>,
    /// `None` when no encryption key is configured: credentials cannot be stored.
    keys: Option<Keyring>,
    limits: InboxLimits,
    schedule: CheckSchedule,
    hosted: HostedDomains,
    /// The relay verification codes go through; `None` without one.
    mailer: Option<Arc<dyn CodeMailer>>,
}

/// The knobs of the service, from configuration.
pub struct Options {
    pub keys: Option<Keyring>,
    pub limits: InboxLimits,
    pub schedule: CheckSchedule,
    pub hosted: HostedDomains,
    pub mailer: Option<Arc<dyn CodeMailer>>,
}

const ADMINS: &[Role] = &[Role::SuperAdmin, Role::AccountAccess];

fn is_admin(principal: &Principal) -> bool {
    ADMINS.iter().any(|role| principal.has(*role))
}

/// The caller's account; inboxes and connections belong to one.
fn account_of(principal: &Principal) -> Result<i64, ServiceError> {
    principal
        .account_id
        .ok_or_else(|| ServiceError::PermissionDenied {
            message: "inboxes and connections belong to an account and the token names none"
                .to_owned(),
            required: ADMINS.to_vec(),
        })
}

fn admin_account(principal: &Principal, action: &str) -> Result<i64, ServiceError> {
    ServiceError::require_any(&principal.roles, ADMINS, action)?;
    account_of(principal)
}

/// The caller as a user of their account (personal connections and notifications need one).
fn caller_user(principal: &Principal, action: &str) -> Result<(i64, i64), ServiceError> {
    let account_id = account_of(principal)?;
    let user_id = principal
        .user_id
        .ok_or_else(|| ServiceError::PermissionDenied {
            message: format!("{action} acts for a user and the token names none"),
            required: Vec::new(),
        })?;
    Ok((account_id, user_id))
}

fn connection_not_found(id: i64) -> ServiceError {
    ServiceError::not_found(
        "CONNECTION_NOT_FOUND",
        format!("{} not found in this account", connection_name(id)),
    )
}

fn inbox_not_found(id: i64) -> ServiceError {
    ServiceError::not_found(
        "INBOX_NOT_FOUND",
        format!("{} not found in this account", inbox_name(id)),
    )
}

fn stale(name: &str) -> ServiceError {
    ServiceError::Aborted {
        reason: "ETAG_MISMATCH",
        message: format!("{name} changed since the etag was read: get it again and retry"),
    }
}

/// A request id reused for something else than its first request.
fn request_reused(first: &StoredRequest) -> ServiceError {
    ServiceError::invalid(
        "request_id",
        format!(
            "was already used for another {} request; use a new request_id",
            first.method
        ),
    )
}

/// A random id for a new resource: 63 bits, never 0, unguessable across accounts.
fn new_id() -> i64 {
    (rand::random::<u64>() >> 1).max(1) as i64
}

/// Why an address cannot be connected: who holds it, for a UI to act on.
fn address_taken(
    holder: &Connection,
    wanted: ConnectionKind,
    holder_deleted: bool,
) -> ServiceError {
    let address = holder.email.as_str();
    let (reason, message) = match (holder.kind, wanted) {
        (ConnectionKind::Team, ConnectionKind::Personal) => (
            "ADDRESS_CONNECTED_AS_TEAM",
            format!(
                "{address} is a team address of this account ({}): an address is personal or team, never both; connect another address for your own email",
                holder.inbox_id.map(inbox_name).unwrap_or_default()
            ),
        ),
        (ConnectionKind::Personal, ConnectionKind::Team) => (
            "ADDRESS_CONNECTED_AS_PERSONAL",
            if holder_deleted {
                format!(
                    "{address} is connected as a personal address of user {}, who no longer exists: release it with ReleaseAddress, then connect it as a team address",
                    holder.owner_user_id
                )
            } else {
                format!(
                    "{address} is connected as a personal address of user {}: an address is personal or team, never both; ask them to disconnect it first",
                    holder.owner_user_id
                )
            },
        ),
        (ConnectionKind::Team, ConnectionKind::Team) => (
            "ADDRESS_ALREADY_CONNECTED",
            format!(
                "{address} is already a channel of {}: a team address lives in one inbox only",
                holder.inbox_id.map(inbox_name).unwrap_or_default()
            ),
        ),
        (ConnectionKind::Personal, ConnectionKind::Personal) => (
            "ADDRESS_ALREADY_CONNECTED",
            if holder_deleted {
                format!(
                    "{address} is connected by user {}, who no longer exists: an admin can release it with ReleaseAddress",
                    holder.owner_user_id
                )
            } else {
                format!(
                    "{address} is already connected ({}): reauthorize that connection instead, or ask its owner to disconnect it",
                    holder.name()
                )
            },
        ),
    };
    let mut metadata = BTreeMap::from([
        ("holder_kind".to_owned(), holder.kind.as_str().to_owned()),
        (
            "holder_user_id".to_owned(),
            holder.owner_user_id.to_string(),
        ),
        ("holder_deleted".to_owned(), holder_deleted.to_string()),
        ("connection".to_owned(), holder.name()),
    ]);
    if let Some(inbox) = holder.inbox_id {
        metadata.insert("inbox".to_owned(), inbox_name(inbox));
    }
    ServiceError::AlreadyExists {
        reason,
        message,
        metadata,
    }
}

impl<S, P, O, R> InboxConnectionService<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    pub fn new(
        store: S,
        prober: P,
        oauth: O,
        resolver: R,
        clock: Arc<dyn Clock>,
        options: Options,
    ) -> Self {
        Self {
            store,
            prober,
            oauth,
            resolver,
            clock,
            keys: options.keys,
            limits: options.limits,
            schedule: options.schedule,
            hosted: options.hosted,
            mailer: options.mailer,
        }
    }

    /// A connection the caller may see: their own, any team connection, or any as an admin.
    /// Others' personal connections are answered exactly like missing ones.
    async fn visible_connection(
        &self,
        principal: &Principal,
        id: i64,
    ) -> Result<Connection, ServiceError> {
        let account_id = account_of(principal)?;
        let connection = self
            .store
            .get_connection(account_id, id)
            .await?
            .ok_or_else(|| connection_not_found(id))?;
        let visible = is_admin(principal)
            || connection.kind == ConnectionKind::Team
            || connection.managed_by(principal.user_id);
        if visible {
            Ok(connection)
        } else {
            Err(connection_not_found(id))
        }
    }

    /// A connection the caller may change: the owner (personal), the connecting user (team) or
    /// an admin.
    async fn managed_connection(
        &self,
        principal: &Principal,
        id: i64,
        action: &str,
    ) -> Result<Connection, ServiceError> {
        let connection = self.visible_connection(principal, id).await?;
        if is_admin(principal) || connection.managed_by(principal.user_id) {
            Ok(connection)
        } else {
            Err(ServiceError::PermissionDenied {
                message: format!(
                    "{action} of a team connection needs the role super_admin or account_access, or to be the user who connected it"
                ),
                required: ADMINS.to_vec(),
            })
        }
    }

    /// Whether the directory says the user was deleted.
    async fn user_deleted(&self, account_id: i64, user_id: i64) -> Result<bool, ServiceError> {
        Ok(self
            .store
            .directory_user(account_id, user_id)
            .await?
            .is_some_and(|user| user.deleted))
    }
}
