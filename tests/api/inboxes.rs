//! Conversations inboxes over gRPC, on both backends: who may write them, the tier's limit
//! (also under concurrent creates), etags, page tokens, request ids, and deleting an inbox that
//! still has channels.

use mailconnect::grpc::proto::{
    CreateInboxRequest, DeleteInboxRequest, GetInboxRequest, Inbox, ListConnectionsRequest,
    ListInboxesRequest, NotificationKind, Tier, UpdateInboxRequest,
};
use prost_types::FieldMask;
use tonic::Code;

use crate::backend_tests;
use crate::harness::{Backend, assert_error, authed, spawn_app, spawn_app_with, violated_fields};
use crate::inbox_world::{
    ACCESS, ADA, ADMIN, client, connect_team_gmail, create_inbox, notifications, seed_directory,
    token,
};

fn create(name: &str, request_id: &str) -> CreateInboxRequest {
    CreateInboxRequest {
        inbox: Some(Inbox {
            display_name: name.into(),
            ..Default::default()
        }),
        request_id: request_id.into(),
    }
}

async fn inboxes_are_written_by_admins_and_read_by_everyone(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_directory(&app, Tier::Professional).await;
    let mut client = client(&app);

    let status = client
        .create_inbox(authed(&token(&app, ADA), create("Support", "")))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
    for bad in ["", "   ", &"x".repeat(101)] {
        let status = client
            .create_inbox(authed(&token(&app, ADMIN), create(bad, "")))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["inbox.display_name"], "{bad:?}");
    }

    let support = client
        .create_inbox(authed(&token(&app, ACCESS), create("  Support ", "req-1")))
        .await
        .unwrap()
        .into_inner()
        .inbox
        .unwrap();
    assert_eq!(support.display_name, "Support");
    assert!(support.name.starts_with("inboxes/"), "{}", support.name);
    assert_eq!(support.created_by_user_id, ACCESS);
    // A retry with the same request id returns the first inbox; another name is refused.
    let again = client
        .create_inbox(authed(&token(&app, ACCESS), create("Support", "req-1")))
        .await
        .unwrap()
        .into_inner()
        .inbox
        .unwrap();
    assert_eq!(again, support);
    let status = client
        .create_inbox(authed(&token(&app, ACCESS), create("Sales", "req-1")))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["request_id"]);

    for name in ["Sales", "Billing"] {
        create_inbox(&app, name).await;
    }
    // Any user reads, oldest first, page by page.
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_inboxes(authed(
                &token(&app, ADA),
                ListInboxesRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        names.extend(page.inboxes.into_iter().map(|inbox| inbox.display_name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, ["Support", "Sales", "Billing"]);
    let got = client
        .get_inbox(authed(
            &token(&app, ADA),
            GetInboxRequest {
                name: support.name.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .inbox
        .unwrap();
    assert_eq!(got, support);
    for (name, code, reason) in [
        ("inboxes/1", Code::NotFound, "INBOX_NOT_FOUND"),
        ("inbox/1", Code::InvalidArgument, "INVALID_ARGUMENT"),
    ] {
        let status = client
            .get_inbox(authed(
                &token(&app, ADA),
                GetInboxRequest { name: name.into() },
            ))
            .await
            .unwrap_err();
        assert_error(&status, code, reason);
    }
    // Another account sees nothing.
    let status = client
        .get_inbox(authed(
            &app.user_token(2, 7, &[mailconnect::domain::principal::Role::SuperAdmin]),
            GetInboxRequest {
                name: support.name.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "INBOX_NOT_FOUND");

    // Renames are conditional on the etag.
    let rename = |etag: &str, mask: Vec<&str>| UpdateInboxRequest {
        inbox: Some(Inbox {
            name: support.name.clone(),
            display_name: "Customer support".into(),
            etag: etag.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: mask.into_iter().map(Into::into).collect(),
        }),
    };
    let renamed = client
        .update_inbox(authed(
            &token(&app, ADMIN),
            rename(&support.etag, vec!["display_name"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .inbox
        .unwrap();
    assert_eq!(renamed.display_name, "Customer support");
    assert_ne!(renamed.etag, support.etag);
    let status = client
        .update_inbox(authed(&token(&app, ADMIN), rename(&support.etag, vec![])))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    let status = client
        .update_inbox(authed(&token(&app, ADMIN), rename("", vec!["etag"])))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["update_mask.paths[0]"]);
    let status = client
        .update_inbox(authed(&token(&app, ADA), rename("", vec![])))
        .await
        .unwrap_err();
    assert_error(&status, Code::PermissionDenied, "MISSING_ROLE");
}

/// An inbox with channels is deleted only with `force`, which deletes them too and tells the
/// admins and the connecting user — never the one who deleted.
async fn deleting_an_inbox_with_channels_needs_force(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_directory(&app, Tier::Professional).await;
    let mut client = client(&app);
    let inbox = create_inbox(&app, "Support").await;
    let channel = connect_team_gmail(&app, "support@acme.example", &inbox.name)
        .await
        .unwrap();
    let delete = |force: bool, etag: &str| DeleteInboxRequest {
        name: inbox.name.clone(),
        etag: etag.into(),
        force,
    };
    let status = client
        .delete_inbox(authed(&token(&app, ACCESS), delete(false, "")))
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::FailedPrecondition, "INBOX_NOT_EMPTY");
    assert_eq!(metadata["channels"], "1");
    let status = client
        .delete_inbox(authed(&token(&app, ACCESS), delete(true, "\"v9\"")))
        .await
        .unwrap_err();
    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    client
        .delete_inbox(authed(&token(&app, ACCESS), delete(true, &inbox.etag)))
        .await
        .unwrap();
    let left = client
        .list_connections(authed(
            &token(&app, ADMIN),
            ListConnectionsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert!(left.is_empty(), "{left:?}");
    let told = notifications(&app, ADMIN).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].kind(), NotificationKind::ConnectionDeleted);
    assert_eq!(told[0].connection, channel.name);
    assert_eq!(told[0].actor_user_id, ACCESS);
    assert!(
        notifications(&app, ACCESS).await.is_empty(),
        "the one who deleted is not told"
    );
    // The address is free again.
    let inbox = create_inbox(&app, "Support again").await;
    connect_team_gmail(&app, "support@acme.example", &inbox.name)
        .await
        .unwrap();
}

/// 16 concurrent creates at a limit of 5: exactly 5 inboxes, 11 refusals naming the tier.
async fn the_tier_limit_holds_under_concurrent_creates(backend: Backend) {
    let app = spawn_app_with(backend, |settings| {
        settings.inbox.inbox_limits = "professional=5".parse().unwrap();
    })
    .await;
    seed_directory(&app, Tier::Professional).await;
    let admin = token(&app, ADMIN);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..16 {
        let mut client = client(&app);
        let admin = admin.clone();
        calls.spawn(async move {
            client
                .create_inbox(authed(&admin, create(&format!("Inbox {n}"), "")))
                .await
        });
    }
    let results = calls.join_all().await;
    let created = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(created, 5, "{results:?}");
    for status in results.iter().filter_map(|result| result.as_ref().err()) {
        let metadata = assert_error(status, Code::FailedPrecondition, "INBOX_LIMIT_REACHED");
        assert_eq!(metadata["tier"], "professional");
        assert_eq!(metadata["limit"], "5");
    }
    let listed = client(&app)
        .list_inboxes(authed(&admin, ListInboxesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .inboxes;
    assert_eq!(listed.len(), 5);
}

/// The free tier has one inbox; an account the directory does not know is held to it too.
async fn free_and_unknown_accounts_get_one_inbox(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = client(&app);
    let stranger = app.user_token(42, 1, &[mailconnect::domain::principal::Role::SuperAdmin]);
    client
        .create_inbox(authed(&stranger, create("First", "")))
        .await
        .unwrap();
    let status = client
        .create_inbox(authed(&stranger, create("Second", "")))
        .await
        .unwrap_err();
    let metadata = assert_error(&status, Code::FailedPrecondition, "INBOX_LIMIT_REACHED");
    assert_eq!(metadata["tier"], "free");
}

backend_tests!(
    inboxes_are_written_by_admins_and_read_by_everyone,
    deleting_an_inbox_with_channels_needs_force,
    the_tier_limit_holds_under_concurrent_creates,
    free_and_unknown_accounts_get_one_inbox,
);
