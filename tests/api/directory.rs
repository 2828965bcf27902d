//! DirectoryService over gRPC, on both backends.

use std::collections::BTreeSet;

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::{
    Account, DeleteUserRequest, GetAccountRequest, GetUserRequest, ListTeamsRequest,
    ListUsersRequest, Team, Tier, UpsertAccountRequest, UpsertTeamRequest, UpsertUserRequest, User,
};
use tonic::Code;

use crate::backend_tests;
use crate::harness::{
    Backend, TestApp, assert_error, authed, expired_token, forged_token, spawn_app, violated_fields,
};

fn account(id: i64) -> Account {
    Account {
        id,
        tier: Tier::Professional.into(),
        data_center: String::new(),
        subdomain: format!("acme{id}"),
        sending_domains: vec!["Acme.example".into(), "mail.acme.example".into()],
    }
}

fn user(account_id: i64, id: i64) -> User {
    User {
        account_id,
        id,
        email: format!("user{id}@acme.example"),
        roles: vec![],
        deleted: false,
    }
}

async fn seed_account(app: &TestApp, id: i64) {
    app.directory()
        .upsert_account(authed(
            &app.platform_token(),
            UpsertAccountRequest {
                account: Some(account(id)),
            },
        ))
        .await
        .expect("upsert account");
}

async fn seed_user(app: &TestApp, account_id: i64, id: i64) {
    app.directory()
        .upsert_user(authed(
            &app.platform_token(),
            UpsertUserRequest {
                user: Some(user(account_id, id)),
            },
        ))
        .await
        .expect("upsert user");
}

async fn platform_writes_and_users_read_their_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let platform = app.platform_token();
    let mut client = app.directory();
    let stored = client
        .upsert_account(authed(
            &platform,
            UpsertAccountRequest {
                account: Some(account(1)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(stored.data_center, "na1", "default data center applied");
    assert_eq!(
        stored.sending_domains,
        ["acme.example", "mail.acme.example"]
    );

    // Idempotent: the same upsert again changes nothing.
    let again = client
        .upsert_account(authed(
            &platform,
            UpsertAccountRequest {
                account: Some(account(1)),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(again, stored);

    let mut admin = user(1, 7);
    admin.roles = vec![1, 2, 1]; // ROLE_SUPER_ADMIN twice, ROLE_ACCOUNT_ACCESS
    admin.email = "Jane@ACME.example".into();
    let stored_user = client
        .upsert_user(authed(
            &platform,
            UpsertUserRequest {
                user: Some(admin.clone()),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(stored_user.email, "Jane@acme.example");
    assert_eq!(stored_user.roles, [1, 2]);
    seed_user(&app, 1, 8).await;

    let team = Team {
        account_id: 1,
        id: 3,
        name: "Support".into(),
        member_user_ids: vec![8, 7, 8],
    };
    let stored_team = client
        .upsert_team(authed(&platform, UpsertTeamRequest { team: Some(team) }))
        .await
        .unwrap()
        .into_inner()
        .team
        .unwrap();
    assert_eq!(stored_team.member_user_ids, [7, 8]);

    // A plain user of account 1 reads the account's directory.
    let reader = app.user_token(1, 8, &[]);
    let got = client
        .get_account(authed(&reader, GetAccountRequest { account_id: 1 }))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(got, stored);
    let got_user = client
        .get_user(authed(
            &reader,
            GetUserRequest {
                account_id: 1,
                user_id: 7,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(got_user, stored_user);
    let teams = client
        .list_teams(authed(
            &reader,
            ListTeamsRequest {
                account_id: 1,
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(teams.teams, std::slice::from_ref(&stored_team));
    assert!(teams.next_page_token.is_empty());

    // Replacing a team replaces its member list.
    let smaller = Team {
        member_user_ids: vec![8],
        ..stored_team
    };
    client
        .upsert_team(authed(
            &platform,
            UpsertTeamRequest {
                team: Some(smaller.clone()),
            },
        ))
        .await
        .unwrap();
    let teams = client
        .list_teams(authed(
            &reader,
            ListTeamsRequest {
                account_id: 1,
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(teams.teams, [smaller]);
}

async fn writes_need_the_platform_role(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_account(&app, 1).await;
    let mut client = app.directory();
    for roles in [vec![], vec![Role::SuperAdmin], vec![Role::AccountAccess]] {
        let token = app.user_token(1, 7, &roles);
        let status = client
            .upsert_account(authed(
                &token,
                UpsertAccountRequest {
                    account: Some(account(1)),
                },
            ))
            .await
            .unwrap_err();
        let metadata = assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
        assert_eq!(metadata["required_roles"], "platform");
        let status = client
            .upsert_user(authed(
                &token,
                UpsertUserRequest {
                    user: Some(user(1, 7)),
                },
            ))
            .await
            .unwrap_err();
        assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
        let status = client
            .delete_user(authed(
                &token,
                DeleteUserRequest {
                    account_id: 1,
                    user_id: 7,
                },
            ))
            .await
            .unwrap_err();
        assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
        let status = client
            .upsert_team(authed(
                &token,
                UpsertTeamRequest {
                    team: Some(Team {
                        account_id: 1,
                        id: 1,
                        name: "x".into(),
                        member_user_ids: vec![],
                    }),
                },
            ))
            .await
            .unwrap_err();
        assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
    }
    // Nothing was written by the refused calls.
    let users = client
        .list_users(authed(
            &app.platform_token(),
            ListUsersRequest {
                account_id: 1,
                page_size: 0,
                page_token: String::new(),
                show_deleted: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(users.users.is_empty());
}

async fn tokens_are_required_and_checked(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.directory();
    let status = client
        .get_account(GetAccountRequest { account_id: 1 })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "MISSING_TOKEN");

    let status = client
        .get_account(authed("not-a-jwt", GetAccountRequest { account_id: 1 }))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "INVALID_TOKEN");

    let mut request = tonic::Request::new(GetAccountRequest { account_id: 1 });
    request
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = client.get_account(request).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "MALFORMED_AUTHORIZATION");

    // Signed with another secret.
    let forged = forged_token();
    let status = client
        .upsert_account(authed(
            &forged,
            UpsertAccountRequest {
                account: Some(account(1)),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "INVALID_TOKEN");

    // Expired (well beyond the leeway).
    let expired = expired_token();
    let status = client
        .get_account(authed(&expired, GetAccountRequest { account_id: 1 }))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "TOKEN_EXPIRED");
}

async fn bad_input_names_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_account(&app, 1).await;
    seed_user(&app, 1, 7).await;
    let platform = app.platform_token();
    let mut client = app.directory();

    let cases: Vec<(Account, Vec<&str>)> = vec![
        (
            Account {
                id: 0,
                ..account(2)
            },
            vec!["account.id"],
        ),
        (
            Account {
                id: -5,
                ..account(2)
            },
            vec!["account.id"],
        ),
        (
            Account {
                tier: 0,
                ..account(2)
            },
            vec!["account.tier"],
        ),
        (
            Account {
                tier: 99,
                ..account(2)
            },
            vec!["account.tier"],
        ),
        (
            Account {
                data_center: "EU_1".into(),
                ..account(2)
            },
            vec!["account.data_center"],
        ),
        (
            Account {
                data_center: "x".repeat(33),
                ..account(2)
            },
            vec!["account.data_center"],
        ),
        (
            Account {
                subdomain: "bad name".into(),
                ..account(2)
            },
            vec!["account.subdomain"],
        ),
        (
            Account {
                sending_domains: vec!["ok.example".into(), "localhost".into()],
                ..account(2)
            },
            vec!["account.sending_domains[1]"],
        ),
        (
            Account {
                id: 0,
                tier: 0,
                ..account(2)
            },
            vec!["account.id", "account.tier"],
        ),
    ];
    for (bad, fields) in cases {
        let status = client
            .upsert_account(authed(
                &platform,
                UpsertAccountRequest {
                    account: Some(bad.clone()),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), fields, "{bad:?}");
    }
    let status = client
        .upsert_account(authed(&platform, UpsertAccountRequest { account: None }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account"]);

    let user_cases: Vec<(User, Vec<&str>)> = vec![
        (
            User {
                email: "not an email".into(),
                ..user(1, 9)
            },
            vec!["user.email"],
        ),
        (
            User {
                email: String::new(),
                ..user(1, 9)
            },
            vec!["user.email"],
        ),
        (
            User {
                account_id: 0,
                ..user(1, 9)
            },
            vec!["user.account_id"],
        ),
        (
            User {
                id: -1,
                ..user(1, 9)
            },
            vec!["user.id"],
        ),
        (
            User {
                roles: vec![1, 0],
                ..user(1, 9)
            },
            vec!["user.roles[1]"],
        ),
        (
            User {
                roles: vec![42],
                ..user(1, 9)
            },
            vec!["user.roles[0]"],
        ),
    ];
    for (bad, fields) in user_cases {
        let status = client
            .upsert_user(authed(
                &platform,
                UpsertUserRequest {
                    user: Some(bad.clone()),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), fields, "{bad:?}");
    }

    let team_cases: Vec<(Team, Vec<&str>)> = vec![
        (
            Team {
                account_id: 1,
                id: 1,
                name: " ".into(),
                member_user_ids: vec![],
            },
            vec!["team.name"],
        ),
        (
            Team {
                account_id: 1,
                id: 0,
                name: "x".into(),
                member_user_ids: vec![],
            },
            vec!["team.id"],
        ),
        (
            Team {
                account_id: 1,
                id: 1,
                name: "x".repeat(257),
                member_user_ids: vec![],
            },
            vec!["team.name"],
        ),
        (
            Team {
                account_id: 1,
                id: 1,
                name: "x".into(),
                member_user_ids: vec![7, 0],
            },
            vec!["team.member_user_ids[1]"],
        ),
        // A member that is not a user of the account.
        (
            Team {
                account_id: 1,
                id: 1,
                name: "x".into(),
                member_user_ids: vec![7, 99],
            },
            vec!["team.member_user_ids[1]"],
        ),
    ];
    for (bad, fields) in team_cases {
        let status = client
            .upsert_team(authed(
                &platform,
                UpsertTeamRequest {
                    team: Some(bad.clone()),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), fields, "{bad:?}");
    }

    let status = client
        .get_user(authed(
            &platform,
            GetUserRequest {
                account_id: 0,
                user_id: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account_id", "user_id"]);
    let status = client
        .get_account(authed(&platform, GetAccountRequest { account_id: -1 }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["account_id"]);
    let status = client
        .delete_user(authed(
            &platform,
            DeleteUserRequest {
                account_id: 1,
                user_id: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["user_id"]);
    let status = client
        .list_users(authed(
            &platform,
            ListUsersRequest {
                account_id: 1,
                page_size: -1,
                page_token: String::new(),
                show_deleted: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size"]);
    let status = client
        .list_teams(authed(
            &platform,
            ListTeamsRequest {
                account_id: 1,
                page_size: 10,
                page_token: "garbage".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);
}

async fn missing_parents_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let platform = app.platform_token();
    let mut client = app.directory();
    let status = client
        .upsert_user(authed(
            &platform,
            UpsertUserRequest {
                user: Some(user(5, 1)),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    let status = client
        .upsert_team(authed(
            &platform,
            UpsertTeamRequest {
                team: Some(Team {
                    account_id: 5,
                    id: 1,
                    name: "x".into(),
                    member_user_ids: vec![],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    let status = client
        .get_account(authed(&platform, GetAccountRequest { account_id: 5 }))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    seed_account(&app, 5).await;
    let status = client
        .delete_user(authed(
            &platform,
            DeleteUserRequest {
                account_id: 5,
                user_id: 1,
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "USER_NOT_FOUND");
}

async fn other_accounts_are_invisible(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_account(&app, 1).await;
    seed_account(&app, 2).await;
    seed_user(&app, 2, 20).await;
    let mut client = app.directory();
    // A super admin of account 1 cannot see account 2: the answer is the one for a missing record.
    let admin1 = app.user_token(1, 7, &[Role::SuperAdmin, Role::AccountAccess]);
    let status = client
        .get_account(authed(&admin1, GetAccountRequest { account_id: 2 }))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    let status = client
        .get_user(authed(
            &admin1,
            GetUserRequest {
                account_id: 2,
                user_id: 20,
            },
        ))
        .await
        .unwrap_err();
    let missing = client
        .get_user(authed(
            &admin1,
            GetUserRequest {
                account_id: 2,
                user_id: 21,
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "USER_NOT_FOUND");
    assert_eq!(status.code(), missing.code());
    let status = client
        .list_users(authed(
            &admin1,
            ListUsersRequest {
                account_id: 2,
                page_size: 0,
                page_token: String::new(),
                show_deleted: false,
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    let status = client
        .list_teams(authed(
            &admin1,
            ListTeamsRequest {
                account_id: 2,
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
}

async fn users_paginate_exactly_once(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_account(&app, 1).await;
    seed_account(&app, 2).await;
    for id in 1..=25 {
        seed_user(&app, 1, id).await;
    }
    seed_user(&app, 2, 100).await;
    let platform = app.platform_token();
    let mut client = app.directory();
    client
        .delete_user(authed(
            &platform,
            DeleteUserRequest {
                account_id: 1,
                user_id: 13,
            },
        ))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_users(authed(
                &platform,
                ListUsersRequest {
                    account_id: 1,
                    page_size: 7,
                    page_token: token.clone(),
                    show_deleted: true,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 7);
        seen.extend(page.users.iter().map(|u| u.id));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        // Changing a filter between pages is refused.
        let status = client
            .list_users(authed(
                &platform,
                ListUsersRequest {
                    account_id: 1,
                    page_size: 7,
                    page_token: page.next_page_token.clone(),
                    show_deleted: false,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["page_token"]);
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        (1..=25).collect::<Vec<_>>(),
        "each user exactly once, in order"
    );
    assert_eq!(pages, 4);

    // Deleted users are hidden unless asked for, and an upsert restores them.
    let visible: BTreeSet<i64> = client
        .list_users(authed(
            &platform,
            ListUsersRequest {
                account_id: 1,
                page_size: 100,
                page_token: String::new(),
                show_deleted: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .users
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(visible.len(), 24);
    assert!(!visible.contains(&13));
    let deleted = client
        .get_user(authed(
            &platform,
            GetUserRequest {
                account_id: 1,
                user_id: 13,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(deleted.deleted);
    seed_user(&app, 1, 13).await;
    let restored = client
        .get_user(authed(
            &platform,
            GetUserRequest {
                account_id: 1,
                user_id: 13,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(!restored.deleted);
}

backend_tests!(
    platform_writes_and_users_read_their_account,
    writes_need_the_platform_role,
    tokens_are_required_and_checked,
    bad_input_names_the_field,
    missing_parents_are_not_found,
    other_accounts_are_invisible,
    users_paginate_exactly_once,
);

/// A member deleted between UpsertTeam's check and its write (here a trigger that fails the
/// write as the foreign key would) is FAILED_PRECONDITION DIRECTORY_CHANGED, said in words: the
/// database's text, with its table and constraint names, stays in the log (issue 16, 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_deleted_during_a_team_write_is_told_without_database_text() {
    let app = spawn_app(Backend::Postgres).await;
    seed_account(&app, 1).await;
    seed_user(&app, 1, 7).await;
    app.postgres_sql(
        "CREATE FUNCTION vanish() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RAISE EXCEPTION 'insert or update on table \"team_members\" violates foreign key \
             constraint \"team_members_account_id_user_id_fkey\"' \
           USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'team_members_account_id_user_id_fkey'; \
         END $$; \
         CREATE TRIGGER vanish BEFORE INSERT ON team_members FOR EACH ROW EXECUTE FUNCTION vanish();",
    );
    let status = app
        .directory()
        .upsert_team(authed(
            &app.platform_token(),
            UpsertTeamRequest {
                team: Some(Team {
                    account_id: 1,
                    id: 3,
                    name: "Support".into(),
                    member_user_ids: vec![7],
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "DIRECTORY_CHANGED");
    for internal in ["team_members", "constraint", "fkey", "violates"] {
        assert!(!status.message().contains(internal), "{status:?}");
    }
    assert!(status.message().contains("retry"), "{status:?}");
}
