//! Connections over gRPC, on both backends: the rules of seed 004 (an address is personal or
//! team, never both; a team address in one inbox only; a personal address belongs to one user;
//! usages), held by the database under concurrent attempts; visibility; the lifecycle of seed
//! 002 (deactivate, reauthorize, delete, provider migration, a deleted user, ReleaseAddress).

use mailconnect::grpc::proto::{
    self, ConnectPersonalInboxRequest, ConnectTeamEmailRequest, ConnectionKind, ConnectionState,
    DeactivateConnectionRequest, DeleteConnectionRequest, DeleteUserRequest, DisconnectReason,
    GetConnectionRequest, ListConnectionsRequest, NotificationKind, Provider,
    ReauthorizeConnectionRequest, ReleaseAddressRequest, SetUsagesRequest, Tier, Usage,
};
use tonic::Code;

use crate::backend_tests;
use crate::harness::{
    Backend, TestApp, assert_error, authed, spawn_app, violated_fields, violated_fields_with_reason,
};
use crate::inbox_world::{
    ACCESS, ADA, ADMIN, BOB, client, connect_gmail, connect_personal, connect_team_gmail,
    create_inbox, get_connection, grant, login, notifications, password, seed_directory, token,
};

async fn world(backend: Backend) -> TestApp {
    let app = spawn_app(backend).await;
    seed_directory(&app, Tier::Professional).await;
    app
}

/// Seed 004: an address is connected once per account, personal or team, never both; each
/// refusal says who holds it so that a UI can act.
async fn an_address_is_personal_or_team_never_both(backend: Backend) {
    let app = world(backend).await;
    let support = create_inbox(&app, "Support").await;
    let sales = create_inbox(&app, "Sales").await;

    let ada_own = connect_gmail(&app, ADA, "ada.lovelace@acme.example")
        .await
        .unwrap();
    assert_eq!(ada_own.kind(), ConnectionKind::Personal);
    assert_eq!(ada_own.state(), ConnectionState::Active);
    assert_eq!(ada_own.usages().collect::<Vec<_>>(), [Usage::CrmEmail]);
    assert_eq!(ada_own.owner_user_id, ADA);
    assert!(ada_own.channel_settings.is_none());

    let status = connect_team_gmail(&app, "Ada.Lovelace@ACME.example", &support.name)
        .await
        .unwrap_err();
    let metadata = assert_error(
        &status,
        Code::AlreadyExists,
        "ADDRESS_CONNECTED_AS_PERSONAL",
    );
    assert_eq!(metadata["holder_kind"], "personal");
    assert_eq!(metadata["holder_user_id"], ADA.to_string());
    assert_eq!(metadata["holder_deleted"], "false");
    assert_eq!(metadata["connection"], ada_own.name);

    let status = connect_gmail(&app, BOB, "ada.lovelace@acme.example")
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::AlreadyExists, "ADDRESS_ALREADY_CONNECTED");
    assert_eq!(metadata["holder_user_id"], ADA.to_string());

    let team = connect_team_gmail(&app, "support@acme.example", &support.name)
        .await
        .unwrap();
    assert_eq!(team.kind(), ConnectionKind::Team);
    assert_eq!(team.inbox, support.name);
    assert_eq!(team.usages().collect::<Vec<_>>(), [Usage::Conversations]);
    let channel = team.channel_settings.as_ref().unwrap();
    assert_eq!(channel.state(), proto::ChannelState::Live);
    assert_eq!(
        channel.from_address.as_ref().unwrap().effective_address,
        "support@acme.example"
    );
    let status = connect_team_gmail(&app, "support@acme.example", &sales.name)
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::AlreadyExists, "ADDRESS_ALREADY_CONNECTED");
    assert_eq!(metadata["inbox"], support.name);
    assert_eq!(metadata["holder_kind"], "team");
    let status = connect_gmail(&app, ADA, "support@acme.example")
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::AlreadyExists, "ADDRESS_CONNECTED_AS_TEAM");
    assert_eq!(metadata["connection"], team.name);

    // "A personal address must be specific to one user": Bob's login is Bob's.
    let status = connect_gmail(&app, ADA, &login(BOB)).await.unwrap_err();
    let metadata = assert_error(&status, Code::FailedPrecondition, "ADDRESS_OF_ANOTHER_USER");
    assert_eq!(metadata["user_id"], BOB.to_string());
    // Several personal addresses per user are fine, her own login among them.
    connect_gmail(&app, ADA, &login(ADA)).await.unwrap();
}

/// 32 concurrent attempts at one address — personal for Ada, personal for Bob, team in two
/// inboxes — on both backends: exactly one wins, every other gets the reason its kind and the
/// winner's call for.
async fn concurrent_attempts_on_one_address_have_one_winner(backend: Backend) {
    let app = world(backend).await;
    let support = create_inbox(&app, "Support").await;
    let sales = create_inbox(&app, "Sales").await;
    const ADDRESS: &str = "hello@acme.example";
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Attempt {
        Personal(i64),
        Team(usize),
    }
    let inboxes = [support.name.clone(), sales.name.clone()];
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..32 {
        let attempt = match n % 4 {
            0 => Attempt::Personal(ADA),
            1 => Attempt::Personal(BOB),
            2 => Attempt::Team(0),
            _ => Attempt::Team(1),
        };
        let mut client = client(&app);
        let (user_token, admin) = (token(&app, ADA), token(&app, ADMIN));
        let (bob, inbox) = (token(&app, BOB), inboxes.clone());
        calls.spawn(async move {
            let result = match attempt {
                Attempt::Personal(user) => client
                    .connect_personal_inbox(authed(
                        if user == ADA { &user_token } else { &bob },
                        ConnectPersonalInboxRequest {
                            email_address: ADDRESS.into(),
                            provider: Provider::Gmail.into(),
                            credentials: Some(grant(ADDRESS, "1//x")),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map(|r| r.into_inner().connection.unwrap()),
                Attempt::Team(index) => client
                    .connect_team_email(authed(
                        &admin,
                        ConnectTeamEmailRequest {
                            email_address: ADDRESS.into(),
                            provider: Provider::Gmail.into(),
                            inbox: inbox[index].clone(),
                            credentials: Some(grant(ADDRESS, "1//x")),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map(|r| r.into_inner().connection.unwrap()),
            };
            (attempt, result)
        });
    }
    let results = calls.join_all().await;
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let (winner, won) = winners[0];
    let won = won.as_ref().unwrap();
    for (attempt, result) in &results {
        let Err(status) = result else { continue };
        let expected = match (winner, attempt) {
            (Attempt::Team(_), Attempt::Personal(_)) => "ADDRESS_CONNECTED_AS_TEAM",
            (Attempt::Personal(_), Attempt::Team(_)) => "ADDRESS_CONNECTED_AS_PERSONAL",
            _ => "ADDRESS_ALREADY_CONNECTED",
        };
        let metadata = assert_error(status, Code::AlreadyExists, expected);
        assert_eq!(metadata["connection"], won.name, "{attempt:?}");
    }
    let listed = client(&app)
        .list_connections(authed(
            &token(&app, ADMIN),
            ListConnectionsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert_eq!(listed.len(), 1, "{listed:?}");
}

/// Usages follow the connection's kind; every bad one is named.
async fn usages_follow_the_kind(backend: Backend) {
    let app = world(backend).await;
    let support = create_inbox(&app, "Support").await;
    let team = connect_team_gmail(&app, "support@acme.example", &support.name)
        .await
        .unwrap();
    let set = |name: &str, usages: &[Usage], etag: &str| SetUsagesRequest {
        name: name.into(),
        usages: usages.iter().map(|u| (*u).into()).collect(),
        etag: etag.into(),
    };
    let status = client(&app)
        .set_usages(authed(
            &token(&app, ADMIN),
            set(&team.name, &[Usage::Conversations, Usage::Meetings], ""),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields_with_reason(&status, "USAGE_NOT_ALLOWED"),
        ["usages[1]"]
    );
    assert!(
        status.message().contains("meetings"),
        "{}",
        status.message()
    );

    let status = client(&app)
        .connect_personal_inbox(authed(
            &token(&app, ADA),
            ConnectPersonalInboxRequest {
                email_address: "ada@acme.example".into(),
                provider: Provider::Gmail.into(),
                credentials: Some(grant("ada@acme.example", "1//x")),
                usages: vec![Usage::Meetings.into(), Usage::Conversations.into(), 99],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields_with_reason(&status, "USAGE_NOT_ALLOWED"),
        ["usages[1]", "usages[2]"]
    );

    let own = connect_gmail(&app, ADA, "ada@acme.example").await.unwrap();
    let updated = client(&app)
        .set_usages(authed(
            &token(&app, ADA),
            set(
                &own.name,
                &[Usage::Sequences, Usage::Meetings, Usage::Sequences],
                &own.etag,
            ),
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(
        updated.usages().collect::<Vec<_>>(),
        [Usage::Meetings, Usage::Sequences]
    );
    let status = client(&app)
        .set_usages(authed(
            &token(&app, ADA),
            set(&own.name, &[Usage::Calendar], &own.etag),
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let status = client(&app)
        .set_usages(authed(&token(&app, ADA), set(&own.name, &[], "")))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields_with_reason(&status, "USAGE_NOT_ALLOWED"),
        ["usages"]
    );
}

/// Malformed requests name every bad field; credentials must suit the provider; an OAuth grant
/// must be for the address.
async fn bad_connect_requests_name_their_fields(backend: Backend) {
    let app = world(backend).await;
    let mut client = client(&app);
    let ada = token(&app, ADA);
    let personal = |request: ConnectPersonalInboxRequest| authed(&ada, request);
    let status = client
        .connect_personal_inbox(personal(ConnectPersonalInboxRequest {
            email_address: "not an address".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["email_address", "provider"]);
    let status = client
        .connect_personal_inbox(personal(ConnectPersonalInboxRequest {
            email_address: "ada@acme.example".into(),
            provider: Provider::Hosted.into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["provider"]);
    let status = client
        .connect_personal_inbox(personal(ConnectPersonalInboxRequest {
            email_address: "ada@acme.example".into(),
            provider: Provider::Gmail.into(),
            credentials: Some(password("", "secret")),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["credentials.password"]);
    let status = client
        .connect_personal_inbox(personal(ConnectPersonalInboxRequest {
            email_address: "ada@acme.example".into(),
            provider: Provider::Office365.into(),
            credentials: Some(grant("grace@acme.example", "1//x")),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields_with_reason(&status, "OAUTH_ACCOUNT_MISMATCH"),
        ["credentials.oauth.account_email"]
    );
    let status = client
        .connect_personal_inbox(personal(ConnectPersonalInboxRequest {
            email_address: "ada@acme.example".into(),
            provider: Provider::Imap.into(),
            credentials: Some(password("ada\r\nA1 LOGOUT", "")),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        [
            "credentials.password.username",
            "credentials.password.password"
        ]
    );
    let status = client
        .connect_team_email(authed(
            &token(&app, ADMIN),
            ConnectTeamEmailRequest {
                email_address: "support@acme.example".into(),
                provider: Provider::Gmail.into(),
                inbox: "inboxes/999".into(),
                credentials: Some(grant("support@acme.example", "1//x")),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "INBOX_NOT_FOUND");
    let status = client
        .connect_team_email(authed(
            &ada,
            ConnectTeamEmailRequest {
                email_address: "support@acme.example".into(),
                provider: Provider::Gmail.into(),
                inbox: "inboxes/999".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
}

/// Plain users see their own personal connections and every team connection; others' personal
/// connections are answered like missing ones. Admins see everything.
async fn plain_users_see_their_own_and_the_team_connections(backend: Backend) {
    let app = world(backend).await;
    let support = create_inbox(&app, "Support").await;
    let ada_own = connect_gmail(&app, ADA, "ada@acme.example").await.unwrap();
    let bob_own = connect_gmail(&app, BOB, "bob.b@acme.example")
        .await
        .unwrap();
    let team = connect_team_gmail(&app, "support@acme.example", &support.name)
        .await
        .unwrap();
    let names = |connections: Vec<proto::Connection>| {
        let mut names: Vec<String> = connections.into_iter().map(|c| c.name).collect();
        names.sort();
        names
    };
    let list = |user: i64, request: ListConnectionsRequest| {
        let mut client = client(&app);
        let token = token(&app, user);
        async move {
            client
                .list_connections(authed(&token, request))
                .await
                .map(|r| r.into_inner().connections)
        }
    };
    let mut expected = vec![ada_own.name.clone(), team.name.clone()];
    expected.sort();
    assert_eq!(
        names(list(ADA, Default::default()).await.unwrap()),
        expected
    );
    assert_eq!(list(ACCESS, Default::default()).await.unwrap().len(), 3);
    let teams = list(
        ACCESS,
        ListConnectionsRequest {
            kind: ConnectionKind::Team.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(names(teams), [team.name.as_str()]);
    let bobs = list(
        ADMIN,
        ListConnectionsRequest {
            owner_user_id: BOB,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(names(bobs), [bob_own.name.as_str()]);
    let status = list(
        ADA,
        ListConnectionsRequest {
            inbox: "support".into(),
            page_size: -1,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&status), ["inbox", "page_size"]);

    let status = client(&app)
        .get_connection(authed(
            &token(&app, ADA),
            GetConnectionRequest {
                name: bob_own.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
    // Ada may read the team connection but not remove it.
    let status = client(&app)
        .delete_connection(authed(
            &token(&app, ADA),
            DeleteConnectionRequest {
                name: team.name.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
}

/// Deactivate keeps everything (idempotently); Reauthorize makes it ACTIVE; Delete erases the
/// credentials and frees the address.
async fn deactivate_reauthorize_delete(backend: Backend) {
    let app = world(backend).await;
    let mut client = client(&app);
    let ada = token(&app, ADA);
    let own = connect_gmail(&app, ADA, "ada.l@acme.example")
        .await
        .unwrap();
    let deactivate = |etag: &str| DeactivateConnectionRequest {
        name: own.name.clone(),
        etag: etag.into(),
    };
    let off = client
        .deactivate_connection(authed(&ada, deactivate(&own.etag)))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(off.state(), ConnectionState::Deactivated);
    let again = client
        .deactivate_connection(authed(&ada, deactivate(&off.etag)))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(again, off, "idempotent");
    let status = client
        .deactivate_connection(authed(&ada, deactivate(&own.etag)))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    // Still holds its address.
    let status = connect_gmail(&app, BOB, "ada.l@acme.example")
        .await
        .unwrap_err();
    assert_error(&status, Code::AlreadyExists, "ADDRESS_ALREADY_CONNECTED");

    let status = client
        .reauthorize_connection(authed(
            &ada,
            ReauthorizeConnectionRequest {
                name: own.name.clone(),
                credentials: Some(password("", "x")),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["credentials.password"]);
    let on = client
        .reauthorize_connection(authed(
            &ada,
            ReauthorizeConnectionRequest {
                name: own.name.clone(),
                credentials: Some(grant("ada.l@acme.example", "1//new")),
                etag: off.etag.clone(),
                validate_only: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(on.state(), ConnectionState::Active);
    assert_eq!(on.disconnect_reason(), DisconnectReason::Unspecified);

    let status = client
        .delete_connection(authed(
            &token(&app, BOB),
            DeleteConnectionRequest {
                name: own.name.clone(),
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
    client
        .delete_connection(authed(
            &ada,
            DeleteConnectionRequest {
                name: own.name.clone(),
                etag: on.etag.clone(),
            },
        ))
        .await
        .unwrap();
    let status = client
        .get_connection(authed(
            &ada,
            GetConnectionRequest {
                name: own.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "CONNECTION_NOT_FOUND");
    assert_eq!(
        crate::credentials::stored_credentials(&app, &own.name),
        0,
        "no ciphertext left behind"
    );
    connect_gmail(&app, BOB, "ada.l@acme.example")
        .await
        .unwrap();
}

/// Seed 002: moving an address to another provider disconnects the old connection
/// (PROVIDER_MIGRATION, kept and greyed out, no longer holding the address) and tells its owner;
/// reauthorizing the old one is refused.
async fn a_provider_migration_replaces_the_old_connection(backend: Backend) {
    let app = world(backend).await;
    let old = connect_gmail(&app, ADA, "ada@acme.example").await.unwrap();
    let new = connect_personal(&app, ADA, "ada@acme.example", Provider::Office365)
        .await
        .unwrap();
    assert_eq!(new.provider(), Provider::Office365);
    let old = get_connection(&app, &old.name).await;
    assert_eq!(old.state(), ConnectionState::Disconnected);
    assert_eq!(old.disconnect_reason(), DisconnectReason::ProviderMigration);
    let told = notifications(&app, ADA).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].kind(), NotificationKind::ConnectionDisconnected);
    assert_eq!(
        told[0].disconnect_reason(),
        DisconnectReason::ProviderMigration
    );
    assert_eq!(told[0].actor_user_id, 0);
    assert!(told[0].message.contains("Google"), "{}", told[0].message);

    let status = client(&app)
        .reauthorize_connection(authed(
            &token(&app, ADA),
            ReauthorizeConnectionRequest {
                name: old.name.clone(),
                credentials: Some(grant("ada@acme.example", "1//x")),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PROVIDER_MIGRATED");
    // The same provider again is a reauthorization, not a migration.
    let status = connect_personal(&app, ADA, "ada@acme.example", Provider::Office365)
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::AlreadyExists, "ADDRESS_ALREADY_CONNECTED");
    assert_eq!(metadata["connection"], new.name);
}

/// DeleteUser: the user's personal connections are disconnected (USER_DEACTIVATED, the owner
/// told); team connections they connected stay ACTIVE and the admins are told. The address of
/// the deleted user then says so, and ReleaseAddress frees it.
async fn a_deleted_user_leaves_their_addresses_releasable(backend: Backend) {
    let app = world(backend).await;
    let support = create_inbox(&app, "Support").await;
    let own = connect_gmail(&app, ADA, "ada@acme.example").await.unwrap();
    // Ada gets Account Access to connect a team address herself.
    app.directory()
        .upsert_user(authed(
            &app.platform_token(),
            proto::UpsertUserRequest {
                user: Some(proto::User {
                    account_id: 1,
                    id: ADA,
                    email: login(ADA),
                    roles: vec![proto::Role::AccountAccess.into()],
                    deleted: false,
                }),
            },
        ))
        .await
        .unwrap();
    let team = client(&app)
        .connect_team_email(authed(
            &app.user_token(
                1,
                ADA,
                &[mailconnect::domain::principal::Role::AccountAccess],
            ),
            ConnectTeamEmailRequest {
                email_address: "support@acme.example".into(),
                provider: Provider::Gmail.into(),
                inbox: support.name.clone(),
                credentials: Some(grant("support@acme.example", "1//x")),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    app.directory()
        .delete_user(authed(
            &app.platform_token(),
            DeleteUserRequest {
                account_id: 1,
                user_id: ADA,
            },
        ))
        .await
        .unwrap();
    let own = get_connection(&app, &own.name).await;
    assert_eq!(own.state(), ConnectionState::Disconnected);
    assert_eq!(own.disconnect_reason(), DisconnectReason::UserDeactivated);
    assert_eq!(
        get_connection(&app, &team.name).await.state(),
        ConnectionState::Active
    );
    // Ada is told about her own connection (by email, the dispatcher, with a relay); her own token
    // is refused now (identity follows the directory, README "Identity").
    let own_id = own.name.trim_start_matches("connections/");
    let ada_told = crate::credentials::count_rows(
        &app,
        &format!(
            "SELECT COUNT(*) AS n FROM notifications WHERE recipient_user_id = {ADA} AND connection_id = {own_id}"
        ),
    );
    assert_eq!(ada_told, 1);
    let refused = client(&app)
        .list_notifications(authed(
            &token(&app, ADA),
            proto::ListNotificationsRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_error(&refused, Code::Unauthenticated, "USER_DELETED");
    for admin in [ADMIN, ACCESS] {
        let told = notifications(&app, admin).await;
        assert_eq!(told.len(), 1, "{admin}: {told:?}");
        assert_eq!(told[0].kind(), NotificationKind::ConnectingUserDeleted);
        assert_eq!(told[0].connection, team.name);
    }
    // DeleteUser again changes nothing and tells nobody twice.
    app.directory()
        .delete_user(authed(
            &app.platform_token(),
            DeleteUserRequest {
                account_id: 1,
                user_id: ADA,
            },
        ))
        .await
        .unwrap();
    assert_eq!(notifications(&app, ADMIN).await.len(), 1);

    let status = connect_team_gmail(&app, "ada@acme.example", &support.name)
        .await
        .unwrap_err();
    let metadata = assert_error(
        &status,
        Code::AlreadyExists,
        "ADDRESS_CONNECTED_AS_PERSONAL",
    );
    assert_eq!(metadata["holder_deleted"], "true");
    assert!(
        status.message().contains("ReleaseAddress"),
        "{}",
        status.message()
    );

    let release = |user: i64, address: &str| {
        let mut client = client(&app);
        let token = token(&app, user);
        let address = address.to_owned();
        async move {
            client
                .release_address(authed(
                    &token,
                    ReleaseAddressRequest {
                        email_address: address,
                    },
                ))
                .await
        }
    };
    let status = release(BOB, "ada@acme.example").await.unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
    let status = release(ADMIN, "nobody@acme.example").await.unwrap_err();
    assert_error(&status, Code::NotFound, "ADDRESS_NOT_CONNECTED");
    let status = release(ADMIN, "@").await.unwrap_err();
    assert_eq!(violated_fields(&status), ["email_address"]);
    let released = release(ADMIN, "ADA@acme.example")
        .await
        .unwrap()
        .into_inner()
        .released_connection
        .unwrap();
    assert_eq!(released.name, own.name);
    connect_team_gmail(&app, "ada@acme.example", &support.name)
        .await
        .unwrap();
}

/// AIP-163 and AIP-155: validate_only proves and stores nothing; a retry with the same request id
/// returns the first connection, and the id cannot be reused for another address.
async fn validate_only_and_request_ids(backend: Backend) {
    let app = world(backend).await;
    let mut client = client(&app);
    let ada = token(&app, ADA);
    let request = |address: &str, request_id: &str, validate_only: bool| {
        authed(
            &ada,
            ConnectPersonalInboxRequest {
                email_address: address.into(),
                provider: Provider::Gmail.into(),
                credentials: Some(grant(address, "1//x")),
                validate_only,
                request_id: request_id.into(),
                ..Default::default()
            },
        )
    };
    let checked = client
        .connect_personal_inbox(request("ada@acme.example", "", true))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(checked.name.is_empty(), "{checked:?}");
    assert_eq!(checked.state(), ConnectionState::Active);
    let listed = client
        .list_connections(authed(&ada, ListConnectionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert!(listed.is_empty(), "validate_only stored {listed:?}");

    let first = client
        .connect_personal_inbox(request("ada@acme.example", "connect-1", false))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    let again = client
        .connect_personal_inbox(request("ada@acme.example", "connect-1", false))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert_eq!(again, first);
    let status = client
        .connect_personal_inbox(request("ada.l@acme.example", "connect-1", false))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["request_id"]);
    let status = client
        .connect_personal_inbox(request("ada.l@acme.example", &"x".repeat(129), false))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["request_id"]);
}

/// Without encryption keys, Postgres refuses to store credentials; the embedded SQLite default
/// creates a key in its data directory.
async fn credentials_need_an_encryption_key(backend: Backend) {
    let app = crate::harness::spawn_app_with(backend, |settings| {
        settings.inbox.encryption_keys = None;
    })
    .await;
    seed_directory(&app, Tier::Professional).await;
    let result = connect_gmail(&app, ADA, "ada@acme.example").await;
    match backend {
        Backend::Postgres => {
            let status = result.unwrap_err();
            assert_error(
                &status,
                Code::FailedPrecondition,
                "ENCRYPTION_NOT_CONFIGURED",
            );
            assert!(status.message().contains("MAILCONNECT_ENCRYPTION_KEYS"));
        }
        Backend::Sqlite => {
            result.unwrap();
        }
    }
}

backend_tests!(
    validate_only_and_request_ids,
    credentials_need_an_encryption_key,
    an_address_is_personal_or_team_never_both,
    concurrent_attempts_on_one_address_have_one_winner,
    usages_follow_the_kind,
    bad_connect_requests_name_their_fields,
    plain_users_see_their_own_and_the_team_connections,
    deactivate_reauthorize_delete,
    a_provider_migration_replaces_the_old_connection,
    a_deleted_user_leaves_their_addresses_releasable,
);
