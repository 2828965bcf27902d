//! Notifications about connections (seed 002): who is told, and what they are told — what
//! happened, why, and what to do.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::connection::{Connection, ConnectionKind, DisconnectReason, Provider};
use super::directory::{User, UserRole};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationKind {
    ConnectionDisconnected,
    ConnectionDeleted,
    ConnectingUserDeleted,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 3] = [
        NotificationKind::ConnectionDisconnected,
        NotificationKind::ConnectionDeleted,
        NotificationKind::ConnectingUserDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::ConnectionDisconnected => "connection_disconnected",
            NotificationKind::ConnectionDeleted => "connection_deleted",
            NotificationKind::ConnectingUserDeleted => "connecting_user_deleted",
        }
    }

    pub fn from_db(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

/// A notification to write, in the same transaction as the change that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub account_id: i64,
    pub recipient_user_id: i64,
    /// The recipient's directory address when it was written; empty when the directory does
    /// not know the user (the notification is then only listed).
    pub recipient_email: String,
    pub kind: NotificationKind,
    pub connection_id: i64,
    pub email_address: String,
    pub connection_kind: ConnectionKind,
    pub disconnect_reason: Option<DisconnectReason>,
    /// 0 when the service itself acted.
    pub actor_user_id: i64,
    pub subject: String,
    pub message: String,
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: i64,
    pub notification: NewNotification,
    pub create_time: SystemTime,
}

/// What happened to a connection, to tell people about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Disconnected(DisconnectReason),
    Deleted,
    ConnectingUserDeleted,
}

impl Event {
    fn kind(self) -> NotificationKind {
        match self {
            Event::Disconnected(_) => NotificationKind::ConnectionDisconnected,
            Event::Deleted => NotificationKind::ConnectionDeleted,
            Event::ConnectingUserDeleted => NotificationKind::ConnectingUserDeleted,
        }
    }
}

/// Who is told about `connection`: its owner for a personal connection; for a team connection
/// every super admin and Account Access user of the directory and the user who connected it.
/// Each once, never `actor_user_id`. `users` is the account's directory; a recipient it does not
/// know still gets a (listed, not emailed) notification.
pub fn recipients(
    connection: &Connection,
    users: &[User],
    actor_user_id: i64,
) -> Vec<(i64, String)> {
    let email_of = |id: i64| {
        users
            .iter()
            .find(|user| user.id == id)
            .map(|user| user.email.as_str().to_owned())
            .unwrap_or_default()
    };
    let mut chosen = BTreeMap::new();
    match connection.kind {
        ConnectionKind::Personal => {
            chosen.insert(connection.owner_user_id, email_of(connection.owner_user_id));
        }
        ConnectionKind::Team => {
            for user in users.iter().filter(|user| {
                !user.deleted
                    && (user.roles.contains(&UserRole::SuperAdmin)
                        || user.roles.contains(&UserRole::AccountAccess))
            }) {
                chosen.insert(user.id, user.email.as_str().to_owned());
            }
            chosen.insert(connection.owner_user_id, email_of(connection.owner_user_id));
        }
    }
    chosen.remove(&actor_user_id);
    chosen.remove(&0);
    chosen.into_iter().collect()
}

/// The notifications of `event` for every recipient.
pub fn notify(
    connection: &Connection,
    event: Event,
    users: &[User],
    actor_user_id: i64,
) -> Vec<NewNotification> {
    let recipients = match event {
        // The connection is fine; those responsible for the account decide what to do.
        Event::ConnectingUserDeleted => {
            let mut admins_only = connection.clone();
            admins_only.owner_user_id = 0;
            recipients(&admins_only, users, actor_user_id)
        }
        _ => recipients(connection, users, actor_user_id),
    };
    let (subject, message) = compose(connection, event);
    recipients
        .into_iter()
        .map(|(recipient_user_id, recipient_email)| NewNotification {
            account_id: connection.account_id,
            recipient_user_id,
            recipient_email,
            kind: event.kind(),
            connection_id: connection.id,
            email_address: connection.email.as_str().to_owned(),
            connection_kind: connection.kind,
            disconnect_reason: match event {
                Event::Disconnected(reason) => Some(reason),
                _ => None,
            },
            actor_user_id,
            subject: subject.clone(),
            message: message.clone(),
        })
        .collect()
}

/// Where to reconnect, by kind.
fn settings_place(kind: ConnectionKind) -> &'static str {
    match kind {
        ConnectionKind::Personal => "your email integration settings",
        ConnectionKind::Team => "the inbox's channel settings",
    }
}

/// What to do inside Google or Microsoft, for OAuth mailboxes that are gone for good.
fn revoke_hint(provider: Provider) -> &'static str {
    match provider {
        Provider::Gmail => {
            " To remove the service's access completely, open your Google Account, Security, \"Manage third-party access\", and remove it there."
        }
        Provider::Office365 => {
            " To remove the service's access completely, open your Microsoft account's app permissions and revoke it there."
        }
        _ => "",
    }
}

/// The subject and English text of a notification.
pub fn compose(connection: &Connection, event: Event) -> (String, String) {
    let address = connection.email.as_str();
    let place = settings_place(connection.kind);
    let provider = connection.provider.display_name();
    match event {
        Event::Disconnected(reason) => {
            let (why, what) = match reason {
                DisconnectReason::CredentialsExpired => (
                    format!(
                        "its {provider} login no longer works (the password was changed or the authorization expired)"
                    ),
                    format!(
                        "Reconnect it with its current password or a new authorization in {place}."
                    ),
                ),
                DisconnectReason::AccessRevoked => (
                    format!("access to it was revoked in the {provider} account"),
                    format!("Reconnect it in {place} to grant access again."),
                ),
                DisconnectReason::ServerUnreachable => (
                    "its mail server could not be reached or kept failing over several checks"
                        .to_owned(),
                    format!(
                        "Check the server settings with your IT team, then reconnect it in {place}."
                    ),
                ),
                DisconnectReason::UserDeactivated => (
                    "its owner was removed from the account".to_owned(),
                    "Nothing syncs from it anymore; an admin can delete it or release the address."
                        .to_owned(),
                ),
                DisconnectReason::ProviderMigration => (
                    "it was connected again with another email provider".to_owned(),
                    format!(
                        "The new connection replaces it; delete this one in {place}.{}",
                        revoke_hint(connection.provider)
                    ),
                ),
            };
            (
                format!("{address} was disconnected"),
                format!("{address} was disconnected: {why}. {what}"),
            )
        }
        Event::Deleted => (
            format!("{address} was removed"),
            format!(
                "The team address {address} was removed from its inbox: mail sent to it no longer reaches the inbox.{}",
                revoke_hint(connection.provider)
            ),
        ),
        Event::ConnectingUserDeleted => (
            format!("The user who connected {address} was removed"),
            format!(
                "The user who connected the team address {address} was removed from the account. The address stays connected; reconnect it under another user in {place} if its credentials belonged to them."
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::connection::{ConnectionState, Health};
    use crate::domain::email::EmailAddress;

    fn user(id: i64, roles: &[UserRole], deleted: bool) -> User {
        User {
            account_id: 1,
            id,
            email: EmailAddress::parse("e", &format!("user{id}@acme.example")).unwrap(),
            roles: roles.to_vec(),
            deleted,
        }
    }

    fn connection(kind: ConnectionKind, owner: i64) -> Connection {
        let now = SystemTime::UNIX_EPOCH;
        Connection {
            id: 9,
            account_id: 1,
            email: EmailAddress::parse("e", "support@acme.example").unwrap(),
            kind,
            provider: Provider::Gmail,
            owner_user_id: owner,
            inbox_id: None,
            state: ConnectionState::Active,
            disconnect_reason: None,
            usages: vec![],
            servers: None,
            holds_address: true,
            version: 1,
            create_time: now,
            update_time: now,
            state_change_time: now,
            health: Health::default(),
            channel: None,
        }
    }

    #[test]
    fn team_recipients_are_admins_and_the_connecting_user_once_never_the_actor() {
        let users = [
            user(1, &[UserRole::SuperAdmin], false),
            user(2, &[UserRole::AccountAccess, UserRole::SuperAdmin], false),
            user(3, &[], false),
            user(4, &[UserRole::SuperAdmin], true),
            user(5, &[], false),
        ];
        let team = connection(ConnectionKind::Team, 5);
        let ids: Vec<i64> = recipients(&team, &users, 0)
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(ids, [1, 2, 5]);
        let ids: Vec<i64> = recipients(&team, &users, 2)
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(ids, [1, 5]);
        let personal = connection(ConnectionKind::Personal, 3);
        let found = recipients(&personal, &users, 0);
        assert_eq!(found, [(3, "user3@acme.example".to_owned())]);
        assert!(recipients(&personal, &users, 3).is_empty());
        let admins = notify(&team, Event::ConnectingUserDeleted, &users, 0);
        let ids: Vec<i64> = admins.iter().map(|n| n.recipient_user_id).collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn texts_say_what_why_and_what_to_do() {
        let personal = connection(ConnectionKind::Personal, 3);
        let (subject, message) = compose(
            &personal,
            Event::Disconnected(DisconnectReason::CredentialsExpired),
        );
        assert_eq!(subject, "support@acme.example was disconnected");
        assert!(message.contains("no longer works"), "{message}");
        assert!(message.contains("Reconnect"), "{message}");
        let (_, message) = compose(
            &personal,
            Event::Disconnected(DisconnectReason::ProviderMigration),
        );
        assert!(message.contains("Google Account"), "{message}");
    }
}
