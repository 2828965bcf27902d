//! Inboxes, connections and their sealed credentials in the database. The product's rule that an
//! address is held once per account is the unique index `connections_address_holder`; every
//! state change writes its notifications in the same transaction.

use std::time::SystemTime;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::channels;
use super::directory::{load_account, load_teams, load_user, load_users};
use super::domain_settings::SettingsJson;
use super::notifications::write_notifications;
use super::schema::{accounts, connection_credentials, connections, inbox_requests, inboxes};
use super::verifications;
use super::{Database, DbConnection, StoreError, exclusive, from_micros, to_micros};
use crate::domain::channel::ChannelSettings;
use crate::domain::connection::{
    Connection, ConnectionKind, ConnectionServers, ConnectionState, DisconnectReason, Health,
    Provider, ServerSource, Usage, address_key,
};
use crate::domain::credentials::SealedCredentials;
use crate::domain::directory::{Account, Tier, User};
use crate::domain::email::EmailAddress;
use crate::domain::inbox::Inbox;
use crate::domain::notification::{Event, Notification};
use crate::service::domain_settings::WriteOutcome;
use crate::service::inbox_connections::store::{
    AttemptOutcome, CodeStart, CodeStartOutcome, ConnectionChange, ConnectionFilter,
    ConnectionInsert, ConnectionInsertOutcome, InboxConnectionStore, InboxDelete, InboxInsert,
    RequestRecord, RoutingDirectory, StoredRequest, TimeKey,
};
use crate::service::key_rotation::{CredentialStore, StoredCredentials};
use crate::service::monitor::MonitorStore;

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("a stored connection has an invalid {what}"))
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = inboxes)]
struct InboxRow {
    id: i64,
    account_id: i64,
    display_name: String,
    version: i64,
    created_by_user_id: i64,
    create_time: i64,
    update_time: i64,
}

impl InboxRow {
    fn from_domain(inbox: &Inbox) -> Self {
        Self {
            id: inbox.id,
            account_id: inbox.account_id,
            display_name: inbox.display_name.clone(),
            version: inbox.version,
            created_by_user_id: inbox.created_by_user_id,
            create_time: to_micros(inbox.create_time),
            update_time: to_micros(inbox.update_time),
        }
    }

    fn into_domain(self) -> Inbox {
        Inbox {
            id: self.id,
            account_id: self.account_id,
            display_name: self.display_name,
            version: self.version,
            created_by_user_id: self.created_by_user_id,
            create_time: from_micros(self.create_time),
            update_time: from_micros(self.update_time),
        }
    }
}

/// A connection's servers as stored in `servers`.
#[derive(Serialize, Deserialize)]
struct ServersJson {
    /// `request`, `preset:{domainSettings name}` or `builtin:{provider name}`.
    source: String,
    settings: SettingsJson,
}

impl ServersJson {
    fn encode(servers: &ConnectionServers) -> String {
        let source = match &servers.source {
            ServerSource::Request => "request".to_owned(),
            ServerSource::AdminPreset(name) => format!("preset:{name}"),
            ServerSource::BuiltinProvider(name) => format!("builtin:{name}"),
        };
        serde_json::to_string(&ServersJson {
            source,
            settings: SettingsJson::from_domain(&servers.settings),
        })
        .expect("servers always serialise")
    }

    fn decode(text: &str) -> Result<ConnectionServers, StoreError> {
        let json: ServersJson = serde_json::from_str(text).map_err(|_| corrupt("servers"))?;
        let source = match json.source.split_once(':') {
            None if json.source == "request" => ServerSource::Request,
            Some(("preset", name)) => ServerSource::AdminPreset(name.to_owned()),
            Some(("builtin", name)) => ServerSource::BuiltinProvider(name.to_owned()),
            _ => return Err(corrupt("servers source")),
        };
        Ok(ConnectionServers {
            settings: json.settings.into_domain()?,
            source,
        })
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = connections)]
struct ConnectionRow {
    id: i64,
    account_id: i64,
    email_address: String,
    address_key: String,
    kind: String,
    provider: String,
    owner_user_id: i64,
    inbox_id: Option<i64>,
    state: String,
    disconnect_reason: Option<String>,
    holds_address: bool,
    usages: String,
    servers: Option<String>,
    channel_settings: Option<String>,
    version: i64,
    create_time: i64,
    update_time: i64,
    state_change_time: i64,
    last_check_time: Option<i64>,
    last_success_time: Option<i64>,
    consecutive_failures: i32,
    first_failure_time: Option<i64>,
    last_error: String,
    next_check_time: Option<i64>,
    forwarding_address: Option<String>,
}

fn usages_text(usages: &[Usage]) -> String {
    usages
        .iter()
        .map(|usage| usage.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

impl ConnectionRow {
    fn from_domain(connection: &Connection, next_check_time: Option<SystemTime>) -> Self {
        let health = &connection.health;
        Self {
            id: connection.id,
            account_id: connection.account_id,
            email_address: connection.email.as_str().to_owned(),
            address_key: address_key(&connection.email),
            kind: connection.kind.as_str().to_owned(),
            provider: connection.provider.as_str().to_owned(),
            owner_user_id: connection.owner_user_id,
            inbox_id: connection.inbox_id,
            state: connection.state.as_str().to_owned(),
            disconnect_reason: connection.disconnect_reason.map(|r| r.as_str().to_owned()),
            holds_address: connection.holds_address,
            usages: usages_text(&connection.usages),
            servers: connection.servers.as_ref().map(ServersJson::encode),
            channel_settings: connection.channel.as_ref().map(channels::encode),
            forwarding_address: connection
                .channel
                .as_ref()
                .and_then(|channel| channel.forwarding_address.clone()),
            version: connection.version,
            create_time: to_micros(connection.create_time),
            update_time: to_micros(connection.update_time),
            state_change_time: to_micros(connection.state_change_time),
            last_check_time: health.last_check_time.map(to_micros),
            last_success_time: health.last_success_time.map(to_micros),
            consecutive_failures: health.consecutive_failures,
            first_failure_time: health.first_failure_time.map(to_micros),
            last_error: health.last_error.clone(),
            next_check_time: next_check_time.map(to_micros),
        }
    }

    fn into_domain(self) -> Result<Connection, StoreError> {
        let usages = self
            .usages
            .split(',')
            .filter(|name| !name.is_empty())
            .map(|name| Usage::from_db(name).ok_or_else(|| corrupt("usage")))
            .collect::<Result<_, _>>()?;
        let kind = ConnectionKind::from_db(&self.kind).ok_or_else(|| corrupt("kind"))?;
        // Team connections stored before channels were settable have the defaults.
        let channel = match (&self.channel_settings, kind) {
            (Some(text), _) => Some(channels::decode(text, self.forwarding_address)?),
            (None, ConnectionKind::Team) => Some(ChannelSettings::live()),
            (None, ConnectionKind::Personal) => None,
        };
        Ok(Connection {
            id: self.id,
            account_id: self.account_id,
            email: EmailAddress::parse("email_address", &self.email_address)
                .map_err(|_| corrupt("address"))?,
            kind,
            provider: Provider::from_db(&self.provider).ok_or_else(|| corrupt("provider"))?,
            owner_user_id: self.owner_user_id,
            inbox_id: self.inbox_id,
            state: ConnectionState::from_db(&self.state).ok_or_else(|| corrupt("state"))?,
            disconnect_reason: self
                .disconnect_reason
                .map(|r| DisconnectReason::from_db(&r).ok_or_else(|| corrupt("reason")))
                .transpose()?,
            usages,
            servers: self
                .servers
                .as_deref()
                .map(ServersJson::decode)
                .transpose()?,
            holds_address: self.holds_address,
            version: self.version,
            create_time: from_micros(self.create_time),
            update_time: from_micros(self.update_time),
            state_change_time: from_micros(self.state_change_time),
            health: Health {
                last_check_time: self.last_check_time.map(from_micros),
                last_success_time: self.last_success_time.map(from_micros),
                consecutive_failures: self.consecutive_failures,
                first_failure_time: self.first_failure_time.map(from_micros),
                last_error: self.last_error,
            },
            channel,
        })
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = connection_credentials)]
pub(super) struct CredentialsRow {
    connection_id: i64,
    account_id: i64,
    key_id: String,
    username: String,
    password: Option<Vec<u8>>,
    refresh_token: Option<Vec<u8>>,
    access_token: Option<Vec<u8>>,
    access_token_expire_time: Option<i64>,
    scopes: String,
    account_email: String,
}

impl CredentialsRow {
    pub(super) fn from_domain(
        account_id: i64,
        connection_id: i64,
        sealed: SealedCredentials,
    ) -> Self {
        Self {
            connection_id,
            account_id,
            key_id: sealed.key_id,
            username: sealed.username,
            password: sealed.password,
            refresh_token: sealed.refresh_token,
            access_token: sealed.access_token,
            access_token_expire_time: sealed.access_token_expire_time.map(to_micros),
            scopes: sealed.scopes.join(" "),
            account_email: sealed.account_email,
        }
    }

    pub(super) fn into_domain(self) -> SealedCredentials {
        SealedCredentials {
            key_id: self.key_id,
            username: self.username,
            password: self.password,
            refresh_token: self.refresh_token,
            access_token: self.access_token,
            access_token_expire_time: self.access_token_expire_time.map(from_micros),
            scopes: self
                .scopes
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect(),
            account_email: self.account_email,
        }
    }
}

pub(super) fn load_connection(
    conn: &mut DbConnection,
    account_id: i64,
    id: i64,
) -> Result<Option<Connection>, StoreError> {
    connections::table
        .find(id)
        .filter(connections::account_id.eq(account_id))
        .select(ConnectionRow::as_select())
        .first(conn)
        .optional()?
        .map(ConnectionRow::into_domain)
        .transpose()
}

fn load_holder(
    conn: &mut DbConnection,
    account_id: i64,
    key: &str,
) -> Result<Option<Connection>, StoreError> {
    connections::table
        .filter(connections::account_id.eq(account_id))
        .filter(connections::address_key.eq(key))
        .filter(connections::holds_address.eq(true))
        .select(ConnectionRow::as_select())
        .first(conn)
        .optional()?
        .map(ConnectionRow::into_domain)
        .transpose()
}

fn load_request(
    conn: &mut DbConnection,
    account_id: i64,
    request_id: &str,
) -> Result<Option<StoredRequest>, StoreError> {
    Ok(inbox_requests::table
        .find((account_id, request_id))
        .select((
            inbox_requests::method,
            inbox_requests::fingerprint,
            inbox_requests::resource_id,
        ))
        .first::<(String, String, i64)>(conn)
        .optional()?
        .map(|(method, fingerprint, resource_id)| StoredRequest {
            method,
            fingerprint,
            resource_id,
        }))
}

fn record_request(
    conn: &mut DbConnection,
    account_id: i64,
    request: &RequestRecord,
    resource_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    diesel::insert_into(inbox_requests::table)
        .values((
            inbox_requests::account_id.eq(account_id),
            inbox_requests::request_id.eq(&request.request_id),
            inbox_requests::method.eq(request.method),
            inbox_requests::fingerprint.eq(&request.fingerprint),
            inbox_requests::resource_id.eq(resource_id),
            inbox_requests::create_time.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Serialises the inbox creates of one account on Postgres, so that counting and inserting
/// cannot interleave (SQLite's write lock already does).
fn lock_account_inboxes(conn: &mut DbConnection, account_id: i64) -> Result<(), StoreError> {
    if let DbConnection::Pg(pg) = conn {
        // The key space of this lock: "inbx" in the high half, the account in the low half.
        const INBOX_LOCK: i64 = 0x696e_6278 << 32;
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(INBOX_LOCK ^ account_id)
            .execute(pg)?;
    }
    Ok(())
}

/// Deletes a connection and its credentials; a team connection's deletion notifies.
fn delete_row(
    conn: &mut DbConnection,
    connection: &Connection,
    actor_user_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    diesel::delete(connection_credentials::table.find(connection.id)).execute(conn)?;
    verifications::delete_code(conn, connection.id)?;
    diesel::delete(connections::table.find(connection.id)).execute(conn)?;
    if connection.kind == ConnectionKind::Team {
        write_notifications(conn, connection, Event::Deleted, actor_user_id, now)?;
    }
    Ok(())
}

/// Marks a connection disconnected by the service and notifies.
fn disconnect(
    conn: &mut DbConnection,
    connection: &Connection,
    reason: DisconnectReason,
    health: Option<&Health>,
    now: i64,
) -> Result<(), StoreError> {
    diesel::update(connections::table.find(connection.id))
        .set((
            connections::state.eq(ConnectionState::Disconnected.as_str()),
            connections::disconnect_reason.eq(reason.as_str()),
            connections::holds_address.eq(reason != DisconnectReason::ProviderMigration),
            connections::version.eq(connection.version + 1),
            connections::update_time.eq(now),
            connections::state_change_time.eq(now),
            connections::next_check_time.eq(None::<i64>),
        ))
        .execute(conn)?;
    if let Some(health) = health {
        write_health(conn, connection.id, health)?;
    }
    write_notifications(conn, connection, Event::Disconnected(reason), 0, now)
}

fn write_health(conn: &mut DbConnection, id: i64, health: &Health) -> Result<(), StoreError> {
    diesel::update(connections::table.find(id))
        .set((
            connections::last_check_time.eq(health.last_check_time.map(to_micros)),
            connections::last_success_time.eq(health.last_success_time.map(to_micros)),
            connections::consecutive_failures.eq(health.consecutive_failures),
            connections::first_failure_time.eq(health.first_failure_time.map(to_micros)),
            connections::last_error.eq(&health.last_error),
        ))
        .execute(conn)?;
    Ok(())
}

/// The effects of DeleteUser on the user's connections (inside its transaction): personal ones
/// are disconnected (USER_DEACTIVATED, the owner notified); team ones they connected stay ACTIVE
/// and the admins are told.
pub(super) fn user_deleted(
    conn: &mut DbConnection,
    account_id: i64,
    user_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    let owned: Vec<Connection> = connections::table
        .filter(connections::account_id.eq(account_id))
        .filter(connections::owner_user_id.eq(user_id))
        .select(ConnectionRow::as_select())
        .load(conn)?
        .into_iter()
        .map(ConnectionRow::into_domain)
        .collect::<Result<_, _>>()?;
    for connection in owned {
        match connection.kind {
            ConnectionKind::Personal if connection.state != ConnectionState::Disconnected => {
                disconnect(
                    conn,
                    &connection,
                    DisconnectReason::UserDeactivated,
                    None,
                    now,
                )?;
            }
            ConnectionKind::Personal => {}
            ConnectionKind::Team => {
                write_notifications(conn, &connection, Event::ConnectingUserDeleted, 0, now)?;
            }
        }
    }
    Ok(())
}

/// Whether another connection has the forwarding address of `connection`'s channel.
fn forwarding_taken(conn: &mut DbConnection, connection: &Connection) -> Result<bool, StoreError> {
    let Some(address) = connection
        .channel
        .as_ref()
        .and_then(|channel| channel.forwarding_address.clone())
    else {
        return Ok(false);
    };
    Ok(connections::table
        .filter(connections::forwarding_address.eq(address))
        .count()
        .get_result::<i64>(conn)?
        > 0)
}

/// Inserts a connection (and what comes with it) in one transaction.
fn insert_connection_rows(
    conn: &mut DbConnection,
    insert: &ConnectionInsert,
) -> Result<ConnectionInsertOutcome, StoreError> {
    let connection = &insert.connection;
    let account_id = connection.account_id;
    let now = to_micros(connection.create_time);
    exclusive(conn, |conn| {
        if let Some(inbox_id) = connection.inbox_id {
            let exists = inboxes::table
                .find(inbox_id)
                .filter(inboxes::account_id.eq(account_id))
                .count()
                .get_result::<i64>(conn)?
                > 0;
            if !exists {
                return Ok(ConnectionInsertOutcome::InboxMissing);
            }
        }
        if let Some((id, version)) = insert.replaces {
            match load_connection(conn, account_id, id)? {
                Some(old) if old.version == version && old.holds_address => {
                    disconnect(conn, &old, DisconnectReason::ProviderMigration, None, now)?;
                }
                _ => return Ok(ConnectionInsertOutcome::ReplacedChanged),
            }
        }
        diesel::insert_into(connections::table)
            .values(ConnectionRow::from_domain(
                connection,
                insert.next_check_time,
            ))
            .execute(conn)?;
        if let Some(sealed) = &insert.credentials {
            diesel::insert_into(connection_credentials::table)
                .values(CredentialsRow::from_domain(
                    account_id,
                    connection.id,
                    sealed.clone(),
                ))
                .execute(conn)?;
        }
        if let Some(request) = &insert.request {
            record_request(conn, account_id, request, connection.id, now)?;
        }
        let stored = load_connection(conn, account_id, connection.id)?
            .ok_or_else(|| StoreError::Internal("connection vanished in its own write".into()))?;
        Ok(ConnectionInsertOutcome::Created(stored))
    })
}

impl InboxConnectionStore for Database {
    async fn account_tier(&self, account_id: i64) -> Result<Option<Tier>, StoreError> {
        self.run(move |conn| {
            accounts::table
                .find(account_id)
                .select(accounts::tier)
                .first::<String>(conn)
                .optional()?
                .map(|tier| {
                    Tier::from_db(&tier)
                        .ok_or_else(|| StoreError::Internal(format!("stored tier {tier:?}")))
                })
                .transpose()
        })
        .await
    }

    async fn directory_account(&self, account_id: i64) -> Result<Option<Account>, StoreError> {
        self.run(move |conn| load_account(conn, account_id)).await
    }

    async fn routing_directory(
        &self,
        account_id: i64,
        user_ids: Vec<i64>,
        team_ids: Vec<i64>,
    ) -> Result<RoutingDirectory, StoreError> {
        self.run(move |conn| {
            let teams = load_teams(conn, account_id, &team_ids)?;
            let mut wanted = user_ids;
            wanted.extend(teams.iter().flat_map(|team| team.member_user_ids.clone()));
            let users = load_users(conn, account_id)?
                .into_iter()
                .filter(|user| wanted.contains(&user.id))
                .collect();
            Ok(RoutingDirectory { users, teams })
        })
        .await
    }

    async fn directory_user(
        &self,
        account_id: i64,
        user_id: i64,
    ) -> Result<Option<User>, StoreError> {
        self.run(move |conn| load_user(conn, account_id, user_id))
            .await
    }

    async fn users_with_address(
        &self,
        account_id: i64,
        address_key: String,
    ) -> Result<Vec<User>, StoreError> {
        self.run(move |conn| {
            Ok(load_users(conn, account_id)?
                .into_iter()
                .filter(|user| user.email.as_str().to_lowercase() == address_key)
                .collect())
        })
        .await
    }

    async fn find_request(
        &self,
        account_id: i64,
        request_id: String,
    ) -> Result<Option<StoredRequest>, StoreError> {
        self.run(move |conn| load_request(conn, account_id, &request_id))
            .await
    }

    async fn insert_inbox(
        &self,
        inbox: Inbox,
        limit: u32,
        request: Option<RequestRecord>,
    ) -> Result<InboxInsert, StoreError> {
        self.run(move |conn| {
            let account_id = inbox.account_id;
            let attempt = exclusive(conn, |conn| {
                lock_account_inboxes(conn, account_id)?;
                if let Some(request) = &request
                    && let Some(first) = load_request(conn, account_id, &request.request_id)?
                {
                    return Ok(InboxInsert::Replayed(first));
                }
                let count: i64 = inboxes::table
                    .filter(inboxes::account_id.eq(account_id))
                    .count()
                    .get_result(conn)?;
                if count >= i64::from(limit) {
                    return Ok(InboxInsert::LimitReached);
                }
                let row = InboxRow::from_domain(&inbox);
                diesel::insert_into(inboxes::table)
                    .values(&row)
                    .execute(conn)?;
                if let Some(request) = &request {
                    record_request(conn, account_id, request, inbox.id, row.create_time)?;
                }
                Ok(InboxInsert::Created(row.into_domain()))
            });
            match (attempt, &request) {
                // The same request id, committed by a concurrent create.
                (Err(StoreError::Conflict(_)), Some(request)) => {
                    match load_request(conn, account_id, &request.request_id)? {
                        Some(first) => Ok(InboxInsert::Replayed(first)),
                        None => Err(StoreError::Contention("request id conflict".into())),
                    }
                }
                (other, _) => other,
            }
        })
        .await
    }

    async fn get_inbox(&self, account_id: i64, id: i64) -> Result<Option<Inbox>, StoreError> {
        self.run(move |conn| {
            Ok(inboxes::table
                .find(id)
                .filter(inboxes::account_id.eq(account_id))
                .select(InboxRow::as_select())
                .first(conn)
                .optional()?
                .map(InboxRow::into_domain))
        })
        .await
    }

    async fn list_inboxes(
        &self,
        account_id: i64,
        after: Option<TimeKey>,
        limit: usize,
    ) -> Result<Vec<Inbox>, StoreError> {
        self.run(move |conn| {
            let mut query = inboxes::table
                .filter(inboxes::account_id.eq(account_id))
                .into_boxed();
            if let Some((time, id)) = after {
                query = query.filter(
                    inboxes::create_time
                        .gt(time)
                        .or(inboxes::create_time.eq(time).and(inboxes::id.gt(id))),
                );
            }
            Ok(query
                .order((inboxes::create_time, inboxes::id))
                .limit(limit_of(limit))
                .select(InboxRow::as_select())
                .load(conn)?
                .into_iter()
                .map(InboxRow::into_domain)
                .collect())
        })
        .await
    }

    async fn rename_inbox(
        &self,
        account_id: i64,
        id: i64,
        display_name: String,
        expected_version: Option<i64>,
        now: SystemTime,
    ) -> Result<WriteOutcome<Inbox>, StoreError> {
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let Some(current) = inboxes::table
                    .find(id)
                    .filter(inboxes::account_id.eq(account_id))
                    .select(InboxRow::as_select())
                    .first(conn)
                    .optional()?
                else {
                    return Ok(WriteOutcome::NotFound);
                };
                if expected_version.is_some_and(|version| version != current.version) {
                    return Ok(WriteOutcome::Stale);
                }
                diesel::update(inboxes::table.find(id))
                    .set((
                        inboxes::display_name.eq(&display_name),
                        inboxes::version.eq(current.version + 1),
                        inboxes::update_time.eq(to_micros(now)),
                    ))
                    .execute(conn)?;
                Ok(WriteOutcome::Done(
                    InboxRow {
                        display_name,
                        version: current.version + 1,
                        update_time: to_micros(now),
                        ..current
                    }
                    .into_domain(),
                ))
            })
        })
        .await
    }

    async fn delete_inbox(
        &self,
        account_id: i64,
        id: i64,
        expected_version: Option<i64>,
        force: bool,
        actor_user_id: i64,
    ) -> Result<InboxDelete, StoreError> {
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let Some(version) = inboxes::table
                    .find(id)
                    .filter(inboxes::account_id.eq(account_id))
                    .select(inboxes::version)
                    .first::<i64>(conn)
                    .optional()?
                else {
                    return Ok(InboxDelete::NotFound);
                };
                if expected_version.is_some_and(|expected| expected != version) {
                    return Ok(InboxDelete::Stale);
                }
                let channels: Vec<Connection> = connections::table
                    .filter(connections::inbox_id.eq(id))
                    .select(ConnectionRow::as_select())
                    .load(conn)?
                    .into_iter()
                    .map(ConnectionRow::into_domain)
                    .collect::<Result<_, _>>()?;
                if !channels.is_empty() && !force {
                    return Ok(InboxDelete::NotEmpty(channels.len()));
                }
                let now = to_micros(SystemTime::now());
                for channel in &channels {
                    delete_row(conn, channel, actor_user_id, now)?;
                }
                diesel::delete(inboxes::table.find(id)).execute(conn)?;
                Ok(InboxDelete::Done(channels))
            })
        })
        .await
    }

    async fn address_holder(
        &self,
        account_id: i64,
        address_key: String,
    ) -> Result<Option<Connection>, StoreError> {
        self.run(move |conn| load_holder(conn, account_id, &address_key))
            .await
    }

    async fn insert_connection(
        &self,
        insert: ConnectionInsert,
    ) -> Result<ConnectionInsertOutcome, StoreError> {
        self.run(move |conn| match insert_connection_rows(conn, &insert) {
            Err(StoreError::Conflict(_)) => {
                let account_id = insert.connection.account_id;
                if let Some(request) = &insert.request
                    && let Some(first) = load_request(conn, account_id, &request.request_id)?
                {
                    return Ok(ConnectionInsertOutcome::Replayed(first));
                }
                match load_holder(conn, account_id, &address_key(&insert.connection.email))? {
                    Some(holder) => Ok(ConnectionInsertOutcome::Held(holder)),
                    None if forwarding_taken(conn, &insert.connection)? => {
                        Ok(ConnectionInsertOutcome::ForwardingTaken)
                    }
                    // The holder went away between the insert and this read.
                    None => Err(StoreError::Contention("the address changed hands".into())),
                }
            }
            other => other,
        })
        .await
    }

    async fn get_connection(
        &self,
        account_id: i64,
        id: i64,
    ) -> Result<Option<Connection>, StoreError> {
        self.run(move |conn| load_connection(conn, account_id, id))
            .await
    }

    async fn list_connections(
        &self,
        account_id: i64,
        filter: ConnectionFilter,
        after: Option<TimeKey>,
        limit: usize,
    ) -> Result<Vec<Connection>, StoreError> {
        self.run(move |conn| {
            let mut query = connections::table
                .filter(connections::account_id.eq(account_id))
                .into_boxed();
            if let Some(kind) = filter.kind {
                query = query.filter(connections::kind.eq(kind.as_str()));
            }
            if let Some(inbox_id) = filter.inbox_id {
                query = query.filter(connections::inbox_id.eq(inbox_id));
            }
            if let Some(owner) = filter.owner_user_id {
                query = query.filter(connections::owner_user_id.eq(owner));
            }
            if let Some(state) = filter.state {
                query = query.filter(connections::state.eq(state.as_str()));
            }
            if let Some(user_id) = filter.visible_to {
                query = query.filter(
                    connections::kind
                        .eq(ConnectionKind::Team.as_str())
                        .or(connections::owner_user_id.eq(user_id)),
                );
            }
            if let Some((time, id)) = after {
                query = query.filter(
                    connections::create_time
                        .gt(time)
                        .or(connections::create_time
                            .eq(time)
                            .and(connections::id.gt(id))),
                );
            }
            query
                .order((connections::create_time, connections::id))
                .limit(limit_of(limit))
                .select(ConnectionRow::as_select())
                .load(conn)?
                .into_iter()
                .map(ConnectionRow::into_domain)
                .collect()
        })
        .await
    }

    async fn change_connection(
        &self,
        account_id: i64,
        id: i64,
        expected_version: Option<i64>,
        change: ConnectionChange,
        now: SystemTime,
    ) -> Result<WriteOutcome<Connection>, StoreError> {
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let Some(current) = load_connection(conn, account_id, id)? else {
                    return Ok(WriteOutcome::NotFound);
                };
                if expected_version.is_some_and(|version| version != current.version) {
                    return Ok(WriteOutcome::Stale);
                }
                apply_change(conn, &current, change, to_micros(now))?;
                let changed = load_connection(conn, account_id, id)?
                    .ok_or_else(|| StoreError::Internal("connection vanished".into()))?;
                Ok(WriteOutcome::Done(changed))
            })
        })
        .await
    }

    async fn delete_connection(
        &self,
        account_id: i64,
        id: i64,
        expected_version: Option<i64>,
        actor_user_id: i64,
    ) -> Result<WriteOutcome<Connection>, StoreError> {
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let Some(current) = load_connection(conn, account_id, id)? else {
                    return Ok(WriteOutcome::NotFound);
                };
                if expected_version.is_some_and(|version| version != current.version) {
                    return Ok(WriteOutcome::Stale);
                }
                delete_row(conn, &current, actor_user_id, to_micros(SystemTime::now()))?;
                Ok(WriteOutcome::Done(current))
            })
        })
        .await
    }

    async fn credentials(
        &self,
        account_id: i64,
        id: i64,
    ) -> Result<Option<SealedCredentials>, StoreError> {
        self.run(move |conn| {
            Ok(connection_credentials::table
                .find(id)
                .filter(connection_credentials::account_id.eq(account_id))
                .select(CredentialsRow::as_select())
                .first(conn)
                .optional()?
                .map(CredentialsRow::into_domain))
        })
        .await
    }

    async fn start_verification(&self, start: CodeStart) -> Result<CodeStartOutcome, StoreError> {
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let Some(current) = load_connection(conn, start.account_id, start.connection_id)?
                else {
                    return Ok(CodeStartOutcome::NotFound);
                };
                if current.version != start.expected_version {
                    return Ok(CodeStartOutcome::Stale);
                }
                if let Err(oldest) = verifications::record_code(conn, &start)? {
                    return Ok(CodeStartOutcome::RateLimited { oldest });
                }
                let now = to_micros(start.now);
                apply_change(
                    conn,
                    &current,
                    ConnectionChange::SetChannel(start.channel),
                    now,
                )?;
                let changed = load_connection(conn, start.account_id, start.connection_id)?
                    .ok_or_else(|| StoreError::Internal("connection vanished".into()))?;
                Ok(CodeStartOutcome::Started(Box::new(changed)))
            })
        })
        .await
    }

    async fn claim_attempt(
        &self,
        account_id: i64,
        connection_id: i64,
        now: SystemTime,
        max_attempts: i32,
    ) -> Result<AttemptOutcome, StoreError> {
        self.run(move |conn| {
            verifications::claim_attempt(conn, account_id, connection_id, now, max_attempts)
        })
        .await
    }

    async fn list_notifications(
        &self,
        account_id: i64,
        user_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        self.user_notifications(account_id, user_id, before, limit)
            .await
    }
}

/// Applies one change to the connection as it is now (inside the caller's transaction).
fn apply_change(
    conn: &mut DbConnection,
    current: &Connection,
    change: ConnectionChange,
    now: i64,
) -> Result<(), StoreError> {
    let row = connections::table.find(current.id);
    let next_version = current.version + 1;
    match change {
        ConnectionChange::Deactivate => {
            diesel::update(row)
                .set((
                    connections::state.eq(ConnectionState::Deactivated.as_str()),
                    connections::disconnect_reason.eq(None::<String>),
                    connections::version.eq(next_version),
                    connections::update_time.eq(now),
                    connections::state_change_time.eq(now),
                    connections::next_check_time.eq(None::<i64>),
                ))
                .execute(conn)?;
        }
        ConnectionChange::Reactivate {
            credentials,
            verified_at,
            next_check_time,
        } => {
            diesel::update(row)
                .set((
                    connections::state.eq(ConnectionState::Active.as_str()),
                    connections::disconnect_reason.eq(None::<String>),
                    connections::version.eq(next_version),
                    connections::update_time.eq(now),
                    connections::state_change_time.eq(now),
                    connections::next_check_time.eq(next_check_time.map(to_micros)),
                ))
                .execute(conn)?;
            write_health(
                conn,
                current.id,
                &Health {
                    last_success_time: verified_at,
                    ..Health::default()
                },
            )?;
            diesel::delete(connection_credentials::table.find(current.id)).execute(conn)?;
            diesel::insert_into(connection_credentials::table)
                .values(CredentialsRow::from_domain(
                    current.account_id,
                    current.id,
                    credentials,
                ))
                .execute(conn)?;
        }
        ConnectionChange::SetUsages(usages) => {
            diesel::update(row)
                .set((
                    connections::usages.eq(usages_text(&usages)),
                    connections::version.eq(next_version),
                    connections::update_time.eq(now),
                ))
                .execute(conn)?;
        }
        ConnectionChange::Checked {
            health,
            next_check_time,
        } => {
            write_health(conn, current.id, &health)?;
            diesel::update(row)
                .set(connections::next_check_time.eq(next_check_time.map(to_micros)))
                .execute(conn)?;
        }
        ConnectionChange::Disconnect { reason, health } => {
            disconnect(conn, current, reason, Some(&health), now)?;
        }
        ConnectionChange::AddressVerified(channel) => {
            verifications::delete_code(conn, current.id)?;
            apply_change(conn, current, ConnectionChange::SetChannel(channel), now)?;
        }
        ConnectionChange::SetChannel(channel) => {
            diesel::update(row)
                .set((
                    connections::channel_settings.eq(channels::encode(&channel)),
                    connections::forwarding_address.eq(channel.forwarding_address.clone()),
                    connections::version.eq(next_version),
                    connections::update_time.eq(now),
                ))
                .execute(conn)?;
        }
    }
    Ok(())
}

impl MonitorStore for Database {
    async fn claim_due_checks(
        &self,
        now: SystemTime,
        next: SystemTime,
        limit: usize,
    ) -> Result<Vec<Connection>, StoreError> {
        let (now, next) = (to_micros(now), to_micros(next));
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let due = connections::table
                    .filter(connections::next_check_time.le(now))
                    .filter(connections::state.eq(ConnectionState::Active.as_str()))
                    .order(connections::next_check_time)
                    .limit(limit_of(limit))
                    .select(connections::id);
                // Replicas claiming at once each take other rows instead of waiting.
                let ids: Vec<i64> = match conn {
                    DbConnection::Pg(pg) => due.for_update().skip_locked().load(pg)?,
                    DbConnection::Sqlite(sqlite) => due.load(sqlite)?,
                };
                diesel::update(connections::table.filter(connections::id.eq_any(&ids)))
                    .set(connections::next_check_time.eq(next))
                    .execute(conn)?;
                connections::table
                    .filter(connections::id.eq_any(&ids))
                    .order(connections::id)
                    .select(ConnectionRow::as_select())
                    .load(conn)?
                    .into_iter()
                    .map(ConnectionRow::into_domain)
                    .collect()
            })
        })
        .await
    }
}

impl CredentialStore for Database {
    async fn credentials_not_under(
        &self,
        key_id: String,
        limit: usize,
    ) -> Result<Vec<StoredCredentials>, StoreError> {
        self.run(move |conn| {
            let rows: Vec<CredentialsRow> = connection_credentials::table
                .filter(connection_credentials::key_id.ne(key_id))
                .order(connection_credentials::connection_id)
                .limit(limit_of(limit))
                .select(CredentialsRow::as_select())
                .load(conn)?;
            Ok(rows
                .into_iter()
                .map(|row| StoredCredentials {
                    account_id: row.account_id,
                    connection_id: row.connection_id,
                    sealed: row.into_domain(),
                })
                .collect())
        })
        .await
    }

    async fn reseal(&self, batch: Vec<(String, StoredCredentials)>) -> Result<usize, StoreError> {
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let mut resealed = 0;
                for (old_key, stored) in batch {
                    let row = CredentialsRow::from_domain(
                        stored.account_id,
                        stored.connection_id,
                        stored.sealed,
                    );
                    // Only if nobody re-sealed or replaced it meanwhile.
                    resealed += diesel::update(
                        connection_credentials::table
                            .find(row.connection_id)
                            .filter(connection_credentials::key_id.eq(old_key)),
                    )
                    .set((
                        connection_credentials::key_id.eq(&row.key_id),
                        connection_credentials::password.eq(&row.password),
                        connection_credentials::refresh_token.eq(&row.refresh_token),
                        connection_credentials::access_token.eq(&row.access_token),
                    ))
                    .execute(conn)?;
                }
                Ok(resealed)
            })
        })
        .await
    }
}
