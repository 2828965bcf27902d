//! The notifications outbox: rows written in the transaction of the change that causes them,
//! listed to their recipients, and mailed by the dispatcher (one sender per row, by lease).

use std::time::SystemTime;

use diesel::prelude::*;

use super::directory::load_users;
use super::schema::notifications;
use super::{Database, DbConnection, StoreError, exclusive, from_micros, to_micros};
use crate::domain::connection::{Connection, ConnectionKind, DisconnectReason};
use crate::domain::notification::{Event, NewNotification, Notification, NotificationKind, notify};
use crate::service::dispatcher::OutboxStore;

#[derive(Queryable, Selectable)]
#[diesel(table_name = notifications)]
pub(super) struct NotificationRow {
    id: i64,
    account_id: i64,
    recipient_user_id: i64,
    recipient_email: String,
    kind: String,
    connection_id: i64,
    email_address: String,
    connection_kind: String,
    disconnect_reason: Option<String>,
    actor_user_id: i64,
    subject: String,
    message: String,
    create_time: i64,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("a stored notification has an invalid {what}"))
}

impl NotificationRow {
    pub(super) fn into_domain(self) -> Result<Notification, StoreError> {
        Ok(Notification {
            id: self.id,
            create_time: from_micros(self.create_time),
            notification: NewNotification {
                account_id: self.account_id,
                recipient_user_id: self.recipient_user_id,
                recipient_email: self.recipient_email,
                kind: NotificationKind::from_db(&self.kind).ok_or_else(|| corrupt("kind"))?,
                connection_id: self.connection_id,
                email_address: self.email_address,
                connection_kind: ConnectionKind::from_db(&self.connection_kind)
                    .ok_or_else(|| corrupt("connection kind"))?,
                disconnect_reason: self
                    .disconnect_reason
                    .map(|reason| {
                        DisconnectReason::from_db(&reason).ok_or_else(|| corrupt("reason"))
                    })
                    .transpose()?,
                actor_user_id: self.actor_user_id,
                subject: self.subject,
                message: self.message,
            },
        })
    }
}

/// Writes the notifications of `event` about `connection` (inside the caller's transaction).
/// Those with an address to mail are due at once.
pub(super) fn write_notifications(
    conn: &mut DbConnection,
    connection: &Connection,
    event: Event,
    actor_user_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    let users = load_users(conn, connection.account_id)?;
    for new in notify(connection, event, &users, actor_user_id) {
        let due = (!new.recipient_email.is_empty()).then_some(now);
        diesel::insert_into(notifications::table)
            .values((
                notifications::account_id.eq(new.account_id),
                notifications::recipient_user_id.eq(new.recipient_user_id),
                notifications::recipient_email.eq(&new.recipient_email),
                notifications::kind.eq(new.kind.as_str()),
                notifications::connection_id.eq(new.connection_id),
                notifications::email_address.eq(&new.email_address),
                notifications::connection_kind.eq(new.connection_kind.as_str()),
                notifications::disconnect_reason.eq(new.disconnect_reason.map(|r| r.as_str())),
                notifications::actor_user_id.eq(new.actor_user_id),
                notifications::subject.eq(&new.subject),
                notifications::message.eq(&new.message),
                notifications::create_time.eq(now),
                notifications::next_attempt_time.eq(due),
            ))
            .execute(conn)?;
    }
    Ok(())
}

impl Database {
    /// A user's notifications, newest first, before the id `before`.
    pub(super) async fn user_notifications(
        &self,
        account_id: i64,
        user_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        self.run(move |conn| {
            let mut query = notifications::table
                .filter(notifications::account_id.eq(account_id))
                .filter(notifications::recipient_user_id.eq(user_id))
                .into_boxed();
            if let Some(before) = before {
                query = query.filter(notifications::id.lt(before));
            }
            query
                .order(notifications::id.desc())
                .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .select(NotificationRow::as_select())
                .load(conn)?
                .into_iter()
                .map(NotificationRow::into_domain)
                .collect()
        })
        .await
    }
}

impl OutboxStore for Database {
    async fn claim_due_notifications(
        &self,
        now: SystemTime,
        lease_until: SystemTime,
        limit: usize,
    ) -> Result<Vec<(Notification, i32)>, StoreError> {
        let (now, lease_until) = (to_micros(now), to_micros(lease_until));
        self.run(move |conn| {
            exclusive(conn, |conn| {
                let due = notifications::table
                    .filter(notifications::next_attempt_time.le(now))
                    .order(notifications::next_attempt_time)
                    .limit(i64::try_from(limit).unwrap_or(i64::MAX))
                    .select(notifications::id);
                // Replicas claiming at once each take other rows instead of waiting.
                let ids: Vec<i64> = match conn {
                    DbConnection::Pg(pg) => due.for_update().skip_locked().load(pg)?,
                    DbConnection::Sqlite(sqlite) => due.load(sqlite)?,
                };
                diesel::update(notifications::table.filter(notifications::id.eq_any(&ids)))
                    .set((
                        notifications::next_attempt_time.eq(lease_until),
                        notifications::attempts.eq(notifications::attempts + 1),
                    ))
                    .execute(conn)?;
                let rows: Vec<(NotificationRow, i32)> = notifications::table
                    .filter(notifications::id.eq_any(&ids))
                    .order(notifications::id)
                    .select((NotificationRow::as_select(), notifications::attempts))
                    .load(conn)?;
                rows.into_iter()
                    .map(|(row, attempts)| Ok((row.into_domain()?, attempts)))
                    .collect()
            })
        })
        .await
    }

    async fn mark_sent(&self, id: i64, now: SystemTime) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::update(notifications::table.find(id))
                .set((
                    notifications::next_attempt_time.eq(None::<i64>),
                    notifications::sent_time.eq(to_micros(now)),
                    notifications::last_error.eq(""),
                ))
                .execute(conn)?;
            Ok(())
        })
        .await
    }

    async fn mark_failed(
        &self,
        id: i64,
        error: String,
        retry_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        self.run(move |conn| {
            diesel::update(notifications::table.find(id))
                .set((
                    notifications::next_attempt_time.eq(retry_at.map(to_micros)),
                    notifications::last_error.eq(error),
                ))
                .execute(conn)?;
            Ok(())
        })
        .await
    }
}
