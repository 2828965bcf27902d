//! The server's limits: global load shedding, message sizes, request timeout, connection
//! lifetime, TLS and mutual TLS (and their files renewed under a running server).

use std::time::Duration;

use mailconnect::grpc::proto::{GetAccountRequest, UpsertAccountRequest};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tonic_types::StatusExt as _;

use crate::backend_tests;
use crate::harness::{Backend, TestDatabase, assert_error, authed, eventually, start_app_with};

/// With room for one call, an open stream takes the slot: the next call is refused at once
/// with RESOURCE_EXHAUSTED, health checks still answer, and the slot is free again by the time
/// the client sees the stream end.
async fn calls_beyond_the_global_limit_are_shed(backend: Backend) {
    let app = start_app_with(TestDatabase::create(backend), |settings| {
        settings.server.max_concurrent_calls = 1;
    })
    .await;
    app.wait_until_serving().await;
    let token = app.platform_token();
    let get_account = || {
        let mut client = app.directory();
        let request = authed(&token, GetAccountRequest { account_id: 1 });
        async move { client.get_account(request).await }
    };

    let (requests, mut responses) = open_reflection_stream(app.channel.clone()).await;
    list_services(&requests, &mut responses).await;

    let status = get_account().await.unwrap_err();
    let metadata = assert_error(&status, Code::ResourceExhausted, "OVERLOADED");
    assert_eq!(metadata["max_concurrent_calls"], "1");
    // When to come back: RetryInfo for any client, the same delay as gRPC's retry pushback.
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a refusal carries RetryInfo");
    assert!(
        (Duration::from_millis(20)..Duration::from_millis(60)).contains(&delay),
        "{delay:?}"
    );
    let pushback = status.metadata().get("grpc-retry-pushback-ms").unwrap();
    assert_eq!(pushback.to_str().unwrap(), delay.as_millis().to_string());
    assert_eq!(app.health("").await.unwrap(), ServingStatus::Serving);

    drop(requests);
    assert!(responses.next().await.is_none(), "stream ends cleanly");
    // The slot was given back before the stream's end was sent, so the next call has it.
    let status = get_account().await.unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    app.stop().await;
}

/// A request larger than the configured maximum is refused without reaching the service.
async fn oversized_requests_are_refused(backend: Backend) {
    let app = start_app_with(TestDatabase::create(backend), |settings| {
        settings.server.max_recv_message_size = 1024;
    })
    .await;
    app.wait_until_serving().await;
    let account = mailconnect::grpc::proto::Account {
        id: 1,
        sending_domains: (0..200).map(|i| format!("domain-{i}.example")).collect(),
        ..Default::default()
    };
    let status = app
        .directory()
        .upsert_account(authed(
            &app.platform_token(),
            UpsertAccountRequest {
                account: Some(account),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    let status = app
        .directory()
        .get_account(authed(
            &app.platform_token(),
            GetAccountRequest { account_id: 1 },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "ACCOUNT_NOT_FOUND");
    app.stop().await;
}

/// A call stuck behind a table lock is cut off at the request timeout (DEADLINE_EXCEEDED) instead
/// of holding its caller and its slot until the lock goes.
async fn calls_longer_than_the_request_timeout_are_cut_off(backend: Backend) {
    let database = TestDatabase::create(backend);
    let url = database.url().to_owned();
    let app = start_app_with(database, |settings| {
        settings.server.request_timeout = Duration::from_millis(300);
    })
    .await;
    app.wait_until_serving().await;
    let mut lock = TableLock::take(&url);
    let status = app
        .directory()
        .upsert_account(authed(
            &app.platform_token(),
            UpsertAccountRequest {
                account: Some(mailconnect::grpc::proto::Account {
                    id: 1,
                    tier: mailconnect::grpc::proto::Tier::Professional.into(),
                    subdomain: "acme".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    lock.release();
    app.stop().await;
}

/// Holds a write lock on `accounts` from a connection of its own, so that writes wait.
enum TableLock {
    Postgres(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

impl TableLock {
    fn take(url: &str) -> Self {
        use diesel::Connection as _;
        use diesel::connection::SimpleConnection as _;
        match url.strip_prefix("sqlite://") {
            Some(path) => {
                let mut conn = diesel::SqliteConnection::establish(path).unwrap();
                conn.batch_execute("BEGIN EXCLUSIVE").unwrap();
                Self::Sqlite(conn)
            }
            None => {
                let mut conn = diesel::PgConnection::establish(url).unwrap();
                conn.batch_execute("BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
                    .unwrap();
                Self::Postgres(conn)
            }
        }
    }

    fn release(&mut self) {
        use diesel::connection::SimpleConnection as _;
        match self {
            Self::Postgres(conn) => conn.batch_execute("ROLLBACK").unwrap(),
            Self::Sqlite(conn) => conn.batch_execute("ROLLBACK").unwrap(),
        }
    }
}

backend_tests!(
    calls_beyond_the_global_limit_are_shed,
    oversized_requests_are_refused,
    calls_longer_than_the_request_timeout_are_cut_off
);

pub async fn open_reflection_stream(
    channel: Channel,
) -> (
    tokio::sync::mpsc::Sender<ServerReflectionRequest>,
    tonic::Streaming<ServerReflectionResponse>,
) {
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    let responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("open reflection stream")
        .into_inner();
    (requests, responses)
}

/// Asks the open reflection stream for the service list and checks the answer.
pub async fn list_services(
    requests: &tokio::sync::mpsc::Sender<ServerReflectionRequest>,
    responses: &mut tonic::Streaming<ServerReflectionResponse>,
) {
    requests
        .send(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
        .await
        .expect("stream open");
    let answer = responses
        .next()
        .await
        .expect("an answer")
        .expect("answer ok");
    assert!(
        format!("{answer:?}").contains("mailconnect.v1.DirectoryService"),
        "{answer:?}"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mailconnect test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = leaf(vec!["client.mailconnect.test".into()]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.pem"), &server_cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &server_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Self {
            dir,
            ca_pem: ca_cert.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    fn configure(&self, settings: &mut mailconnect::config::Settings, mutual: bool) {
        settings.server.tls_cert = Some(self.dir.path().join("server.pem"));
        settings.server.tls_key = Some(self.dir.path().join("server.key"));
        settings.server.tls_client_ca = mutual.then(|| self.dir.path().join("ca.pem"));
    }

    fn client(&self, with_certificate: bool) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .domain_name("localhost")
            .ca_certificate(Certificate::from_pem(&self.ca_pem));
        if with_certificate {
            config.identity(Identity::from_pem(&self.client_cert, &self.client_key))
        } else {
            config
        }
    }

    /// A client that trusts this CA for the server and presents `identity`'s client certificate.
    fn client_as(&self, identity: &Pki) -> ClientTlsConfig {
        self.client(false).identity(Identity::from_pem(
            &identity.client_cert,
            &identity.client_key,
        ))
    }
}

/// A Secret volume as the kubelet writes it: the files live in a directory of their own, `..data`
/// points at it, and the names the server reads are symlinks through `..data`. An update writes
/// a new directory and swaps `..data` in one rename, so the paths (and their inodes) never change.
struct MountedSecret {
    dir: tempfile::TempDir,
    generation: usize,
}

impl MountedSecret {
    fn new(files: &[(&str, &str)]) -> Self {
        let mut secret = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        secret.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), secret.path(name)).unwrap();
        }
        secret
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let generation = format!("..2025_01_01_00_00_0{}", self.generation);
        std::fs::create_dir(self.dir.path().join(&generation)).unwrap();
        for (name, contents) in files {
            std::fs::write(self.dir.path().join(&generation).join(name), contents).unwrap();
        }
        let swap = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&generation, &swap).unwrap();
        std::fs::rename(&swap, self.dir.path().join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// cert-manager renews the serving certificate (here from another CA, so that which one a client
/// is shown is unambiguous) in the mounted Secret: new connections get the new one, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let first = Pki::new();
    let renewed = Pki::new();
    let mut secret = MountedSecret::new(&[
        ("tls.crt", &first.server_cert),
        ("tls.key", &first.server_key),
    ]);
    let app = start_app_with(TestDatabase::create(Backend::Sqlite), |settings| {
        settings.server.tls_cert = Some(secret.path("tls.crt"));
        settings.server.tls_key = Some(secret.path("tls.key"));
        settings.server.tls_reload_interval = Duration::from_millis(50);
    })
    .await;
    let served_to = |client: ClientTlsConfig| async move {
        health_over(tls_channel(app.addr, client).await).await.ok()
    };
    eventually("a client of the first CA is served", || {
        served_to(first.client(false))
    })
    .await;
    assert!(
        served_to(renewed.client(false)).await.is_none(),
        "the renewed certificate is not served before it is written"
    );

    secret.update(&[
        ("tls.crt", &renewed.server_cert),
        ("tls.key", &renewed.server_key),
    ]);
    eventually("a new connection is shown the renewed certificate", || {
        served_to(renewed.client(false))
    })
    .await;
    assert!(
        served_to(first.client(false)).await.is_none(),
        "new connections no longer get the first certificate"
    );
    app.stop().await;
}

/// The mutual-TLS client CA, from a Secret of its own, is replaced under a running server: clients
/// of the new CA are served from then on, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_client_ca_is_trusted_without_a_restart() {
    let server = Pki::new();
    let other = Pki::new();
    let mut client_ca = MountedSecret::new(&[("ca.crt", &server.ca_pem)]);
    let app = start_app_with(TestDatabase::create(Backend::Sqlite), |settings| {
        server.configure(settings, false);
        settings.server.tls_client_ca = Some(client_ca.path("ca.crt"));
        settings.server.tls_reload_interval = Duration::from_millis(50);
    })
    .await;
    let served_as = |identity: &Pki| {
        let client = server.client_as(identity);
        async move { health_over(tls_channel(app.addr, client).await).await.ok() }
    };
    eventually("a client of the first client CA is served", || {
        served_as(&server)
    })
    .await;
    assert!(
        served_as(&other).await.is_none(),
        "a client certificate of the other CA is refused before the CA is replaced"
    );

    client_ca.update(&[("ca.crt", &other.ca_pem)]);
    eventually("a client of the new client CA is served", || {
        served_as(&other)
    })
    .await;
    assert!(
        served_as(&server).await.is_none(),
        "the replaced CA's clients are refused"
    );
    app.stop().await;
}

/// MAILCONNECT_MAX_CONNECTION_AGE_GRACE: a call still open on a connection past its age and the
/// grace (here a Health/Watch stream, which never ends by itself) is cut, so the client
/// reconnects; without the grace it would keep the old connection, and its replica, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_age_and_grace_are_closed() {
    let age = Duration::from_millis(300);
    let grace = Duration::from_millis(300);
    let app = start_app_with(TestDatabase::create(Backend::Sqlite), |settings| {
        settings.server.max_connection_age = age;
        settings.server.max_connection_age_grace = Some(grace);
    })
    .await;
    let opened = tokio::time::Instant::now();
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: "liveness".to_owned(),
        })
        .await
        .expect("watch opens")
        .into_inner();
    // The bound only keeps a broken build from hanging.
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends once the connection is past its age and grace");
    assert!(end.is_err(), "cut, not finished: {end:?}");
    assert!(
        opened.elapsed() >= age + grace,
        "not before age + grace: {:?}",
        opened.elapsed()
    );
    app.stop().await;
}

async fn tls_channel(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Channel {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

async fn health_over(channel: Channel) -> Result<ServingStatus, tonic::Status> {
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?
        .into_inner()
        .status())
}

/// Server TLS: a client that trusts the CA talks to it; a plaintext client gets nowhere except
/// on the health-only port that kubelet's (plaintext) gRPC probes use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_ca() {
    let pki = Pki::new();
    let app = start_app_with(TestDatabase::create(Backend::Sqlite), |settings| {
        pki.configure(settings, false);
        settings.server.health_listen_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let channel = tls_channel(app.addr, pki.client(false)).await;
    // Readiness depends on the database; the bound only turns a hang into a failure.
    let mut status = health_over(channel.clone()).await;
    for _ in 0..3000 {
        if let Ok(ServingStatus::Serving) = status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = health_over(channel.clone()).await;
    }
    assert_eq!(status.unwrap(), ServingStatus::Serving);
    assert!(
        app.health("").await.is_err(),
        "plaintext must not be served"
    );
    let health_port = Channel::from_shared(format!("http://{}", app.health_addr.unwrap()))
        .unwrap()
        .connect_lazy();
    assert_eq!(
        health_over(health_port.clone()).await.unwrap(),
        ServingStatus::Serving
    );
    let directory =
        mailconnect::grpc::proto::directory_service_client::DirectoryServiceClient::new(
            health_port,
        )
        .get_account(GetAccountRequest { account_id: 1 })
        .await
        .unwrap_err();
    assert_eq!(
        directory.code(),
        Code::Unimplemented,
        "only health is served there"
    );
    app.stop().await;
}

/// Mutual TLS: a client without a certificate is refused; one signed by the CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let app = start_app_with(TestDatabase::create(Backend::Sqlite), |settings| {
        pki.configure(settings, true)
    })
    .await;
    let anonymous = tls_channel(app.addr, pki.client(false)).await;
    // TLS 1.3 lets the client finish its handshake before the server checks it, so the refusal
    // shows as a "certificate required" alert or as the connection closing: either way the
    // transport fails and no gRPC answer comes back.
    let refusal = health_over(anonymous).await.unwrap_err();
    assert!(
        std::error::Error::source(&refusal)
            .is_some_and(|source| source.is::<tonic::transport::Error>()),
        "{refusal:?}"
    );

    let known = tls_channel(app.addr, pki.client(true)).await;
    assert!(
        health_over(known).await.is_ok(),
        "a client with a CA-signed certificate is served"
    );
    app.stop().await;
}

/// Wrong server settings stop `serve` with a clear error before anything is created.
#[test]
fn bad_server_settings_are_clear_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    for (args, expected) in [
        (
            vec!["--tls-cert", missing, "--tls-key", missing],
            format!("reading TLS certificate {missing}"),
        ),
        (
            vec!["--tls-cert", missing],
            "--tls-key <TLS_KEY>".to_owned(),
        ),
        (
            vec!["--max-concurrent-calls", "0"],
            "MAILCONNECT_MAX_CONCURRENT_CALLS must be at least 1".to_owned(),
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_mailconnect"))
            .current_dir(dir.path())
            .env_remove("MAILCONNECT_DATABASE_URL")
            .env_remove("MAILCONNECT_DATA_DIR")
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("mailconnect-data").exists(),
            "{args:?} created the data directory"
        );
    }
}

/// A `grpc-timeout` past what a clock can hold (20 digits; gRPC allows 8) is ignored as tonic
/// ignores it: the probe runs on its own bounds instead of the handler panicking on
/// `Instant + Duration` (issue 16, 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_grpc_timeout_is_ignored() {
    use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
    use mailconnect::grpc::proto::{
        DomainSettings, ImapSettings, ProbeDomainSettingsRequest, Security, ServerAddress,
        domain_settings::Settings,
    };

    let server =
        crate::fault_servers::FaultServer::start(crate::fault_servers::Fault::ImapWithoutStartTls)
            .await;
    let app = crate::harness::spawn_app(Backend::Sqlite).await;
    let admin = app.user_token(1, 7, &[mailconnect::domain::principal::Role::SuperAdmin]);
    let address = ServerAddress {
        host: "127.0.0.1".into(),
        port: server.port.into(),
        security: Security::Plaintext.into(),
    };
    let message = ProbeDomainSettingsRequest {
        domain_settings: Some(DomainSettings {
            domain: "acme.example".into(),
            settings: Some(Settings::Imap(ImapSettings {
                imap_server: Some(address.clone()),
                smtp_server: Some(address),
                allow_insecure_certificate: false,
            })),
            ..Default::default()
        }),
        test_credentials: None,
    };
    for timeout in ["18446744073709551615S", "99999999H"] {
        let mut call = authed(&admin, message.clone());
        call.metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        let reports = DomainSettingsServiceClient::new(app.channel.clone())
            .probe_domain_settings(call)
            .await
            .unwrap_or_else(|status| panic!("grpc-timeout {timeout}: {status:?}"))
            .into_inner()
            .reports;
        assert_eq!(reports.len(), 2, "{timeout}");
    }
    assert!(server.accepted() > 0, "the probe ran");
}
