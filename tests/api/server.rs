//! The server's own behaviour: health, readiness, unimplemented methods, migrations.

use std::collections::BTreeSet;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::backend_tests;
use crate::harness::{Backend, TestDatabase, assert_error, authed, spawn_app, start_app};

async fn health_is_serving_overall_and_per_service(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.health("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        app.health("mailconnect.v1.DirectoryService").await.unwrap(),
        ServingStatus::Serving
    );
    let status = app.health("no.such.Service").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    app.stop().await;
}

async fn pending_services_name_the_method(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user_token(1, 1, &[]);
    for path in [
        "/mailconnect.v1.DomainSettingsService/GetDomainSettings",
        "/mailconnect.v1.InboxConnectionService/ListInboxes",
    ] {
        let mut grpc = tonic::client::Grpc::new(app.channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary::<(), (), _>(
                authed(&token, ()),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        let metadata = assert_error(&status, Code::Unimplemented, "NOT_IMPLEMENTED");
        let method = path.trim_start_matches('/');
        assert_eq!(metadata["method"], method);
        assert!(status.message().contains(method), "{}", status.message());
    }
}

backend_tests!(
    health_is_serving_overall_and_per_service,
    pending_services_name_the_method
);

/// Until the database answers, health is NOT_SERVING and calls get UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_until_the_database_answers() {
    // Nothing listens on port 1 of loopback: connections are refused at once.
    let unreachable = TestDatabase::Sqlite {
        _dir: tempfile::tempdir().unwrap(),
        url: "postgres://postgres@127.0.0.1:1/none?connect_timeout=2".to_owned(),
    };
    let app = start_app(unreachable).await;
    assert_eq!(app.health("").await.unwrap(), ServingStatus::NotServing);
    assert_eq!(
        app.health("mailconnect.v1.DirectoryService").await.unwrap(),
        ServingStatus::NotServing
    );
    let status = app
        .directory()
        .get_account(authed(
            &app.platform_token(),
            mailconnect::grpc::proto::GetAccountRequest { account_id: 1 },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unavailable, "UNAVAILABLE");
    // Still not serving after the failed calls: readiness never lies.
    assert_eq!(app.health("").await.unwrap(), ServingStatus::NotServing);
}

/// Both backends carry the same migrations, folder for folder.
#[test]
fn migration_folders_match() {
    let names = |backend: &str| -> BTreeSet<String> {
        std::fs::read_dir(format!(
            "{}/migrations/{backend}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
    };
    let postgres = names("postgres");
    assert!(!postgres.is_empty());
    assert_eq!(postgres, names("sqlite"));
}
