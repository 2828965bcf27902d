//! Reading connections and managing their lifecycle (seed 002): deactivate, delete, usages,
//! releasing an address whose holder cannot, and the caller's notifications.

use crate::domain::Violations;
use crate::domain::connection::{
    Connection, ConnectionKind, ConnectionState, Usage, address_key, parse_connection_name,
    parse_inbox_name, parse_usages,
};
use crate::domain::domain_settings::Choice;
use crate::domain::email::EmailAddress;
use crate::domain::notification::Notification;
use crate::domain::principal::Principal;
use crate::service::ServiceError;
use crate::service::conditions;
use crate::service::domain_settings::WriteOutcome;
use crate::service::pagination::{Page, PageRequest, bad_token, paginate};
use crate::service::probing::Prober;

use super::inboxes::{time_key, time_page};
use super::store::{ConnectionChange, ConnectionFilter, InboxConnectionStore};
use super::{
    InboxConnectionService, SettingsResolver, TokenRefresher, account_of, admin_account,
    caller_user, connection_not_found, is_admin, stale,
};

/// The filters of ListConnections as sent.
pub struct ListFilter<'a> {
    pub kind: Choice<ConnectionKind>,
    pub inbox: &'a str,
    pub owner_user_id: i64,
    pub state: Choice<ConnectionState>,
}

/// A name and an optional etag, checked together.
pub(super) fn name_and_version(name: &str, etag: &str) -> Result<(i64, Option<i64>), ServiceError> {
    let mut violations = Violations::new();
    let id = violations.check(parse_connection_name("name", name));
    let expected = conditions::expected_version("etag", etag);
    let id = violations.finish(|| id.expect("checked"))?;
    Ok((id, expected?))
}

pub(super) fn outcome(
    result: WriteOutcome<Connection>,
    id: i64,
    name: &str,
) -> Result<Connection, ServiceError> {
    match result {
        WriteOutcome::Done(connection) => Ok(connection),
        WriteOutcome::NotFound => Err(connection_not_found(id)),
        WriteOutcome::Stale => Err(stale(name)),
    }
}

impl<S, P, O, R> InboxConnectionService<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    /// Applies `change` to the connection (if still at `expected`), as of now.
    pub(super) async fn change(
        &self,
        connection: &Connection,
        expected: Option<i64>,
        change: ConnectionChange,
        name: &str,
    ) -> Result<Connection, ServiceError> {
        let result = self
            .store
            .change_connection(
                connection.account_id,
                connection.id,
                expected,
                change,
                self.clock.now(),
            )
            .await?;
        outcome(result, connection.id, name)
    }

    pub async fn get_connection(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<Connection, ServiceError> {
        let id = parse_connection_name("name", name)?;
        self.visible_connection(principal, id).await
    }

    pub async fn list_connections(
        &self,
        principal: &Principal,
        filter: ListFilter<'_>,
        page: PageRequest<'_>,
    ) -> Result<Page<Connection>, ServiceError> {
        let account_id = account_of(principal)?;
        let mut violations = Violations::new();
        let kind = match filter.kind {
            Choice::Unspecified => None,
            Choice::Value(kind) => Some(kind),
            Choice::Unknown(value) => {
                violations.add("kind", format!("{value} is not a connection kind"));
                None
            }
        };
        let state = match filter.state {
            Choice::Unspecified => None,
            Choice::Value(state) => Some(state),
            Choice::Unknown(value) => {
                violations.add("state", format!("{value} is not a connection state"));
                None
            }
        };
        let inbox_id = match filter.inbox {
            "" => None,
            inbox => violations.check(parse_inbox_name("inbox", inbox)),
        };
        if filter.owner_user_id < 0 {
            violations.add("owner_user_id", "must be a user id, or 0 for any");
        }
        let fingerprint = format!(
            "connections:{}:{}:{}:{}",
            kind.map_or("", ConnectionKind::as_str),
            filter.inbox,
            filter.owner_user_id,
            state.map_or("", ConnectionState::as_str)
        );
        // Every bad field at once: the filters' and the page's.
        let (size, after) = match (violations.finish(|| ()), time_page(&page, &fingerprint)) {
            (Ok(()), page) => page?,
            (Err(mut found), Err(ServiceError::InvalidArgument(more))) => {
                found.extend(more);
                return Err(found.into());
            }
            (Err(found), _) => return Err(found.into()),
        };
        let filter = ConnectionFilter {
            kind,
            inbox_id,
            owner_user_id: (filter.owner_user_id > 0).then_some(filter.owner_user_id),
            state,
            visible_to: if is_admin(principal) {
                None
            } else {
                Some(principal.user_id.unwrap_or_default())
            },
        };
        let connections = self
            .store
            .list_connections(account_id, filter, after, size + 1)
            .await?;
        Ok(paginate(connections, size, &fingerprint, |connection| {
            time_key(connection.create_time, connection.id)
        }))
    }

    /// DEACTIVATED; idempotent on a deactivated connection.
    pub async fn deactivate(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
    ) -> Result<Connection, ServiceError> {
        let (id, expected) = name_and_version(name, etag)?;
        let connection = self
            .managed_connection(principal, id, "DeactivateConnection")
            .await?;
        if expected.is_some_and(|version| version != connection.version) {
            return Err(stale(name));
        }
        if connection.state == ConnectionState::Deactivated {
            return Ok(connection);
        }
        self.change(&connection, expected, ConnectionChange::Deactivate, name)
            .await
    }

    pub async fn delete_connection(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
    ) -> Result<Connection, ServiceError> {
        let (id, expected) = name_and_version(name, etag)?;
        let connection = self
            .managed_connection(principal, id, "DeleteConnection")
            .await?;
        let actor = principal.user_id.unwrap_or_default();
        let result = self
            .store
            .delete_connection(connection.account_id, id, expected, actor)
            .await?;
        let deleted = outcome(result, id, name)?;
        tracing::info!(
            account_id = deleted.account_id,
            connection = name,
            "connection deleted"
        );
        Ok(deleted)
    }

    pub async fn set_usages(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
        usages: &[Choice<Usage>],
    ) -> Result<Connection, ServiceError> {
        let (id, expected) = name_and_version(name, etag)?;
        let connection = self.managed_connection(principal, id, "SetUsages").await?;
        let usages =
            parse_usages("usages", connection.kind, usages, &[], true).map_err(|violations| {
                ServiceError::InvalidValue {
                    reason: "USAGE_NOT_ALLOWED",
                    violations,
                }
            })?;
        self.change(
            &connection,
            expected,
            ConnectionChange::SetUsages(usages),
            name,
        )
        .await
    }

    /// Deletes whatever connection holds the address (typically a personal connection of a
    /// user who no longer exists), so that it can be connected again.
    pub async fn release_address(
        &self,
        principal: &Principal,
        email_address: &str,
    ) -> Result<Connection, ServiceError> {
        let account_id = admin_account(principal, "ReleaseAddress")?;
        let email = EmailAddress::parse("email_address", email_address)?;
        let holder = self
            .store
            .address_holder(account_id, address_key(&email))
            .await?
            .ok_or_else(|| {
                ServiceError::not_found(
                    "ADDRESS_NOT_CONNECTED",
                    format!("no connection of this account holds {email}"),
                )
            })?;
        let actor = principal.user_id.unwrap_or_default();
        let result = self
            .store
            .delete_connection(account_id, holder.id, Some(holder.version), actor)
            .await?;
        let name = holder.name();
        let released = outcome(result, holder.id, &name)?;
        tracing::info!(account_id, connection = %name, "address released");
        Ok(released)
    }

    /// The caller's notifications, newest first.
    pub async fn list_notifications(
        &self,
        principal: &Principal,
        page: PageRequest<'_>,
    ) -> Result<Page<Notification>, ServiceError> {
        let (account_id, user_id) = caller_user(principal, "ListNotifications")?;
        const FILTER: &str = "notifications";
        let (size, before) = page.decode(FILTER)?;
        let before = before
            .map(|key| key.parse::<i64>().map_err(|_| bad_token()))
            .transpose()?;
        let notifications = self
            .store
            .list_notifications(account_id, user_id, before, size + 1)
            .await?;
        Ok(paginate(notifications, size, FILTER, |last| {
            last.id.to_string()
        }))
    }
}
