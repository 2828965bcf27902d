//! The account the InboxConnectionService tests work in: a directory with two admins and two
//! plain users, clients, tokens and the requests most tests send.

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{
    self, Account, ConnectPersonalInboxRequest, ConnectTeamEmailRequest, Connection,
    CreateInboxRequest, Credentials, Inbox, OAuthGrant, Tier, UpsertAccountRequest,
    UpsertUserRequest, User, credentials::Method,
};
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::harness::{TestApp, authed};

pub const ACCOUNT: i64 = 1;
/// Super admin.
pub const ADMIN: i64 = 7;
/// Account Access.
pub const ACCESS: i64 = 8;
/// Plain users.
pub const ADA: i64 = 9;
pub const BOB: i64 = 10;

/// The directory's login address of a user of the world.
pub fn login(user: i64) -> String {
    let name = match user {
        ADMIN => "admin",
        ACCESS => "access",
        ADA => "ada",
        BOB => "bob",
        _ => "someone",
    };
    format!("{name}@acme.example")
}

/// Pushes the account and its users in, as the platform does.
pub async fn seed_directory(app: &TestApp, tier: Tier) {
    let platform = app.platform_token();
    let mut directory = app.directory();
    directory
        .upsert_account(authed(
            &platform,
            UpsertAccountRequest {
                account: Some(Account {
                    id: ACCOUNT,
                    tier: tier.into(),
                    subdomain: "acme".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    for (id, roles) in [
        (ADMIN, vec![proto::Role::SuperAdmin]),
        (ACCESS, vec![proto::Role::AccountAccess]),
        (ADA, vec![]),
        (BOB, vec![]),
    ] {
        directory
            .upsert_user(authed(
                &platform,
                UpsertUserRequest {
                    user: Some(User {
                        account_id: ACCOUNT,
                        id,
                        email: login(id),
                        roles: roles.into_iter().map(Into::into).collect(),
                        deleted: false,
                    }),
                },
            ))
            .await
            .unwrap();
    }
}

/// A plain user of the account with this login.
pub async fn seed_user(app: &TestApp, id: i64, email: &str) {
    app.directory()
        .upsert_user(authed(
            &app.platform_token(),
            UpsertUserRequest {
                user: Some(User {
                    account_id: ACCOUNT,
                    id,
                    email: email.into(),
                    roles: vec![],
                    deleted: false,
                }),
            },
        ))
        .await
        .unwrap();
}

pub fn client(app: &TestApp) -> InboxConnectionServiceClient<Channel> {
    InboxConnectionServiceClient::new(app.channel.clone())
}

/// A token of a user of the world, with the roles the directory gives them.
pub fn token(app: &TestApp, user: i64) -> String {
    let roles: &[Role] = match user {
        ADMIN => &[Role::SuperAdmin],
        ACCESS => &[Role::AccountAccess],
        _ => &[],
    };
    app.user_token(ACCOUNT, user, roles)
}

/// An OAuth grant for `address` with this refresh token.
pub fn grant(address: &str, refresh_token: &str) -> Credentials {
    Credentials {
        method: Some(Method::Oauth(OAuthGrant {
            refresh_token: refresh_token.into(),
            account_email: address.into(),
            ..Default::default()
        })),
    }
}

pub fn password(username: &str, password: &str) -> Credentials {
    Credentials {
        method: Some(Method::Password(proto::PasswordCredentials {
            username: username.into(),
            password: password.into(),
        })),
    }
}

pub async fn create_inbox(app: &TestApp, name: &str) -> Inbox {
    client(app)
        .create_inbox(authed(
            &token(app, ADMIN),
            CreateInboxRequest {
                inbox: Some(Inbox {
                    display_name: name.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .inbox
        .unwrap()
}

fn connection(
    response: Result<Response<proto::ConnectPersonalInboxResponse>, Status>,
) -> Result<Connection, Status> {
    response.map(|r| r.into_inner().connection.unwrap())
}

/// `user` connects `address` as their personal Gmail (no OAuth client configured: stored as
/// sent, nothing leaves the machine).
pub async fn connect_gmail(app: &TestApp, user: i64, address: &str) -> Result<Connection, Status> {
    connect_personal(app, user, address, proto::Provider::Gmail).await
}

pub async fn connect_personal(
    app: &TestApp,
    user: i64,
    address: &str,
    provider: proto::Provider,
) -> Result<Connection, Status> {
    connection(
        client(app)
            .connect_personal_inbox(authed(
                &token(app, user),
                ConnectPersonalInboxRequest {
                    email_address: address.into(),
                    provider: provider.into(),
                    credentials: Some(grant(address, "1//refresh-token-of-the-test")),
                    ..Default::default()
                },
            ))
            .await,
    )
}

/// An admin connects `address` as a Gmail team address of `inbox`.
pub async fn connect_team_gmail(
    app: &TestApp,
    address: &str,
    inbox: &str,
) -> Result<Connection, Status> {
    client(app)
        .connect_team_email(authed(
            &token(app, ADMIN),
            ConnectTeamEmailRequest {
                email_address: address.into(),
                provider: proto::Provider::Gmail.into(),
                inbox: inbox.into(),
                credentials: Some(grant(address, "1//team-refresh-token")),
                ..Default::default()
            },
        ))
        .await
        .map(|r| r.into_inner().connection.unwrap())
}

/// The notifications of `user`, newest first.
pub async fn notifications(app: &TestApp, user: i64) -> Vec<proto::Notification> {
    client(app)
        .list_notifications(authed(
            &token(app, user),
            proto::ListNotificationsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .notifications
}

pub async fn get_connection(app: &TestApp, name: &str) -> Connection {
    client(app)
        .get_connection(authed(
            &token(app, ADMIN),
            proto::GetConnectionRequest { name: name.into() },
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap()
}
