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

/// The hosted-channel methods of the contract, not built yet, say so and name themselves.
async fn methods_not_built_yet_name_themselves(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.user_token(1, 1, &[]);
    for path in ["/mailconnect.v1.InboxConnectionService/RouteInboundEmail"] {
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
    methods_not_built_yet_name_themselves
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
    assert_error(&status, Code::Unavailable, "NOT_READY");
    // Still not serving after the failed calls: readiness never lies.
    assert_eq!(app.health("").await.unwrap(), ServingStatus::NotServing);
    // Liveness (what Kubernetes restarts on) does not follow the database.
    assert_eq!(
        app.health("liveness").await.unwrap(),
        ServingStatus::Serving
    );
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

/// Production keys: a token signed with an Ed25519 private key verifies against the configured
/// public key, and HS256 tokens are refused when no secret is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_verify_tokens_from_an_identity_provider() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    let public = dir.path().join("public.pem");
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl is needed to make test keys");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);

    let database = TestDatabase::create(Backend::Sqlite);
    let mut settings = crate::harness::test_settings(database.url(), dir.path().join("data"));
    settings.keys.jwt_secret = None;
    settings.keys.jwt_public_keys = vec![public];
    let application = mailconnect::app::Application::build(settings)
        .await
        .unwrap();
    let addr = application.local_addr();
    tokio::spawn(application.run_until_stopped(std::future::pending()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut client =
        mailconnect::grpc::proto::directory_service_client::DirectoryServiceClient::new(channel);

    #[derive(serde::Serialize)]
    struct Claims {
        sub: &'static str,
        roles: Vec<&'static str>,
        exp: u64,
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&std::fs::read(&private).unwrap()).unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &Claims {
            sub: "platform",
            roles: vec!["platform"],
            exp,
        },
        &key,
    )
    .unwrap();
    let account = mailconnect::grpc::proto::Account {
        id: 9,
        tier: mailconnect::grpc::proto::Tier::Free.into(),
        ..Default::default()
    };
    let request = mailconnect::grpc::proto::UpsertAccountRequest {
        account: Some(account),
    };
    // Until the database is migrated the call is UNAVAILABLE (NOT_READY), never an internal error.
    let mut result = client.upsert_account(authed(&token, request.clone())).await;
    for _ in 0..3000 {
        match &result {
            Err(status) if status.code() == Code::Unavailable => {
                assert_error(status, Code::Unavailable, "NOT_READY");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                result = client.upsert_account(authed(&token, request.clone())).await;
            }
            _ => break,
        }
    }
    assert_eq!(result.unwrap().into_inner().account.unwrap().id, 9);

    let hs256 = mailconnect::tokens::TokenKeys::new(
        Some(&mailconnect::domain::secret::Secret::new(
            crate::harness::TEST_SECRET.into(),
        )),
        &[],
    )
    .unwrap()
    .mint(
        &mailconnect::domain::principal::Principal {
            subject: "platform".into(),
            account_id: None,
            user_id: None,
            roles: vec![mailconnect::domain::principal::Role::Platform],
        },
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let status = client
        .upsert_account(authed(&hs256, request))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "INVALID_TOKEN");
}

/// Pooled connections are not checked before every reuse: one the database closed must fail at
/// most one call and then leave the pool, so that calls recover under continuous traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_database_closed_are_not_reused() {
    use diesel::connection::SimpleConnection as _;
    use diesel::{Connection as _, PgConnection};
    use mailconnect::grpc::proto::GetDomainSettingsRequest;
    use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
    use tonic_types::StatusExt as _;

    let app = spawn_app(Backend::Postgres).await;
    let mut client = DomainSettingsServiceClient::new(app.channel.clone());
    let user = app.user_token(1, 8, &[]);
    let get = || {
        authed(
            &user,
            GetDomainSettingsRequest {
                name: "domainSettings/example.com".into(),
            },
        )
    };
    let answered = client.get_domain_settings(get()).await.unwrap_err();
    assert_error(&answered, Code::NotFound, "DOMAIN_SETTINGS_NOT_FOUND");

    let database = app.database_url().rsplit('/').next().unwrap().to_owned();
    PgConnection::establish(&crate::harness::postgres_admin_url())
        .unwrap()
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        ))
        .unwrap();

    // Calls paced well under the idle check's threshold, so only discarding a failed connection
    // gets rid of it: each of the pool's 4 connections may fail one call, no more. Calls the
    // readiness gate refuses (NOT_READY, should its ping meet a closed connection) do not count.
    let mut failed_on_a_closed_connection = 0;
    let mut consecutive = 0;
    for _ in 0..1000 {
        match client.get_domain_settings(get()).await {
            Err(status) if status.code() == Code::NotFound => consecutive += 1,
            Err(status)
                if status
                    .get_details_error_info()
                    .is_some_and(|info| info.reason == "NOT_READY") =>
            {
                consecutive = 0
            }
            _ => {
                consecutive = 0;
                failed_on_a_closed_connection += 1;
            }
        }
        if consecutive == 20 {
            assert!(
                failed_on_a_closed_connection <= 4,
                "{failed_on_a_closed_connection} calls failed on closed connections"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("calls did not recover after the database closed the pooled connections");
}

/// With MAILCONNECT_JWT_ISSUER and MAILCONNECT_JWT_AUDIENCE set, a validly signed token from
/// another issuer, for another audience or naming neither is UNAUTHENTICATED; one with both
/// is served (issue 16, 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_must_name_the_configured_issuer_and_audience() {
    use mailconnect::domain::principal::{Principal, Role};
    use mailconnect::domain::secret::Secret;
    use mailconnect::grpc::proto::GetAccountRequest;
    use mailconnect::tokens::{Expected, TokenKeys};

    let app = crate::harness::spawn_app_with(Backend::Sqlite, |settings| {
        settings.keys.jwt_issuer = Some("https://id.example".into());
        settings.keys.jwt_audience = Some("mailconnect".into());
    })
    .await;
    let mint = |issuer: Option<&str>, audience: Option<&str>| {
        TokenKeys::new(Some(&Secret::new(crate::harness::TEST_SECRET.into())), &[])
            .unwrap()
            .expecting(Expected {
                issuer: issuer.map(str::to_owned),
                audience: audience.map(str::to_owned),
            })
            .mint(
                &Principal {
                    subject: "platform".into(),
                    account_id: None,
                    user_id: None,
                    roles: vec![Role::Platform],
                },
                std::time::Duration::from_secs(60),
            )
            .unwrap()
    };
    let get = |token: String| {
        let mut client = app.directory();
        async move {
            client
                .get_account(authed(&token, GetAccountRequest { account_id: 1 }))
                .await
        }
    };
    for (issuer, audience) in [
        (None, None),
        (Some("https://other.example"), Some("mailconnect")),
        (Some("https://id.example"), Some("another-service")),
        (Some("https://id.example"), None),
    ] {
        let status = get(mint(issuer, audience)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "INVALID_TOKEN");
    }
    let status = get(mint(Some("https://id.example"), Some("mailconnect")))
        .await
        .unwrap_err();
    // Past authentication: the account simply does not exist yet.
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

/// An HS256 secret under 32 bytes stops `serve` and `token` (issue 16, 11).
#[test]
fn a_short_jwt_secret_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "serve",
            "--database-url",
            "sqlite::memory:",
            "--listen-addr",
            "127.0.0.1:0",
        ],
        vec!["token", "--role", "platform"],
    ] {
        let output = crate::cli::mailconnect()
            .current_dir(dir.path())
            .args(&args)
            .args(["--jwt-secret", "only-31-bytes-long-0123456789ab"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("at least 32"), "{args:?}: {stderr}");
    }
}
