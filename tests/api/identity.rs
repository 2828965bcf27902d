//! Identity follows the directory: a token still valid for a user the directory deleted, or whose
//! roles it lowered, is refused at once on the replica that took the change and within
//! `STANDING_TTL` on the others (README, "Identity").

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::inbox_connection_service_client::InboxConnectionServiceClient;
use mailconnect::grpc::proto::{
    Account, DeleteUserRequest, ListAttemptedDomainsRequest, ListInboxesRequest, Tier,
    UpsertAccountRequest, UpsertUserRequest, User,
};
use mailconnect::service::clock::ManualClock;
use mailconnect::service::identity::STANDING_TTL;
use tonic::Code;
use tonic::transport::Channel;

use crate::backend_tests;
use crate::harness::{Backend, TestApp, assert_error, authed, spawn_app, user_token};

const ACCOUNT: i64 = 1;
const ADMIN: i64 = 7;

async fn upsert_admin(app: &TestApp, roles: Vec<i32>) {
    app.directory()
        .upsert_user(authed(
            &app.platform_token(),
            UpsertUserRequest {
                user: Some(User {
                    account_id: ACCOUNT,
                    id: ADMIN,
                    email: "admin@acme.example".into(),
                    roles,
                    deleted: false,
                }),
            },
        ))
        .await
        .expect("upsert user");
}

/// Account 1 with user 7, a super admin.
async fn seed(app: &TestApp) {
    app.directory()
        .upsert_account(authed(
            &app.platform_token(),
            UpsertAccountRequest {
                account: Some(Account {
                    id: ACCOUNT,
                    tier: Tier::Professional.into(),
                    subdomain: "acme".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("upsert account");
    upsert_admin(app, vec![mailconnect::grpc::proto::Role::SuperAdmin.into()]).await;
}

fn admin_token() -> String {
    user_token(ACCOUNT, ADMIN, &[Role::SuperAdmin])
}

/// A call any user of the account may make.
async fn list_inboxes(channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    InboxConnectionServiceClient::new(channel.clone())
        .list_inboxes(authed(token, ListInboxesRequest::default()))
        .await
        .map(drop)
}

/// A call only SUPER_ADMIN or ACCOUNT_ACCESS may make.
async fn list_attempted_domains(channel: &Channel, token: &str) -> Result<(), tonic::Status> {
    DomainSettingsServiceClient::new(channel.clone())
        .list_attempted_domains(authed(token, ListAttemptedDomainsRequest::default()))
        .await
        .map(drop)
}

async fn delete_admin(app: &TestApp) {
    app.directory()
        .delete_user(authed(
            &app.platform_token(),
            DeleteUserRequest {
                account_id: ACCOUNT,
                user_id: ADMIN,
            },
        ))
        .await
        .expect("delete user");
}

async fn a_deleted_user_is_refused_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let token = admin_token();
    list_inboxes(&app.channel, &token)
        .await
        .expect("allowed while the user exists");
    delete_admin(&app).await;
    let status = list_inboxes(&app.channel, &token).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "USER_DELETED");
}

async fn lowered_roles_are_dropped_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let token = admin_token();
    list_attempted_domains(&app.channel, &token)
        .await
        .expect("allowed while a super admin");
    upsert_admin(&app, vec![]).await;
    let status = list_attempted_domains(&app.channel, &token)
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
    // Still a user of the account: what any user may do stays allowed.
    list_inboxes(&app.channel, &token)
        .await
        .expect("still a plain user");
}

/// The other replica remembers what the directory said for `STANDING_TTL` of its clock, then
/// asks again: no change is missed for longer.
async fn another_replica_follows_within_the_bound(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let replica = app.spawn_replica_on(|_| {}, clock.clone()).await;
    let token = admin_token();
    list_inboxes(&replica.channel, &token)
        .await
        .expect("allowed while the user exists");
    delete_admin(&app).await;
    list_inboxes(&app.channel, &token).await.unwrap_err();
    clock.advance(STANDING_TTL);
    let status = list_inboxes(&replica.channel, &token).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "USER_DELETED");
    assert!(
        STANDING_TTL <= Duration::from_secs(30),
        "the bound README promises"
    );
}

backend_tests!(
    a_deleted_user_is_refused_at_once,
    lowered_roles_are_dropped_at_once,
    another_replica_follows_within_the_bound,
);
